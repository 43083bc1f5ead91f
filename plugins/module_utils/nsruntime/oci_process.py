# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The forked side of the OCI runtime's create and exec (oci.py holds the lifecycle and the locks).

create: an intermediate process enters or makes the PID namespace and forks PID 1, then exits (PID 1 is
reparented to the caller's subreaper, containerd's shim, or to init). PID 1 joins the cgroup before it runs
anything, makes or joins the other namespaces, lets the runtime run the prestart and createRuntime hooks, mounts
and pivots into the root (namespaces.py, as for every other container of this runtime), runs the createContainer
hooks, takes its terminal when it has one, and blocks opening the state directory's exec FIFO until start. A
container without a mount namespace of its own (the spec: it inherits the runtime's) has its root bound onto
itself privately in the runtime's namespace and is chrooted into it, as runc does; delete detaches that bind.

exec: a forked process joins the container's cgroup and namespaces and forks the process into its PID namespace,
which takes its terminal, identity and limits and execs; the runtime learns its pid and whether the exec happened
through a close-on-exec pipe.
"""

from __future__ import annotations

import fcntl
import os
import struct

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import cgroups, namespaces, spec, syscalls
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.lean import SIGKILL, suppress
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.oci import (
    OciError,
    _hook_state,
    _read_message,
    _run_hooks,
    _start_time,
    _text,
)

# Nothing is imported after the pivot (the host's modules are out of sight): the pty ioctls by number.
_TIOCSPTLCK, _TIOCGPTN, _TIOCSCTTY = 0x40045431, 0x80045430, 0x540E
_NAMESPACE_TYPES = {
    "pid": syscalls.CLONE_NEWPID, "network": syscalls.CLONE_NEWNET, "mount": syscalls.CLONE_NEWNS,
    "ipc": syscalls.CLONE_NEWIPC, "uts": syscalls.CLONE_NEWUTS, "cgroup": syscalls.CLONE_NEWCGROUP,
    "user": 0x10000000,
}  # fmt: skip
_PROC_NS = {
    "user": "user",
    "network": "net",
    "ipc": "ipc",
    "uts": "uts",
    "cgroup": "cgroup",
    "pid": "pid",
    "mount": "mnt",
}
# The mount namespace last: after it, /proc/PID/ns of the host is out of sight (the handles are open already).
_JOIN_ORDER = ("user", "cgroup", "network", "ipc", "uts", "pid", "mount")


def _take_stdio(stdio):
    """In a forked child: the descriptors of stdio (or None) become its 0, 1 and 2."""
    if stdio is None:
        return
    copies = [os.dup(fd) for fd in stdio]  # a source may itself be 0, 1 or 2
    for target, copy in enumerate(copies):
        os.dup2(copy, target)
        os.close(copy)


def _close_all_but(*keep):
    for name in os.listdir("/proc/self/fd"):
        number = int(name)
        if number not in keep:
            with suppress(OSError):
                os.close(number)


def _load_for_pid_1(document):
    """What PID 1 imports after its pivot, where the host's modules are out of sight, loaded now: subprocess for
    the startContainer hooks (oci._run_hooks)."""
    if (document.get("hooks") or {}).get("startContainer"):
        import subprocess  # noqa: F401, PLC0415  pylint: disable=unused-import


def spawn(document, record, directory, group, seccomp_program, stdio=None, preserve_fds=0):
    """Fork the intermediate and PID 1 (see the module's docstring); return PID 1's pid once it waits at the
    FIFO. stdio: three descriptors for the process's stdin, stdout and stderr (else the runtime's own);
    preserve_fds: how many more (3, 4, ...) the process gets. Raises OciError with PID 1's own message when it
    failed. seccomp_program: the filter of linux.seccomp, compiled (None: none)."""
    document["mooring_preserve_fds"] = preserve_fds
    _load_for_pid_1(document)
    kinds = {ns["type"]: ns.get("path") for ns in document["linux"].get("namespaces") or []}
    to_child_read, to_child_write = os.pipe2(os.O_CLOEXEC)
    from_child_read, from_child_write = os.pipe2(os.O_CLOEXEC)
    # The FIFO as a path handle and the host's /proc: PID 1 reopens the one through the other once it is in the
    # container (where the state directory is out of reach, and out of its user's reach in a user namespace).
    fifo_handles = (
        os.open(os.path.join(directory, "exec.fifo"), os.O_PATH | os.O_CLOEXEC),
        os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC),
    )
    intermediate = os.fork()
    if intermediate == 0:
        _take_stdio(stdio)
        _intermediate(document, record, kinds, fifo_handles, (to_child_read, from_child_write), seccomp_program, group)
    for handle in (to_child_read, from_child_write, *fifo_handles):
        os.close(handle)
    init = None
    try:
        message = _read_message(from_child_read)
        if message == b"U":
            # The intermediate made the user namespace: its maps are written from here, by root of the host's.
            _write_id_maps(intermediate, document["linux"])
            os.write(to_child_write, b"u")
            message = _read_message(from_child_read)
        os.waitpid(intermediate, 0)
        if message[:1] != b"P":
            raise OciError(f"container {record['id']}: {_text(message)}")
        init = struct.unpack("i", message[1:5])[0]
        record["pid"] = init
        if "user" in kinds:
            # PID 1 is root of its own user namespace, to which the host's cgroup files are not writable.
            group.add(init)
        os.write(to_child_write, b"g")
        message = _read_message(from_child_read)
        if message != b"N":
            raise OciError(f"container {record['id']}: {_text(message)}")
        started = _start_time(init)
        if started is None or started[1]:
            raise OciError(f"container {record['id']}: its process ended before it was ready")
        record["pid_start"] = started[0]
        _run_hooks(document, "prestart", _hook_state(record, "created"), fatal=True)
        _run_hooks(document, "createRuntime", _hook_state(record, "creating"), fatal=True)
        os.write(to_child_write, b"g" + struct.pack("i", init))
        _take_ready(_read_message(from_child_read), record, document, kinds)
        return init
    except BaseException:
        if init:
            with suppress(ProcessLookupError):
                os.kill(init, SIGKILL)
        raise
    finally:
        os.close(to_child_write)
        os.close(from_child_read)


def _take_ready(message, record, document, kinds):
    """PID 1's last word at create: ready at the FIFO ("R", with the mount id of the root's bind when the container
    has no mount namespace of its own: delete detaches it), or its error."""
    if message[:1] != b"R":
        raise OciError(f"container {record['id']}: {_text(message)}")
    if "mount" not in kinds:
        record["rootfs_mount"] = [struct.unpack("i", message[1:5])[0], document["root"]["path"]]


# -- start, kill, delete --------------------------------------------------------------------------------


def run_exec(record, document, group, process, console_socket, detach, stdio=None, preserve_fds=0):
    """exec's fork (Runtime.exec holds the container's lock): the forked side joins the container's cgroup and
    namespaces and forks the process (with stdio as spawn's) under the seccomp program the caller compiled
    (document's mooring_seccomp_program). Returns (the forked side's pid, the process's pid) once the process
    exec'd; raises OciError with the process's own message when it did not."""
    program = document.get("mooring_seccomp_program")
    kinds = [ns["type"] for ns in document["linux"].get("namespaces") or []]
    handles = {
        kind: os.open(f"/proc/{record['pid']}/ns/{_PROC_NS[kind]}", os.O_RDONLY | os.O_CLOEXEC)
        for kind in _JOIN_ORDER if kind in kinds
    }  # fmt: skip
    if "mount" not in kinds:
        # The container shares the runtime's mount namespace and is chrooted in it: its root is PID 1's.
        handles["root"] = os.open(f"/proc/{record['pid']}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    status_read, status_write = os.pipe2(os.O_CLOEXEC)
    try:
        with _console(console_socket) as console:
            middle = os.fork()
            if middle == 0:
                _take_stdio(stdio)
                # Nothing else of the caller's goes on: its lock (held as long as the process runs, else) and
                # the other ends of its pipes (the process would never see EOF on stdin).
                kept = range(3, 3 + preserve_fds)
                _close_all_but(0, 1, 2, *kept, status_write, *handles.values(), *([] if console is None else [console]))
                _exec_middle(group, handles, process, program, (status_write, console, kept), detach)
    finally:
        os.close(status_write)
        for handle in handles.values():
            os.close(handle)
    try:
        message = _read_message(status_read)
        if message[:1] != b"P":
            raise OciError(f"container {record['id']}: exec: {_text(message)}")
        pid = struct.unpack("i", message[1:5])[0]
        rest = message[5:]  # the process's error may have come in the same read
        while chunk := os.read(status_read, 4096):
            rest += chunk
    finally:
        os.close(status_read)
    if rest[:1] == b"E":
        os.waitpid(middle, 0)
        raise OciError(f"container {record['id']}: exec: {_text(rest)}")
    return middle, pid


class _console:  # a context manager as the function it was, without contextlib's import
    """A connection to the console socket at path (None: no terminal); its descriptor goes on into the forks."""

    def __init__(self, path):
        self.path = path
        self.connection = None

    def __enter__(self):
        if not self.path:
            return None
        import socket  # noqa: PLC0415 - loaded before the forks: PID 1 takes its terminal after the pivot

        self.connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.connection.connect(self.path)
        except OSError as exc:
            self.connection.close()
            raise OciError(f"--console-socket {self.path}: {exc.strerror or exc}") from None
        return self.connection.fileno()

    def __exit__(self, *_exc):
        if self.connection is not None:
            self.connection.close()
        return False


def _take_terminal(console, process, console_path):
    """In the container's mount namespace: a new pty from its devpts (/dev/ptmx), the master sent through the
    console socket, the slave made this process's controlling terminal and its stdio, owned by the process's user
    (and bound onto console_path, as runc binds /dev/console)."""
    import socket  # noqa: PLC0415 - _console loaded it before the fork

    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, struct.pack("I", 0)))[0]
        slave_path = f"/dev/pts/{number}"
        slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        with socket.socket(fileno=os.dup(console)) as connection:
            socket.send_fds(connection, [slave_path.encode()], [master])
    finally:
        os.close(master)
    os.close(console)
    user = process.get("user") or {}
    if user.get("uid", 0) != 0:  # as runc: root keeps devpts's own group (tty); another user owns its terminal
        os.fchown(slave, user["uid"], user.get("gid", 0))
    if console_path:
        with suppress(FileExistsError):
            os.close(os.open(console_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        syscalls.mount(slave_path, console_path, None, syscalls.MS_BIND)
    os.setsid()
    fcntl.ioctl(slave, _TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)


def _loopback_up():
    handle = syscalls.socket(syscalls.AF_INET, syscalls.SOCK_DGRAM)
    try:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(handle, 0x8913, request))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(handle, 0x8914, struct.pack("16sH22x", b"lo", flags | 0x1 | 0x40))  # SIOCSIFFLAGS
    finally:
        os.close(handle)


def _find_executable(process):
    """The path that process.args[0] names in the container, looked up in the process's PATH as runc does (from
    the working directory): what is exec'd, so that the exec needs no lookup of its own (os.execvpe's imports a
    module, and the host's modules are out of sight by then)."""
    command = process["args"][0]
    env = namespaces._env(process)
    if "/" in command:
        candidates = [os.path.join(process.get("cwd") or "/", command)]
    else:
        candidates = [os.path.join(entry or ".", command) for entry in env.get("PATH", spec.DEFAULT_PATH).split(":")]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise OciError(f"process.args[0] {command!r}: no such executable in the container")


def _intermediate(document, record, kinds, fifo_handles, channels, seccomp_program, group):
    """Enter or make the PID namespace, fork PID 1 into it, tell the runtime its pid, exit. Never returns."""
    from_runtime, to_runtime = channels
    try:
        # Only stdio and the sync channels go on into the container: never the container's lock (PID 1 would hold
        # it for its whole life), nor anything else the caller had open.
        console = document.get("mooring_console")
        kept = range(3, 3 + document.get("mooring_preserve_fds", 0))
        _close_all_but(0, 1, 2, *kept, from_runtime, to_runtime, *fifo_handles, *([] if console is None else [console]))
        if "user" in kinds:
            _enter_user_namespace(kinds["user"], channels)
        if kinds.get("pid"):
            with open(kinds["pid"]) as joined:
                syscalls.setns(joined.fileno(), syscalls.CLONE_NEWPID)
        elif "pid" in kinds:
            syscalls.unshare(syscalls.CLONE_NEWPID)
        init = os.fork()
        if init == 0:
            _init(document, record, kinds, fifo_handles, channels, seccomp_program, group)
        os.write(to_runtime, b"P" + struct.pack("i", init))
        os._exit(0)
    except BaseException as exc:
        with suppress(OSError):
            os.write(to_runtime, b"E" + f"{type(exc).__name__}: {exc}".encode()[:4000])
        os._exit(1)


def _enter_user_namespace(path, channels):
    """Join the user namespace at path, or make one and have the runtime write its maps; then be its root (every
    namespace made after this is owned by it)."""
    from_runtime, to_runtime = channels
    if path:
        with open(path) as joined:
            syscalls.setns(joined.fileno(), _NAMESPACE_TYPES["user"])
    else:
        syscalls.unshare(_NAMESPACE_TYPES["user"])
        os.write(to_runtime, b"U")
        if os.read(from_runtime, 1) != b"u":
            os._exit(1)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _write_id_maps(pid, linux):
    """linux.uidMappings and gidMappings into the new user namespace of pid (containerID hostID size lines)."""
    for kind, key in (("uid", "uidMappings"), ("gid", "gidMappings")):
        lines = "".join(f"{entry['containerID']} {entry['hostID']} {entry['size']}\n" for entry in linux.get(key) or [])
        try:
            with open(f"/proc/{pid}/{kind}_map", "w") as handle:
                handle.write(lines)
        except OSError as exc:
            raise OciError(f"config.json: linux.{key}: the kernel refused {lines.strip()!r}: {exc.strerror}") from None


def _exec_middle(group, handles, process, seccomp_program, channels, detach):
    """exec's forked side: join the cgroup and the namespaces, fork the process into the PID namespace, tell the
    runtime its pid, and exit (detach) or wait for it and exit with its status. Never returns."""
    status_write, console, kept = channels
    try:
        group.enter()
        for kind in _JOIN_ORDER:
            if kind in handles:
                syscalls.setns(handles[kind], _NAMESPACE_TYPES[kind])
        if "root" in handles:
            os.fchdir(handles["root"])
            os.chroot(".")
        child = os.fork()
        if child == 0:
            try:
                if console is not None:
                    _take_terminal(console, process, console_path=None)
                os.chdir(process["cwd"])
                executable = _find_executable(process)
                for fd in kept:
                    os.set_inheritable(fd, True)
                namespaces._become(process, seccomp_program)
                os.execve(executable, process["args"], namespaces._env(process))  # noqa: S606
            except BaseException as exc:
                with suppress(OSError):
                    os.write(status_write, b"E" + f"{type(exc).__name__}: {exc}".encode()[:4000])
            os._exit(127)
        os.write(status_write, b"P" + struct.pack("i", child))
        os.close(status_write)
        if detach:
            os._exit(0)
        _pid, status = os.waitpid(child, 0)
        os._exit(namespaces._exit_code(status))
    except BaseException as exc:
        with suppress(OSError):
            os.write(status_write, b"E" + f"{type(exc).__name__}: {exc}".encode()[:4000])
        os._exit(126)


def _namespaces(kinds):
    """Join (by path) or make the namespaces other than PID's, as the spec lists them; loopback up in a new
    network namespace, as runc does."""
    flags = 0
    for kind in ("network", "ipc", "uts", "mount", "cgroup"):
        if kind not in kinds:
            continue
        if kinds[kind]:
            with open(kinds[kind]) as joined:
                syscalls.setns(joined.fileno(), _NAMESPACE_TYPES[kind])
        else:
            flags |= _NAMESPACE_TYPES[kind]
    syscalls.unshare(flags)
    if "network" in kinds and not kinds["network"]:
        _loopback_up()


def _enter_root(document, record, kinds):
    """Mounts, the createContainer hooks (in the container's mount namespace, before the pivot), pivot_root, the
    root's propagation, hardening, hostname; then the process's executable looked up, so that a missing one fails
    create rather than start. Returns its path (None without a process)."""
    rootfs = document["root"]["path"]
    propagation = document["linux"].get("rootfsPropagation")
    own_namespace = "mount" in kinds
    if own_namespace:
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount(rootfs, rootfs, None, syscalls.MS_BIND | syscalls.MS_REC)
    if not own_namespace:
        # In the runtime's own mount namespace: the root's bind is private, so that what is mounted in it stays
        # out of every other namespace, and delete detaches it (by this id) with all that is mounted in it.
        syscalls.mount(None, rootfs, None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        record["rootfs_mount"] = [namespaces.top_mount_id(rootfs), rootfs]
    namespaces._mount_all(document, rootfs)
    _run_hooks(document, "createContainer", _hook_state(record, "created"), fatal=True)
    if own_namespace:
        namespaces._pivot(rootfs)
    else:
        namespaces._chroot(rootfs)
    if propagation:
        syscalls.mount(None, "/", None, namespaces._PROPAGATION[propagation])
    namespaces._harden(document)
    if document.get("hostname") and "uts" in kinds:
        syscalls.sethostname(document["hostname"])
    process = document.get("process")
    if process:
        with suppress(OSError):
            os.makedirs(process["cwd"], mode=0o755, exist_ok=True)
        os.chdir(process["cwd"])
        return _find_executable(process)
    return None


def _init(document, record, kinds, fifo_handles, channels, seccomp_program, group):
    """PID 1 (see the module's docstring). Never returns."""
    from_runtime, to_runtime = channels
    try:
        os.read(from_runtime, 1)  # the runtime knows this process's pid (and moved it into the cgroup: user ns)
        if "user" not in kinds:
            group.enter()
        document["mooring_cgroups"] = namespaces.own_cgroups()
        document["mooring_cgroup_mounts"] = cgroups.mounts()
        _namespaces(kinds)
        os.write(to_runtime, b"N")
        go = os.read(from_runtime, 5)  # the prestart and createRuntime hooks ran; PID 1's pid as the host sees it
        if len(go) != 5:
            os._exit(1)
        record["pid"] = struct.unpack("i", go[1:])[0]
        executable = _enter_root(document, record, kinds)
        if document.get("mooring_console") is not None:
            _take_terminal(document["mooring_console"], document["process"], console_path="/dev/console")
        process = document.get("process")
        # Ready; without a mount namespace, the id of the root's bind in the runtime's (for delete).
        os.write(to_runtime, b"R" + struct.pack("i", (record.get("rootfs_mount") or [0])[0] or 0))
        os.close(to_runtime)
        # Blocks until start opens the FIFO. The descriptor stays open, close-on-exec, so that start reads EOF
        # the moment the exec happened, or this process's error when it did not.
        fifo, proc = fifo_handles
        to_runtime = os.open(f"self/fd/{fifo}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc)
        os.write(to_runtime, b"0")
        os.close(fifo)
        os.close(proc)
        _run_hooks(document, "startContainer", _hook_state(record, "running"), fatal=True)
        for fd in range(3, 3 + document["mooring_preserve_fds"]):
            os.set_inheritable(fd, True)  # --preserve-fds: the caller's descriptors 3, 4, ... go on to the process
        namespaces._become(process, seccomp_program)
        os.execve(executable, process["args"], namespaces._env(process))  # noqa: S606
    except BaseException as exc:
        with suppress(OSError):
            os.write(to_runtime, b"E" + f"{type(exc).__name__}: {exc}".encode()[:4000])
        with suppress(OSError):
            os.write(2, f"mooring-ctr: container {record['id']}: {exc}\n".encode())
    os._exit(127)
