# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runtime as an OCI runtime over a bundle (runtime-spec "Runtime and Lifecycle"): create, start, state,
kill, delete, exec, ps, pause, resume and features, the operations runc offers to containerd's shim and to the
OCI validation suite.

    create   checks the bundle's config.json (oci_bundle.py), makes the container's cgroup, and forks PID 1 into
             its namespaces (oci_process.py), which mounts, pivots and then blocks opening the state directory's
             exec FIFO. create returns once PID 1 blocks there, with the state `created`.
    start    opens the FIFO: PID 1 goes on, runs the startContainer hooks, takes the process's identity and
             limits and execs it. Then the poststart hooks.
    state    is read from what the kernel says about PID 1 (alive, the same process by its start time, not a
             zombie) and whether the FIFO is still there: creating, created, running, paused or stopped.
    delete   of a stopped container (or --force) kills what is left in its cgroup, removes the cgroup and the
             state, then runs the poststop hooks.

Every operation takes the container's lock, so two calls never act on one container at once. A failing create
leaves nothing behind: no cgroup, no state directory, no process. Each call is a process of its own (containerd's
shim makes four for a `docker run --rm`), so this module imports only what state, start, kill and delete need;
create and exec import the bundle checks and the forked side when they run.
"""

from __future__ import annotations

import marshal
import os
import select
import sys
import time

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import cgroups, fastjson
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.oci_cli import DEFAULT_ROOT
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.state import locked, write_json

OCI_VERSION = "1.0.2"
CREATE_TIMEOUT = 60
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
# state.bin is read only by the Python that wrote it (marshal's format may change between versions).
_MARSHAL_VERSION = sys.version_info[:2]
_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+-")


class OciError(Exception):
    """An operation refused or failed; the message names the container, the field or the state, and nothing
    was changed by the refusal."""


# -- the state ---------------------------------------------------------------------------------------------------


def check_id(container_id):
    if (
        not isinstance(container_id, str) or not 0 < len(container_id) <= 128 or not container_id[0].isalnum()
        or not container_id.isascii() or not set(container_id) <= _ID_CHARACTERS
    ):  # fmt: skip
        raise OciError(f"container id {container_id!r}: letters, digits, _.+- (128 at most), not starting with one")


def _start_time(pid):
    """The start time of pid in clock ticks, and whether it is a zombie (or None when there is no such pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[19]), fields[0] == b"Z"


class _ContainerLock(locked):
    """The container's lock; its file goes with the container (delete, a failed create, a call on an ID that
    does not exist), so that the state root does not fill with the lock files of containers long gone."""

    def __init__(self, path, directory):
        super().__init__(path)
        self.directory = directory

    def __exit__(self, *exc):
        if self.handle is not None and not os.path.isdir(self.directory):
            self.discard()
        return super().__exit__(*exc)


class Runtime:
    """The containers of one state root (the global --root)."""

    def __init__(self, root=DEFAULT_ROOT):
        self.root = root

    def _dir(self, container_id):
        return os.path.join(self.root, container_id)

    def _locked(self, container_id):
        check_id(container_id)
        return _ContainerLock(os.path.join(self.root, f".{container_id}.lock"), self._dir(container_id))

    def _record(self, container_id):
        """The container's record: from state.bin when this Python wrote it (marshal: no json import on the
        calls containerd's shim makes most), else from state.json."""
        directory = self._dir(container_id)
        try:
            with open(os.path.join(directory, "state.bin"), "rb") as handle:
                version, record = marshal.load(handle)  # noqa: S302 - written by this runtime, root-only directory
            if version == _MARSHAL_VERSION:
                return record
        except FileNotFoundError:
            if not os.path.isdir(directory):
                raise OciError(f"container {container_id} does not exist") from None
        except (EOFError, ValueError, TypeError):
            pass

        try:
            with open(os.path.join(directory, "state.json")) as handle:
                return fastjson.load(handle)
        except FileNotFoundError:
            raise OciError(f"container {container_id} does not exist") from None

    def _save(self, record):
        """state.json (for people and other tools) and state.bin (for this runtime's next call), each replaced
        atomically."""
        directory = self._dir(record["id"])
        write_json(os.path.join(directory, "state.json"), record)
        temporary = os.path.join(directory, f".state.bin.{os.getpid()}")
        with open(temporary, "wb") as handle:
            marshal.dump((_MARSHAL_VERSION, record), handle)
        os.replace(temporary, os.path.join(directory, "state.bin"))

    def _status(self, record):
        seen = _start_time(record["pid"]) if record.get("pid") else None
        if seen is None or seen[1] or seen[0] != record["pid_start"]:
            return "stopped"
        if os.path.exists(os.path.join(self._dir(record["id"]), "exec.fifo")):
            return "created"
        return "paused" if record.get("paused") else "running"

    def state(self, container_id):
        check_id(container_id)
        record = self._record(container_id)
        status = self._status(record)
        return {
            "ociVersion": OCI_VERSION, "id": container_id, "status": status,
            "pid": record["pid"] if status != "stopped" else 0, "bundle": record["bundle"],
            "annotations": record.get("annotations") or {},
        }  # fmt: skip

    def list(self):
        if not os.path.isdir(self.root):
            return []
        return sorted(
            name for name in os.listdir(self.root)
            if os.path.exists(os.path.join(self.root, name, "state.json"))
        )  # fmt: skip

    # -- create ---------------------------------------------------------------------------------------------

    def create(self, container_id, bundle, pid_file=None, console_socket=None, stdio=None, preserve_fds=0):
        """With console_socket (a unix socket's path; needs process.terminal), the container's process gets a new
        pty of the container's own devpts as its terminal and stdio, and its master goes to that socket (runc's
        protocol: one message, the descriptor as SCM_RIGHTS). stdio: three descriptors that become the process's
        stdin, stdout and stderr (the OCI command line passes its own); preserve_fds: how many of this process's
        descriptors from 3 on go to the container's process too (runc's --preserve-fds). Returns PID 1's pid."""
        _check_preserved(preserve_fds)
        from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import oci_bundle, oci_process  # noqa: PLC0415

        with self._locked(container_id):
            directory = self._dir(container_id)
            if os.path.exists(directory):
                raise OciError(f"container {container_id} already exists")
            document = oci_bundle.load_bundle(bundle)
            oci_bundle.check_terminal(document.get("process") or {}, console_socket)
            try:
                os.mkdir(directory, 0o700)
            except OSError as exc:
                raise OciError(f"{directory}: {exc.strerror}") from None
            group = None
            root_below = _root_below(document)
            try:
                group = _cgroup(document["linux"].get("cgroupsPath"), container_id)
                group.create()
                cgroups.apply(group, oci_bundle.resources(document))
                os.mkfifo(os.path.join(directory, "exec.fifo"), 0o600)
                # PID 1 opens it as the container's root, which a user namespace maps to another host user.
                os.chown(os.path.join(directory, "exec.fifo"), *oci_bundle.root_ids(document))
                record = {
                    "id": container_id, "bundle": os.path.abspath(bundle), "pid": 0, "pid_start": 0,
                    "annotations": document.get("annotations") or {}, "created": time.time(),
                    # What start, kill, delete, pause and ps need of config.json, so that they need not read it.
                    "cgroupsPath": document["linux"].get("cgroupsPath") or "",
                    "process": bool(document.get("process")),
                    "hooks": {kind: hooks for kind, hooks in (document.get("hooks") or {}).items()
                              if kind in ("poststart", "poststop")},
                }  # fmt: skip
                with oci_process._console(console_socket) as console:
                    document["mooring_console"] = console
                    oci_process.spawn(document, record, directory, group, self._seccomp(document), stdio, preserve_fds)
                write_json(os.path.join(directory, "config.json"), document)
                self._save(record)
                if pid_file:
                    _write_pid_file(pid_file, record["pid"])
                return record["pid"]
            except BaseException:
                if group is not None:
                    for undo in (group.kill_all, group.remove):
                        try:
                            undo()
                        except Exception:  # noqa: S110 - the create's own error is the one to report
                            pass
                if root_below is not None:
                    _detach_root_bind(document["root"]["path"], below=root_below)
                _remove_tree(directory)
                raise

    def start(self, container_id):
        with self._locked(container_id):
            record = self._record(container_id)
            status = self._status(record)
            if status != "created":
                raise OciError(f"container {container_id} is {status}: start needs a created container")
            if not record["process"]:
                raise OciError(f"container {container_id}: config.json has no process to start")
            fifo = os.path.join(self._dir(container_id), "exec.fifo")
            handle = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                # "0" when PID 1 took the start, then EOF once it exec'd the process (or its error). poll wakes on
                # either (a FIFO that has had no writer yet shows no hang-up); its timeout is for the checks.
                waiting = select.poll()
                waiting.register(handle, select.POLLIN)
                received, deadline = b"", time.monotonic() + CREATE_TIMEOUT
                while True:
                    try:
                        chunk = os.read(handle, 4096)
                    except BlockingIOError:
                        chunk = None
                    if chunk == b"" and received:
                        break
                    received += chunk or b""
                    if chunk is None or chunk == b"":
                        if not received and self._status(record) == "stopped":
                            raise OciError(f"container {container_id} stopped before it could start")
                        if time.monotonic() > deadline:
                            raise OciError(f"container {container_id} did not start in {CREATE_TIMEOUT} s")
                        waiting.poll(50)
            finally:
                os.close(handle)
                try:
                    os.unlink(fifo)
                except FileNotFoundError:
                    pass
            if received[1:2] == b"E":
                raise OciError(f"container {container_id}: {_text(received[1:])}")
            _run_hooks(record, "poststart", _hook_state(record, "running"), fatal=False)

    def kill(self, container_id, signal_name="SIGTERM", every=False):
        """The signal to PID 1, or with every to each process in the container's cgroup."""
        number = parse_signal(signal_name)
        with self._locked(container_id):
            record = self._record(container_id)
            status = self._status(record)
            if status not in ("created", "running", "paused"):
                # "container not running" is what containerd's shim recognises (as runc's) when a stop races an exit.
                raise OciError(f"container {container_id} is {status}: container not running (kill needs a created, "
                               "running or paused one)")  # fmt: skip
            targets = _cgroup(record["cgroupsPath"], container_id).procs() if every else [record["pid"]]
            for pid in targets:
                try:
                    os.kill(pid, number)
                except ProcessLookupError:
                    pass

    def delete(self, container_id, force=False):
        """With force, a container that does not exist is no error (runc's answer: containerd's shim deletes with
        --force after its own delete)."""
        with self._locked(container_id):
            if force and not os.path.isdir(self._dir(container_id)):
                return
            record = self._record(container_id)
            status = self._status(record)
            if status != "stopped" and not force:
                raise OciError(f"container {container_id} is {status}: delete needs a stopped one (or --force)")
            group = _cgroup(record["cgroupsPath"], container_id)
            group.kill_all()
            if record.get("rootfs_mount"):
                mount_id, path = record["rootfs_mount"]
                _detach_root_bind(path, ours=mount_id)
            group.remove()
            _remove_tree(self._dir(container_id))
            _run_hooks(record, "poststop", _hook_state(record, "stopped"), fatal=False)

    def pause(self, container_id, frozen=True):
        """Freeze (pause) or thaw (resume) every process of the container's cgroup; runc's `paused` status."""
        with self._locked(container_id):
            record = self._record(container_id)
            status = self._status(record)
            wanted = ("running", "created") if frozen else ("paused",)
            if status not in wanted:
                verb = "pause needs a running" if frozen else "resume needs a paused"
                raise OciError(f"container {container_id} is {status}: {verb} container")
            _cgroup(record["cgroupsPath"], container_id).freeze(frozen)
            record["paused"] = frozen
            self._save(record)

    def update(self, container_id, resources):
        """Change the limits of a created, running or paused container's cgroup (linux.resources but the device
        rules, as runc's update); config.json records them. Checked as config.json's before anything is written."""
        from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import oci_bundle  # noqa: PLC0415

        if not isinstance(resources, dict):
            raise OciError("update: the resources must be an object (the runtime spec's linux.resources)")
        oci_bundle.check_resources({"linux": {"resources": resources}}, within="update: ")
        with self._locked(container_id):
            record = self._record(container_id)
            status = self._status(record)
            if status not in ("created", "running", "paused"):
                raise OciError(f"container {container_id} is {status}: update needs a created, running or paused one")
            document = self._document(container_id)
            limits = {key: value for key, value in resources.items() if key != "devices"}
            cgroups.apply_limits(_cgroup(record["cgroupsPath"], container_id), limits)
            for key, value in limits.items():
                current = document["linux"].setdefault("resources", {}).get(key)
                if isinstance(value, dict) and isinstance(current, dict):
                    current.update(value)
                else:
                    document["linux"]["resources"][key] = value
            write_json(os.path.join(self._dir(container_id), "config.json"), document)

    def processes(self, container_id):
        """The pids (as the host sees them) of every process in the container's cgroup."""
        with self._locked(container_id):
            record = self._record(container_id)
            return sorted(_cgroup(record["cgroupsPath"], container_id).procs())

    def exec(
        self, container_id, process, pid_file=None, detach=False, console_socket=None, stdio=None, wait=True,
        preserve_fds=0,
    ):  # fmt: skip
        """Run process (an OCI process object, checked as config.json's) inside a created or running container:
        in its cgroup and namespaces, under its seccomp filter, with the runtime's own stdio or stdio's three
        descriptors. Returns once the process exec'd; with detach at once (the process is the caller's subreaper's,
        containerd's shim), else with the process's exit status once it ended; without wait, the pid of the
        process that ends with that status (for a caller that has pipes to pump meanwhile)."""
        from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import oci_bundle, oci_process  # noqa: PLC0415

        oci_bundle.check_process(process)
        oci_bundle.check_terminal(process, console_socket)
        _check_preserved(preserve_fds)
        with self._locked(container_id):
            record = self._record(container_id)
            status = self._status(record)
            if status not in ("created", "running"):
                raise OciError(f"container {container_id} is {status}: exec needs a created or running container")
            document = self._document(container_id)
            document["mooring_seccomp_program"] = self._seccomp(document)
            group = _cgroup(record["cgroupsPath"], container_id)
            middle, pid = oci_process.run_exec(
                record, document, group, process, console_socket, detach, stdio, preserve_fds
            )
            if pid_file:
                _write_pid_file(pid_file, pid)
        if not wait:
            return middle
        _pid, status = os.waitpid(middle, 0)
        return oci_process.namespaces._exit_code(status)

    def _seccomp(self, document):
        """linux.seccomp's BPF program (None without one), compiled once per distinct filter: libseccomp's rule
        additions cost ~2 ms of each create and exec. Kept in the state root (root's alone; IDs cannot start with
        a dot), so a tmpfs root forgets them at a reboot, and libseccomp's own upgrade too."""
        spec = document["linux"].get("seccomp")
        if not spec:
            return None
        from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import seccomp  # noqa: PLC0415

        return seccomp.cached_filter(spec, os.path.join(self.root, ".seccomp"))

    def config(self, container_id):
        """The container's config.json as create checked it (an error naming the container when there is none)."""
        with self._locked(container_id):
            self._record(container_id)
            return self._document(container_id)

    def _document(self, container_id):

        with open(os.path.join(self._dir(container_id), "config.json")) as handle:
            return fastjson.load(handle)


def parse_signal(value):
    text = str(value).upper()
    if text.isdigit():
        number = int(text)
        if not 0 < number < 65:
            raise OciError(f"signal {value!r}: a number from 1 to 64 or a name such as TERM or SIGKILL")
        return number
    import signal  # noqa: PLC0415

    number = {name.removeprefix("SIG"): int(item) for name, item in signal.Signals.__members__.items()}.get(
        text.removeprefix("SIG")
    )
    if number is None:
        raise OciError(f"signal {value!r}: a number from 1 to 64 or a name such as TERM or SIGKILL")
    return number


def features():
    """What this runtime implements, in the runtime-spec's features document."""
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import namespaces, oci_bundle, spec  # noqa: PLC0415

    return {
        "ociVersionMin": "1.0.0", "ociVersionMax": OCI_VERSION, "hooks": list(HOOK_KINDS),
        "mountOptions": sorted(set(namespaces._MOUNT_FLAGS) | set(namespaces._PROPAGATION)),
        "linux": {
            "namespaces": list(oci_bundle.SUPPORTED_NAMESPACES),
            "capabilities": [f"CAP_{name}" for name in spec.CAPABILITIES],
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": True},
            "apparmor": {"enabled": False}, "selinux": {"enabled": False},
        },
    }  # fmt: skip


# -- helpers -----------------------------------------------------------------------------------------------------


def _cgroup(given, container_id):
    """The cgroup at linux.cgroupsPath `given` (absolute: from each hierarchy's root; relative: under mooring-oci/),
    or mooring-oci/ID."""
    given = given or ""
    if not given.strip("/"):
        path = f"mooring-oci/{container_id}"
    elif given.startswith("/"):
        path = given.strip("/")
    else:
        path = "mooring-oci/" + given.strip("/")
    parent, name = path.rpartition("/")[::2]
    return cgroups.detect(name, parent=parent)


def _check_preserved(count):
    """--preserve-fds: a number, and each of the descriptors 3 .. 3+count-1 open in this process."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise OciError(f"--preserve-fds takes a number of descriptors (0 or more), got {count!r}")
    for fd in range(3, 3 + count):
        try:
            os.fstat(fd)
        except OSError:
            raise OciError(f"--preserve-fds {count}: descriptor {fd} is not open in the runtime's process") from None


def _write_pid_file(path, pid):
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{os.getpid()}")
    with open(temporary, "w") as handle:
        handle.write(str(pid))
    os.replace(temporary, path)


def _read_message(handle):
    data = b""
    while True:
        chunk = os.read(handle, 4096)
        data += chunk
        if not chunk or data[:1] in (b"N", b"R", b"U") or (data[:1] == b"P" and len(data) >= 5):
            return data


def _text(message):
    if not message:
        return "the container's process ended before it was ready"
    return message[1:].decode(errors="replace") if message[:1] == b"E" else repr(message)


def _hook_state(record, status):
    return {
        "ociVersion": OCI_VERSION, "id": record["id"], "status": status, "pid": record["pid"],
        "bundle": record["bundle"], "annotations": record.get("annotations") or {},
    }  # fmt: skip


def _run_hooks(document, kind, state, fatal):
    """Each hook of kind (from config.json's document, or the record's copy) in order, with the state on stdin
    and its timeout; a failing hook fails the operation when fatal, else it is reported on stderr and the next one
    runs (the spec's rule for poststart/poststop). (PID 1 runs startContainer after its pivot: the modules are
    loaded by then.)"""
    hooks = (document.get("hooks") or {}).get(kind) or []
    if hooks:
        import subprocess  # noqa: PLC0415
    for hook in hooks:
        args = hook.get("args") or [hook["path"]]
        env = dict(item.split("=", 1) for item in hook.get("env") or [] if "=" in item)
        try:
            subprocess.run(
                args, executable=hook["path"], input=fastjson.dumps(state).encode(), env=env, check=True,
                timeout=hook.get("timeout"), capture_output=True,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            detail = exc.stderr.decode(errors="replace").strip() if getattr(exc, "stderr", None) else str(exc)
            message = f"{kind} hook {hook['path']} failed: {detail or exc}"
            if fatal:
                raise OciError(message) from None
            os.write(2, (message + "\n").encode())


def _root_below(document):
    """For a container without a mount namespace of its own: the mount on top at its root before create (0: none),
    so that a create that fails after PID 1 bound the root onto itself can detach that bind. None otherwise."""
    if any(ns.get("type") == "mount" for ns in document["linux"].get("namespaces") or []):
        return None
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import namespaces  # noqa: PLC0415

    return namespaces.top_mount_id(document["root"]["path"]) or 0


def _detach_root_bind(path, ours=None, below=None):
    """A container without a mount namespace mounts its root's bind (and /proc, /dev and the rest in it) in the
    runtime's: detached with all that is in it, if the mount on top at path is that bind (ours: its id, as the
    record keeps it; below: for a failed create, any mount but the one that was on top before, see _root_below).
    From another mount namespace, where that mount is not, nothing is done."""
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import namespaces, syscalls  # noqa: PLC0415

    top = namespaces.top_mount_id(path)
    if top and (top == ours if ours is not None else top != below):
        syscalls.umount(path, syscalls.MNT_DETACH)


def _remove_tree(directory):
    """A container's state directory (flat: state.json, config.json, the FIFO) and the directory itself."""
    try:
        for name in os.listdir(directory):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass
        os.rmdir(directory)
    except FileNotFoundError:
        pass
