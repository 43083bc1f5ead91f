# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Paths that an image or a container controls, resolved inside their root and never onto the host.

A layer, a rootfs or a running container may hold symlinks such as `etc -> /` or `x -> ../../..`. A plain
`open(root + "/etc/hostname")` follows them with the host's `/` as the root, and lands on the host. The walk here
follows every link the way the kernel would inside a chroot at `root` (what openat2's RESOLVE_IN_ROOT does: an
absolute target restarts at root, `..` stops at root), one component at a time with `*at` calls on directory file
descriptors opened with O_NOFOLLOW. It runs on any kernel and Python 3.9+ (openat2 is Linux 5.6+). The callers
then act on the final name relative to its directory's descriptor, without following it again.
"""

from __future__ import annotations

import errno
import os
import stat

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.lean import suppress

MAX_LINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split(path):
    """'/a/./b//c' -> ['a', 'b', 'c']; '..' is kept (it is resolved, and stops at the root)."""
    return [part for part in str(path).split("/") if part not in ("", ".")]


class _Walk:
    """The directories from the root down to where the walk is, as descriptors (closed by close())."""

    def __init__(self, root_fd):
        self.stack = [os.dup(root_fd)]

    @property
    def fd(self):
        return self.stack[-1]

    def up(self):
        if len(self.stack) > 1:
            os.close(self.stack.pop())

    def to_root(self):
        while len(self.stack) > 1:
            os.close(self.stack.pop())

    def down(self, name):
        self.stack.append(os.open(name, _DIR_FLAGS, dir_fd=self.fd))

    def detach(self):
        """Keep the current directory's descriptor (the caller closes it) and close the rest."""
        current = self.stack.pop()
        self.close()
        return current

    def close(self):
        while self.stack:
            os.close(self.stack.pop())


def _walk(root_fd, parts, make_dirs, follow_last):
    """Walk parts from root_fd; return (walk at the last component's directory, last name or None)."""
    walk = _Walk(root_fd)
    pending = list(parts)
    links = 0
    try:
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                walk.up()
                continue
            last = not any(item not in ("", ".") for item in pending)
            try:
                info = os.stat(part, dir_fd=walk.fd, follow_symlinks=False)
            except FileNotFoundError:
                if last:
                    return walk, part
                if not make_dirs:
                    raise
                os.mkdir(part, 0o755, dir_fd=walk.fd)
                walk.down(part)
                continue
            if stat.S_ISLNK(info.st_mode) and (follow_last or not last):
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, f"more than {MAX_LINKS} symlinks resolving {'/'.join(parts)}")
                target = os.readlink(part, dir_fd=walk.fd)
                if target.startswith("/"):
                    walk.to_root()
                pending = split(target) + pending
                continue
            if last:
                return walk, part
            if not stat.S_ISDIR(info.st_mode):
                raise OSError(errno.ENOTDIR, f"{part} in {'/'.join(parts)} is not a directory")
            walk.down(part)
        # The path named the root itself, or ended in '..': the name is the directory.
        return walk, None
    except BaseException:
        walk.close()
        raise


def parent(root_fd, path, make_dirs=False):
    """(descriptor of the directory that holds path's last component, that name). Links on the way are followed
    inside the root; the last component is not. The caller closes the descriptor. A path that names the root
    itself has no such name: OSError."""
    walk, name = _walk(root_fd, split(path), make_dirs, follow_last=False)
    if name is None:
        walk.close()
        raise OSError(errno.EINVAL, f"{path!r} names the root, not something in it")
    return walk.detach(), name


def open_in_root(root_fd, path, create=None, flags=os.O_PATH):
    """A descriptor of path inside the root, every link followed as a process chrooted there would follow it.
    create='dir' or 'file' makes what is missing (the parents as directories). The caller closes it."""
    walk, name = _walk(root_fd, split(path), make_dirs=create is not None, follow_last=True)
    try:
        if name is None:
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=walk.fd)
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=walk.fd)
        except FileNotFoundError:
            if create == "dir":
                os.mkdir(name, 0o755, dir_fd=walk.fd)
            elif create == "file":
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=walk.fd))
            else:
                raise
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=walk.fd)
    finally:
        walk.close()


def fd_path(fd):
    """The path by which mount(2) and friends reach exactly the object behind fd (runc mounts the same way)."""
    return f"/proc/self/fd/{fd}"


def remove_tree(path):
    """Remove path and everything below it, never following a symlink, as shutil.rmtree does (what is gone or
    cannot be removed is passed over, as its ignore_errors). Without recursion or a descriptor per level: a
    container's writable layer may hold a directory tree deeper than Python's recursion limit or the descriptor
    limit, made to leave its removal half done. The walk goes back up through "..", and stops with an OSError if
    that is not the directory it came down from (the tree moved under it). It also spares a container's start
    shutil's import (bz2, lzma: ~2 ms)."""
    above, top = os.path.split(os.path.abspath(path))
    try:
        fd = os.open(above, _DIR_FLAGS)
    except OSError:
        return
    # Per level from `above` down: the directory's (st_dev, st_ino), its name in its parent, the names left in it.
    found = os.fstat(fd)
    levels = [((found.st_dev, found.st_ino), None, [top])]
    try:
        while levels:
            _identity, name, left = levels[-1]
            if not left:
                levels.pop()
                if not levels:
                    break
                parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = parent
                found = os.fstat(fd)
                if (found.st_dev, found.st_ino) != levels[-1][0]:
                    raise OSError(errno.ESTALE, f"{path} moved while it was being removed")
                with suppress(OSError):
                    os.rmdir(name, dir_fd=fd)
                continue
            entry = left.pop()
            try:
                os.unlink(entry, dir_fd=fd)
                continue
            except (IsADirectoryError, PermissionError):
                pass
            except OSError:
                continue
            try:
                child = os.open(entry, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            os.close(fd)
            fd = child
            with os.scandir(fd) as listing:
                names = [item.name for item in listing]
            found = os.fstat(fd)
            levels.append(((found.st_dev, found.st_ino), entry, names))
    finally:
        os.close(fd)
