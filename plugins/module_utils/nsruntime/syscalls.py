# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The system calls that Python 3.11 lacks (mount, umount2, unshare, setns, pivot_root, sethostname, prctl),
through libc with ctypes. Each checks errno and raises OSError with the path or the call in the message."""

from __future__ import annotations

import ctypes
import os

# glibc's soname, loaded directly: ctypes.util.find_library runs ldconfig in a subprocess (tens of ms a start).
_libc = ctypes.CDLL("libc.so.6", use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_SYNCHRONOUS = 0x10
MS_DIRSYNC = 0x80
MS_MANDLOCK = 0x40
MNT_DETACH = 0x2

PR_SET_NO_NEW_PRIVS = 38
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_PIVOT_ROOT = 155  # x86_64


AF_INET = 2
SOCK_DGRAM = 2
SOCK_CLOEXEC = 0o2000000


def socket(family, kind):
    """A new socket's descriptor, for an ioctl (the socket module's import, with enum and selectors, costs a
    container's start ~2 ms); the caller closes it."""
    fd = _libc.socket(family, kind | SOCK_CLOEXEC, 0)
    if fd < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"socket({family}, {kind}): {os.strerror(number)}")
    return fd


def _check(result, what):
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


def _bytes(value):
    return None if value is None else os.fsencode(value)


def mount(source, target, fstype=None, flags=0, data=None):
    _check(
        _libc.mount(_bytes(source), _bytes(target), _bytes(fstype), ctypes.c_ulong(flags), _bytes(data)),
        f"mount {source} on {target}" + (f" ({fstype})" if fstype else ""),
    )


def umount(target, flags=0):
    _check(_libc.umount2(_bytes(target), flags), f"umount {target}")


def unshare(flags):
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd, nstype=0):
    _check(_libc.setns(fd, nstype), f"setns({fd})")


def pivot_root(new_root, put_old):
    _check(_libc.syscall(SYS_PIVOT_ROOT, _bytes(new_root), _bytes(put_old)), f"pivot_root {new_root}")


def sethostname(name):
    encoded = name.encode()
    _check(_libc.sethostname(encoded, len(encoded)), f"sethostname {name}")


def prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    result = _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4), ctypes.c_ulong(arg5))
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"prctl({option}): {os.strerror(number)}")
    return result


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capset(effective, permitted, inheritable):
    """This thread's effective, permitted and inheritable capability sets, as bit masks (64 bits each)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index in (0, 1):
        shift = 32 * index
        data[index] = _CapData(
            (effective >> shift) & 0xFFFFFFFF, (permitted >> shift) & 0xFFFFFFFF, (inheritable >> shift) & 0xFFFFFFFF
        )
    _check(_libc.capset(ctypes.byref(header), data), "capset")
