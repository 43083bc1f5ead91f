# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""State on disk and the locks that keep two runs (two Ansible forks, a module and the CLI) from racing."""

from __future__ import annotations

import fcntl
import os
import time

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import fastjson


class locked:  # used as a function: `with locked(path):`
    """Hold an exclusive flock on path for the block. Without create, a missing lock file's directory means
    there is nothing to guard (check mode on a host that never ran the runtime), and no lock is taken. (A class,
    not contextlib's decorator: contextlib's import is a good part of an OCI runtime call's time.)"""

    def __init__(self, path, create=True):
        self.path, self.create, self.handle = path, create, None

    def __enter__(self):
        directory = os.path.dirname(self.path)
        if not self.create and not os.path.isdir(directory):
            return self
        os.makedirs(directory, mode=0o700, exist_ok=True)
        while True:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
                # The holder before may have removed the file (discard): then this lock guards nothing.
                if os.fstat(handle).st_ino == os.stat(self.path).st_ino:
                    self.handle = handle
                    return self
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(handle)
                raise
            os.close(handle)

    def discard(self):
        """Remove the lock file while holding it (whoever waits for it then takes a new one)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __exit__(self, *_exc):
        if self.handle is not None:
            os.close(self.handle)
            self.handle = None
        return False


def write_json(path, value):
    """Replace path with value as JSON, atomically and mode 0600 (state and specs hold env values): through a
    temporary file of this writer's own beside it, so two writers never share one."""

    directory, name = os.path.split(path)
    # A name of this writer's own (O_EXCL), without tempfile: its import is a good part of an OCI call's time.
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{time.monotonic_ns()}")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(handle, "w") as output:
            # dumps, not dump: one call into the C encoder (dump to a file runs the pure-Python one).
            output.write(fastjson.dumps(value, sort_keys=True))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def name_digest(name):
    """The hex SHA-256 of a text (an image record's file name, a veth's name, a seccomp filter's key), by
    CPython's own built-in module where there is one: hashlib loads OpenSSL, some 3 ms of a container's start."""
    try:
        from _sha2 import sha256  # noqa: PLC0415 - Python 3.12 and later
    except ImportError:
        try:
            from _sha256 import sha256  # noqa: PLC0415 - Python 3.9 to 3.11
        except ImportError:
            from hashlib import sha256  # noqa: PLC0415
    return sha256(name.encode()).hexdigest()
