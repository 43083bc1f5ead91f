# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The few standard-library conveniences a container's start uses, without their imports: contextlib pulls in
functools and collections, signal pulls in enum (with functools), together ~3.5 ms of a `mooring-ctr run` that
takes ~45 (see the README's benchmark). Same behaviour as the originals for what the runtime uses of them."""

from __future__ import annotations

# The signal numbers and handler call of the signal module, from the C module under it (signal.py only wraps
# them in enums).
from _signal import SIGINT, SIGKILL, SIGTERM  # noqa: F401  pylint: disable=unused-import
from _signal import signal as set_handler  # noqa: F401  pylint: disable=unused-import


class suppress:  # contextlib's name (and lower case), for what reads the same
    """contextlib.suppress: the exceptions named end the block quietly."""

    def __init__(self, *exceptions):
        self.exceptions = exceptions

    def __enter__(self):
        return self

    def __exit__(self, kind, _value, _traceback):
        return kind is not None and issubclass(kind, self.exceptions)


class Undo:
    """contextlib.ExitStack's callback(): what is registered runs in reverse order when the block ends, each even
    if one before it failed (the first such error is raised once all ran, as ExitStack raises it)."""

    def __init__(self):
        self.steps = []

    def __enter__(self):
        return self

    def callback(self, function, *args, **kwargs):
        self.steps.append((function, args, kwargs))

    def __exit__(self, kind, _value, _traceback):
        failure = None
        while self.steps:
            function, args, kwargs = self.steps.pop()
            try:
                function(*args, **kwargs)
            except BaseException as exc:  # every step runs; the first error is raised below
                failure = failure or exc
        if failure is not None:
            raise failure
        return False
