# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""State on disk and the locks that keep two runs (two Ansible forks, a module and the CLI) from racing."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile


@contextlib.contextmanager
def locked(path, create=True):
    """Hold an exclusive flock on path for the block. Without create, a missing lock file's directory means
    there is nothing to guard (check mode on a host that never ran the runtime), and no lock is taken."""
    directory = os.path.dirname(path)
    if not create and not os.path.isdir(directory):
        yield
        return
    os.makedirs(directory, mode=0o700, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def write_json(path, value):
    """Replace path with value as JSON, atomically and mode 0600 (state and specs hold env values): through a
    temporary file of this writer's own beside it, so two writers never share one."""
    directory, name = os.path.split(path)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        with os.fdopen(handle, "w") as output:
            # dumps, not dump: one call into the C encoder (dump to a file runs the pure-Python one).
            output.write(json.dumps(value, sort_keys=True))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
