# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Namespaces and the move into the root file system: how a process becomes a container's PID 1.

    the caller          forks a helper, puts it in the container's cgroup, then lets it go on
    the helper          unshare(mount, UTS, IPC, PID[, net]) or setns into a prepared net namespace, then forks:
                        the child is PID 1 of the new PID namespace; the helper waits for it and exits with its
                        status, so the caller's waitpid() gives the container's exit status
    PID 1               makes every mount private, bind-mounts the root file system on itself, mounts /proc,
                        a minimal /dev (tmpfs with the standard nodes, devpts, shm) and a read-only /sys, the
                        volumes; sets the hostname; pivot_root (not chroot, which can be escaped) and detaches the
                        old root; drops capabilities to Docker's default set; no_new_privs; the user; exec

Failures before exec are written to a close-on-exec pipe, so the caller learns why a container did not start.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import selectors
import stat
import struct

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import syscalls

# Docker's default capabilities (moby's oci/caps/defaults.go), by number.
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11,
    "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17,
    "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23,
    "SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}  # fmt: skip
DEFAULT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP", "SETPCAP",
    "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)  # fmt: skip
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
PR_SET_CHILD_SUBREAPER = 36


def capability_set(add=(), drop=()):
    """Docker's default set with cap_add / cap_drop applied ('ALL' works in both, as in docker run)."""
    names = set(DEFAULT_CAPABILITIES)
    for name in (name.upper().removeprefix("CAP_") for name in add):
        names |= set(CAPABILITIES) if name == "ALL" else {name}
    for name in (name.upper().removeprefix("CAP_") for name in drop):
        names = set() if name == "ALL" else names - {name}
    unknown = sorted(names - set(CAPABILITIES))
    if unknown:
        raise ValueError(f"capabilities: unknown {', '.join(unknown)}")
    return names


def _prepare_dev(dev):
    syscalls.mount("tmpfs", dev, "tmpfs", syscalls.MS_NOSUID, "mode=755,size=65536k")
    for name, (major, minor) in DEVICES.items():
        path = os.path.join(dev, name)
        os.mknod(path, 0o666 | 0o020000, os.makedev(major, minor))
        os.chmod(path, 0o666)  # noqa: S103 - /dev/null and friends are for everyone, as on any host
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):  # fmt: skip
        os.symlink(target, os.path.join(dev, name))
    for name in ("pts", "shm"):
        os.mkdir(os.path.join(dev, name), 0o755)
    syscalls.mount(
        "devpts", os.path.join(dev, "pts"), "devpts", syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )  # fmt: skip
    syscalls.mount("shm", os.path.join(dev, "shm"), "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=1777")


def _enter_rootfs(spec):
    rootfs = spec["rootfs"]
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount(rootfs, rootfs, None, syscalls.MS_BIND | syscalls.MS_REC)
    hardened = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    for name in ("proc", "dev", "sys"):
        os.makedirs(os.path.join(rootfs, name), exist_ok=True)
    syscalls.mount("proc", os.path.join(rootfs, "proc"), "proc", hardened)
    if spec.get("network", "none") != "host":
        # As Docker: in the container's own network namespace any user may bind ports below 1024.
        with open(os.path.join(rootfs, "proc/sys/net/ipv4/ip_unprivileged_port_start"), "w") as ports:
            ports.write("0")
    _prepare_dev(os.path.join(rootfs, "dev"))
    syscalls.mount("sysfs", os.path.join(rootfs, "sys"), "sysfs", hardened | syscalls.MS_RDONLY)
    for volume in spec.get("volumes", []):
        target = os.path.join(rootfs, volume["target"].lstrip("/"))
        if os.path.isdir(volume["source"]):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "a"):
                pass
        syscalls.mount(volume["source"], target, None, syscalls.MS_BIND | syscalls.MS_REC)
        if volume.get("read_only"):
            syscalls.mount(None, target, None, syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY)
    for path in spec.get("tmpfs", []):
        target = os.path.join(rootfs, path.lstrip("/"))
        os.makedirs(target, exist_ok=True)
        syscalls.mount("tmpfs", target, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=1777")
    os.chdir(rootfs)
    os.makedirs(".mooring-old", exist_ok=True)
    syscalls.pivot_root(".", ".mooring-old")
    os.chdir("/")
    syscalls.umount("/.mooring-old", syscalls.MNT_DETACH)
    os.rmdir("/.mooring-old")
    if spec.get("read_only"):
        syscalls.mount(None, "/", None, syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY)


def _drop_privileges(spec):
    keep = {CAPABILITIES[name] for name in spec.get("capabilities", DEFAULT_CAPABILITIES)}
    with open("/proc/sys/kernel/cap_last_cap") as last_cap:
        last = int(last_cap.read())
    for number in range(last + 1):
        if number not in keep:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, number)
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    user = spec.get("user")
    if user:
        uid, gid = resolve_user(str(user))
        # As runc does: the user owns its stdio pipes, so that it can reopen /dev/stdout (/proc/self/fd/1).
        for fd in (0, 1, 2):
            with contextlib.suppress(OSError):
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.fchown(fd, uid, gid)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)


def resolve_user(user):
    """'uid[:gid]' or 'name[:group]' -> (uid, gid), names looked up in the container's /etc/passwd and /etc/group
    (this runs after pivot_root, so the C library reads the container's files)."""
    name, _sep, group = user.partition(":")
    if name.isdigit():
        uid, default_gid = int(name), int(name)
        with contextlib.suppress(KeyError):
            default_gid = pwd.getpwuid(uid).pw_gid
    else:
        entry = pwd.getpwnam(name)
        uid, default_gid = entry.pw_uid, entry.pw_gid
    if not group:
        return uid, default_gid
    return uid, int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def _init(spec, errors):
    """PID 1 of the new namespaces: never returns."""
    try:
        _enter_rootfs(spec)
        syscalls.sethostname(spec["hostname"])
        for fd, target in zip((0, 1, 2), spec.get("stdio", (None, None, None)), strict=True):
            if target is not None:
                os.dup2(target, fd)
        _drop_privileges(spec)
        os.chdir(spec.get("working_dir") or "/")
        env = spec.get("env", {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
        os.execvpe(spec["argv"][0], spec["argv"], env)  # noqa: S606 - running the container's command is the point
    except BaseException as exc:
        message = f"{type(exc).__name__}: {exc}".encode()
        os.write(errors, message[:4000])
    os._exit(127)


def _helper(spec, go_read, pid_write, errors_write):
    """The forked helper: wait for the go, unshare, fork PID 1, report its pid, wait for it. Never returns."""
    try:
        os.read(go_read, 1)
        flags = syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWPID
        if spec.get("netns"):
            with open(spec["netns"]) as netns:
                syscalls.setns(netns.fileno(), syscalls.CLONE_NEWNET)
        elif spec.get("network", "none") != "host":
            flags |= syscalls.CLONE_NEWNET
        syscalls.unshare(flags)
        init = os.fork()
        if init == 0:
            os.close(pid_write)
            _init(spec, errors_write)
        os.close(errors_write)
        os.write(pid_write, struct.pack("i", init))
        os.close(pid_write)
        _pid, status = os.waitpid(init, 0)
        os._exit(_exit_code(status))
    except BaseException as exc:
        os.write(errors_write, f"{type(exc).__name__}: {exc}".encode()[:4000])
        os._exit(127)


def spawn(spec, before_release=None):
    """Start a container's PID 1 as spec says (rootfs, argv, hostname, env, working_dir, user, volumes, tmpfs,
    read_only, capabilities, netns, stdio). Returns (helper pid, init pid as the host sees it); waitpid(helper)
    gives the container's exit status. before_release(helper pid) runs while the helper waits - the moment to put
    it in the container's cgroup, so that every process of the container is born inside it."""
    errors_read, errors_write = os.pipe2(os.O_CLOEXEC)
    go_read, go_write = os.pipe2(os.O_CLOEXEC)
    pid_read, pid_write = os.pipe2(os.O_CLOEXEC)
    helper = os.fork()
    if helper == 0:
        os.close(errors_read)
        os.close(go_write)
        os.close(pid_read)
        _helper(spec, go_read, pid_write, errors_write)
    os.close(errors_write)
    os.close(go_read)
    os.close(pid_write)
    try:
        if before_release:
            before_release(helper)
    except BaseException:
        os.kill(helper, 9)
        os.waitpid(helper, 0)
        raise
    finally:
        os.write(go_write, b"g")
        os.close(go_write)
    raw = os.read(pid_read, 4)
    os.close(pid_read)
    message = b""
    while chunk := os.read(errors_read, 4096):
        message += chunk
    os.close(errors_read)
    if message or len(raw) != 4:
        os.waitpid(helper, 0)
        raise OSError(f"the container did not start: {message.decode(errors='replace') or 'no init'}")
    return helper, struct.unpack("i", raw)[0]


def _exit_code(status):
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _enter_child(handles, root, stdio, spec):
    """The forked side of enter(): join, setns, chroot, fork into the PID namespace, exec. Never returns."""
    argv = spec["argv"]
    try:
        if spec["join"]:
            spec["join"](os.getpid())
        for kind in ("ipc", "uts", "net", "pid", "mnt"):
            syscalls.setns(handles[kind], 0)
        os.fchdir(root)
        os.chroot(".")
        grandchild = os.fork()
        if grandchild == 0:
            try:
                for source, target in zip(stdio, (0, 1, 2), strict=True):
                    os.dup2(source, target)
                _drop_privileges(spec)
                os.chdir(spec["working_dir"] or "/")
                os.execvpe(argv[0], argv, spec["env"])  # noqa: S606 - running the command inside is the point
            except BaseException as exc:
                os.write(2, f"exec {argv[0]}: {exc}\n".encode())
            os._exit(127)
        _pid, status = os.waitpid(grandchild, 0)
        os._exit(_exit_code(status))
    except BaseException as exc:
        os.write(stdio[2], f"cannot enter the container: {exc}\n".encode())
        os._exit(126)


def enter(init_pid, argv, env, working_dir="/", user=None, capabilities=DEFAULT_CAPABILITIES, join=None, stdin=b""):
    """Run argv inside a running container (docker exec): setns into PID 1's IPC, UTS, net, PID and mount
    namespaces, its root, its cgroup (join(pid)) and its capability set; return (exit code, stdout, stderr)."""
    kinds = ("ipc", "uts", "net", "pid", "mnt")
    handles = {kind: os.open(f"/proc/{init_pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in kinds}
    root = os.open(f"/proc/{init_pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    (in_read, in_write), (out_read, out_write), (err_read, err_write) = os.pipe(), os.pipe(), os.pipe()
    child = os.fork()
    if child == 0:
        for fd in (in_write, out_read, err_read):
            os.close(fd)
        spec = {"argv": argv, "env": env, "working_dir": working_dir, "user": user, "capabilities": capabilities}
        _enter_child(handles, root, (in_read, out_write, err_write), {**spec, "join": join})
    for fd in (in_read, out_write, err_write, root, *handles.values()):
        os.close(fd)
    with os.fdopen(in_write, "wb") as feed, contextlib.suppress(BrokenPipeError):
        feed.write(stdin)
    outputs = {out_read: b"", err_read: b""}
    with selectors.DefaultSelector() as selector:
        for fd in outputs:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            for key, _events in selector.select():
                chunk = os.read(key.fd, 65536)
                if chunk:
                    outputs[key.fd] += chunk
                else:
                    selector.unregister(key.fd)
                    os.close(key.fd)
    _pid, status = os.waitpid(child, 0)
    return _exit_code(status), outputs[out_read], outputs[err_read]
