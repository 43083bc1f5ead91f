# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The move into a container's root file system and the process's identity, as an OCI runtime-spec document
(spec.py, oci_bundle.py) says; oci_process.py forks PID 1 and the exec'd processes and calls these.

    mounts              every mount private, the root file system bound on itself, the document's mounts (each
                        destination resolved inside the root, paths.py, and mounted through its descriptor), /dev
                        filled (_mount_all); pivot_root (not chroot, which can be escaped) and the old root
                        detached (_pivot)
    hardening           the sysctls written, runc's paths masked and made read-only (/proc/sys among them)
    identity            rlimits, the bounding set, the user, the other capability sets, no_new_privs, the seccomp
                        filter (_become), just before exec
    transfer            the connection plugin's copies in and out, inside a running container's mount namespace
"""

from __future__ import annotations

import os
import stat

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import paths, seccomp, spec, syscalls
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.lean import suppress

_MOUNT_FLAGS = {
    "ro": syscalls.MS_RDONLY, "rw": 0, "nosuid": syscalls.MS_NOSUID, "suid": 0, "nodev": syscalls.MS_NODEV,
    "dev": 0, "noexec": syscalls.MS_NOEXEC, "exec": 0, "relatime": syscalls.MS_RELATIME,
    "strictatime": syscalls.MS_STRICTATIME, "noatime": syscalls.MS_NOATIME, "nodiratime": syscalls.MS_NODIRATIME,
    "sync": syscalls.MS_SYNCHRONOUS, "dirsync": syscalls.MS_DIRSYNC, "mand": syscalls.MS_MANDLOCK,
    "bind": syscalls.MS_BIND, "rbind": syscalls.MS_BIND | syscalls.MS_REC, "async": 0, "atime": 0, "defaults": 0,
}  # fmt: skip
_PROPAGATION = {
    "private": syscalls.MS_PRIVATE, "rprivate": syscalls.MS_PRIVATE | syscalls.MS_REC,
    "slave": syscalls.MS_SLAVE, "rslave": syscalls.MS_SLAVE | syscalls.MS_REC,
    "shared": syscalls.MS_SHARED, "rshared": syscalls.MS_SHARED | syscalls.MS_REC,
    "unbindable": syscalls.MS_UNBINDABLE, "runbindable": syscalls.MS_UNBINDABLE | syscalls.MS_REC,
}  # fmt: skip
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
              ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))  # fmt: skip


def _options(options):
    """OCI mount options -> (flags, propagation flags, data)."""
    flags, propagation, data = 0, 0, []
    for option in options or []:
        if option in _MOUNT_FLAGS:
            flags |= _MOUNT_FLAGS[option]
        elif option in _PROPAGATION:
            propagation |= _PROPAGATION[option]
        else:
            data.append(option)
    return flags, propagation, ",".join(data) or None


def _device(directory, name, device, host_path):
    kind = stat.S_IFCHR if device["type"] in ("c", "u") else stat.S_IFBLK if device["type"] == "b" else stat.S_IFIFO
    number = os.makedev(device.get("major", 0), device.get("minor", 0))
    with suppress(FileNotFoundError):
        os.unlink(name, dir_fd=directory)
    try:
        os.mknod(name, kind | 0o600, number, dir_fd=directory)
    except PermissionError:
        # In a user namespace no node can be made: the host's own node is bound in its place (runc's way), and
        # only when it is the very device the spec names.
        host = os.stat(host_path)
        if stat.S_IFMT(host.st_mode) != kind or host.st_rdev != number:
            raise PermissionError(f"{host_path}: no device node can be made in a user namespace, and the host's "
                                  "is not the same device") from None  # fmt: skip
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=directory))
        target = os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=directory)
        try:
            syscalls.mount(host_path, paths.fd_path(target), None, syscalls.MS_BIND)
        finally:
            os.close(target)
        return
    os.chown(name, device.get("uid", 0), device.get("gid", 0), dir_fd=directory, follow_symlinks=False)
    os.chmod(name, device.get("fileMode", 0o666), dir_fd=directory)


def _populate_dev(root_fd, document):
    """The standard nodes and links of a tmpfs /dev, then the spec's linux.devices (paths inside the root)."""
    dev = paths.open_in_root(root_fd, "/dev", flags=os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path, kind, major, minor in spec.DEFAULT_DEVICES:
            _device(
                dev, os.path.basename(path), {"type": kind, "major": major, "minor": minor, "fileMode": 0o666}, path
            )
        for name, target in _DEV_LINKS:
            with suppress(FileExistsError):
                os.symlink(target, name, dir_fd=dev)
    finally:
        os.close(dev)
    for device in document["linux"].get("devices") or []:
        directory, name = paths.parent(root_fd, device["path"], make_dirs=True)
        try:
            _device(directory, name, device, device["path"])
        finally:
            os.close(directory)


def _mount_all(document, rootfs):
    """The spec's mounts, each destination resolved inside the root (a link in the image is followed as the
    container would follow it, never onto the host) and mounted through its descriptor."""
    root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for entry in document.get("mounts") or []:
            flags, propagation, data = _options(entry.get("options"))
            if entry.get("type") == "cgroup":
                _mount_cgroups(root_fd, entry["destination"], flags, document)
                continue
            bind = entry.get("type") == "bind" or flags & syscalls.MS_BIND
            create = "file" if bind and not os.path.isdir(entry["source"]) else "dir"
            target_fd = paths.open_in_root(root_fd, entry["destination"], create=create)
            target = paths.fd_path(target_fd)
            try:
                if bind:
                    syscalls.mount(entry["source"], target, None, syscalls.MS_BIND | (flags & syscalls.MS_REC))
                else:
                    syscalls.mount(entry.get("source") or entry["type"], target, entry["type"], flags, data)
            finally:
                os.close(target_fd)
            remount = flags & ~(syscalls.MS_BIND | syscalls.MS_REC) if bind else 0
            if remount or propagation:
                # The descriptor above names the directory under the new mount; the mount itself is reached
                # by resolving the destination again.
                target_fd = paths.open_in_root(root_fd, entry["destination"])
                try:
                    if remount:
                        syscalls.mount(
                            None, paths.fd_path(target_fd), None, syscalls.MS_REMOUNT | syscalls.MS_BIND | remount
                        )
                    if propagation:
                        syscalls.mount(None, paths.fd_path(target_fd), None, propagation)
                finally:
                    os.close(target_fd)
            if entry["destination"] == "/dev" and entry.get("type") == "tmpfs":
                _populate_dev(root_fd, document)
    finally:
        os.close(root_fd)


def own_cgroups():
    """{controllers: path} of this process's cgroups (/proc/self/cgroup), read before a cgroup namespace hides
    the paths."""
    found = {}
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _number, controllers, path = line.rstrip("\n").split(":", 2)
            found[controllers] = path
    return found


def _mount_cgroups(root_fd, destination, flags, document):
    """A `cgroup` mount: the container's own cgroups, never the host's tree. cgroup v2 in a cgroup namespace: the
    hierarchy itself (rooted at the container's cgroup); otherwise, as runc does, a tmpfs with each hierarchy's
    directory of the container bound into it (v1: one per controller set, with a link per controller)."""
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import cgroups  # noqa: PLC0415

    own = document.get("mooring_cgroups") or own_cgroups()
    # The host's hierarchies as they were before the container's mounts: a cgroup mount made inside the root
    # (an earlier entry) must not be taken for a host hierarchy.
    found = document.get("mooring_cgroup_mounts") or cgroups.mounts()
    in_namespace = any(ns["type"] == "cgroup" for ns in document["linux"].get("namespaces") or [])
    read_only = flags & syscalls.MS_RDONLY
    hardened = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    target_fd = paths.open_in_root(root_fd, destination, create="dir")
    try:
        target = paths.fd_path(target_fd)
        hierarchies = {point: options for point, (kind, options) in found.items() if kind == "cgroup"}
        if not hierarchies and in_namespace:
            syscalls.mount("cgroup", target, "cgroup2", flags | hardened)
            return
        syscalls.mount("tmpfs", target, "tmpfs", hardened, "mode=755")
    finally:
        os.close(target_fd)
    unified = [point for point, (kind, _o) in found.items() if kind == "cgroup2"]
    _bind_cgroups(root_fd, destination, read_only, (hierarchies, unified), own)


def _bind_cgroups(root_fd, destination, read_only, host, own):
    """Under the tmpfs at destination: each hierarchy's directory of the container, bound (read-only when the
    mount is); v1's directories that hold several controllers get a link per controller, as on the host."""
    hierarchies, unified = host
    hardened = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    sources = []
    for point, options in hierarchies.items():
        controllers = next((key for key in own if key and set(key.split(",")) <= set(options)), None)
        if controllers is not None:
            sources.append((os.path.basename(point), point + own[controllers]))
    if not hierarchies and unified:
        sources = [("", unified[0] + own.get("", "/"))]
    for name, source in sources:
        inside = os.path.join(destination, name) if name else destination
        bind_fd = paths.open_in_root(root_fd, inside, create="dir")
        try:
            syscalls.mount(source, paths.fd_path(bind_fd), None, syscalls.MS_BIND | syscalls.MS_REC)
        finally:
            os.close(bind_fd)
        bound_fd = paths.open_in_root(root_fd, inside)
        try:
            syscalls.mount(
                None, paths.fd_path(bound_fd), None,
                syscalls.MS_REMOUNT | syscalls.MS_BIND | hardened | read_only,
            )  # fmt: skip
        finally:
            os.close(bound_fd)
        if "," in name:
            directory = paths.open_in_root(root_fd, destination)
            try:
                for alias in name.split(","):
                    with suppress(FileExistsError):
                        os.symlink(name, alias, dir_fd=directory)
            finally:
                os.close(directory)
    if read_only:
        tmpfs_fd = paths.open_in_root(root_fd, destination)
        try:
            syscalls.mount(None, paths.fd_path(tmpfs_fd), None, syscalls.MS_REMOUNT | hardened | syscalls.MS_RDONLY)
        finally:
            os.close(tmpfs_fd)


def top_mount_id(path):
    """The id (mountinfo's first field) of the mount on top at path in this mount namespace, or None."""
    found = None
    escaped = path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split(" ", 5)
            if fields[4] == escaped:
                found = int(fields[0])  # a later line is a mount stacked on the earlier ones
    return found


def _chroot(rootfs):
    """The root of a container without a mount namespace of its own (the spec: it inherits the runtime's, as runc
    does it): chroot, since pivot_root would move the root of every process in that namespace."""
    os.chdir(rootfs)
    os.chroot(".")
    os.chdir("/")


def _pivot(rootfs):
    """pivot_root into rootfs (a mount point by now) and detach the old root. pivot_root(".", ".") stacks the old
    root on the new one, so no directory is made in the image (whose root may not be writable, as in a user
    namespace whose root is not the image's owner); the old root is then made a slave, so that its detach does
    not propagate to the host, and detached."""
    old_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(rootfs)
        syscalls.pivot_root(".", ".")
        os.fchdir(old_root)
    finally:
        os.close(old_root)
    syscalls.mount(None, ".", None, syscalls.MS_SLAVE | syscalls.MS_REC)
    syscalls.umount(".", syscalls.MNT_DETACH)
    os.chdir("/")


def _harden(document):
    """After pivot_root, so that every path is the container's own: sysctls, then masked and read-only paths (runc's
    order: /proc/sys is read-only once the sysctls are written), then the read-only root."""
    linux = document["linux"]
    for key, value in (linux.get("sysctl") or {}).items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as setting:
            setting.write(value)
    for path in linux.get("maskedPaths") or []:
        try:
            if os.path.isdir(path):
                syscalls.mount("tmpfs", path, "tmpfs", syscalls.MS_RDONLY, "size=0")
            else:
                syscalls.mount("/dev/null", path, None, syscalls.MS_BIND)
        except FileNotFoundError:
            continue
    hardened = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC | syscalls.MS_RDONLY
    for path in linux.get("readonlyPaths") or []:
        try:
            syscalls.mount(path, path, None, syscalls.MS_BIND | syscalls.MS_REC)
        except FileNotFoundError:
            continue
        syscalls.mount(None, path, None, syscalls.MS_REMOUNT | syscalls.MS_BIND | hardened)
    if document["root"].get("readonly"):
        syscalls.mount(None, "/", None, syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY)


def _mask(names):
    mask = 0
    for name in names or []:
        mask |= 1 << spec.CAPABILITIES[name.removeprefix("CAP_")]
    return mask


def _become(process, seccomp_program=None):
    """The process's identity and limits, in the order that keeps each step possible: rlimits and oom score,
    the bounding set, the user, the effective/permitted/inheritable sets, the ambient set cleared, no_new_privs,
    the working directory, and last the seccomp filter (then only execve is left to do). Without no_new_privs
    the filter goes in before the user changes, while CAP_SYS_ADMIN still allows it (as runc does)."""
    import resource  # noqa: PLC0415

    for limit in process.get("rlimits") or []:
        kind = getattr(resource, limit["type"])
        resource.setrlimit(kind, tuple(resource.RLIM_INFINITY if value == -1 else value
                                       for value in (limit["soft"], limit["hard"])))  # fmt: skip
    if process.get("oomScoreAdj") is not None:
        with open("/proc/self/oom_score_adj", "w") as score:
            score.write(str(process["oomScoreAdj"]))
    capabilities = process.get("capabilities") or {}
    keep = _mask(capabilities.get("bounding"))
    with open("/proc/sys/kernel/cap_last_cap") as last_cap:
        last = int(last_cap.read())
    for number in range(last + 1):
        if not keep >> number & 1:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, number)
    user = process.get("user") or {}
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    # As runc does: the user owns its stdio pipes, so that it can reopen /dev/stdout (/proc/self/fd/1).
    for fd in (0, 1, 2):
        with suppress(OSError):
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.fchown(fd, uid, gid)
    if seccomp_program and not process.get("noNewPrivileges"):
        seccomp.install(seccomp_program)
    os.setgroups(list(user.get("additionalGids") or []))
    os.setgid(gid)
    # Kept through the change of user, so that the sets below are the spec's for a non-root user too (runc's way;
    # the runtime's own spec gives a non-root user none, as Docker does).
    syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 1)
    os.setuid(uid)
    syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 0)
    syscalls.capset(
        _mask(capabilities.get("effective")), _mask(capabilities.get("permitted")),
        _mask(capabilities.get("inheritable")),
    )  # fmt: skip
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    # The kernel keeps an ambient capability only while it is permitted and inheritable; one that is not is
    # skipped, as runc skips it (`runc spec` itself lists ambient capabilities without inheritable ones).
    usable = _mask(capabilities.get("permitted")) & _mask(capabilities.get("inheritable"))
    for name in capabilities.get("ambient") or []:
        number = spec.CAPABILITIES[name.removeprefix("CAP_")]
        if usable >> number & 1:
            syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE, number)
    if process.get("noNewPrivileges"):
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    os.chdir(process.get("cwd") or "/")
    if seccomp_program and process.get("noNewPrivileges"):
        seccomp.install(seccomp_program)


def _env(process):
    return dict(item.split("=", 1) for item in process.get("env") or [] if "=" in item)


def _exit_code(status):
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def transfer(init_pid, host_fd, path, into, user=(0, 0)):
    """Copy between an open host file (host_fd) and path inside a running container, the way a process of the
    container would: in a child that joins the container's mount namespace, chroots to its root and takes its
    user. A link the container planted is then followed inside the container, never onto the host."""
    errors_read, errors_write = os.pipe2(os.O_CLOEXEC)
    mount_ns = os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    root = os.open(f"/proc/{init_pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        try:
            os.close(errors_read)
            syscalls.setns(mount_ns, syscalls.CLONE_NEWNS)
            os.fchdir(root)
            os.chroot(".")
            os.setgroups([])
            os.setgid(user[1])
            os.setuid(user[0])
            if into:
                inside = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                source, target = host_fd, inside
            else:
                inside = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                source, target = inside, host_fd
            while chunk := os.read(source, 1 << 20):
                os.write(target, chunk)
            os.close(inside)
            os._exit(0)
        except BaseException as exc:
            os.write(errors_write, str(exc).encode()[:4000])
            os._exit(1)
    os.close(errors_write)
    os.close(mount_ns)
    os.close(root)
    message = b""
    while chunk := os.read(errors_read, 4096):
        message += chunk
    os.close(errors_read)
    _pid, status = os.waitpid(child, 0)
    if status != 0:
        raise OSError(message.decode(errors="replace") or f"the copy ended with status {status}")
