# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runtime as an OCI runtime over a bundle (runtime-spec "Runtime and Lifecycle"): create, start, state,
kill, delete and features, the operations runc offers to containerd's shim and to the OCI validation suite.

    create   checks the bundle's config.json, makes the container's cgroup, and forks: an intermediate process
             enters or makes the PID namespace and forks PID 1, then exits (PID 1 is reparented to the caller's
             subreaper, containerd's shim, or to init). PID 1 joins the cgroup before it runs anything, makes or
             joins the other namespaces, lets the runtime run the prestart and createRuntime hooks, mounts and
             pivots into the root (namespaces.py, as for every other container of this runtime), runs the
             createContainer hooks, and then blocks opening the state directory's exec FIFO. create returns
             once PID 1 blocks there, with the state `created`.
    start    opens the FIFO: PID 1 goes on, runs the startContainer hooks, takes the process's identity and
             limits and execs it. Then the poststart hooks.
    state    is read from what the kernel says about PID 1 (alive, the same process by its start time, not a
             zombie) and whether the FIFO is still there: creating, created, running or stopped.
    delete   of a stopped container (or --force) kills what is left in its cgroup, removes the cgroup and the
             state, then runs the poststop hooks.

Every operation takes the container's lock, so two calls never act on one container at once. A failing create
leaves nothing behind: no cgroup, no state directory, no process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import (
    cgroups,
    namespaces,
    seccomp,
    spec,
    syscalls,
)
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.oci_cli import DEFAULT_ROOT
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.state import locked, write_json

OCI_VERSION = "1.0.2"
CREATE_TIMEOUT = 60
# Nothing is imported after the pivot (the host's modules are out of sight): the pty ioctls by number.
_TIOCSPTLCK, _TIOCGPTN, _TIOCSCTTY = 0x40045431, 0x80045430, 0x540E
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_NAMESPACE_TYPES = {
    "pid": syscalls.CLONE_NEWPID, "network": syscalls.CLONE_NEWNET, "mount": syscalls.CLONE_NEWNS,
    "ipc": syscalls.CLONE_NEWIPC, "uts": syscalls.CLONE_NEWUTS, "cgroup": syscalls.CLONE_NEWCGROUP,
    "user": 0x10000000, "time": 0x00000080,
}  # fmt: skip
_SUPPORTED_NAMESPACES = ("pid", "network", "mount", "ipc", "uts", "cgroup")
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
SIGNALS = {name.removeprefix("SIG"): int(value) for name, value in signal.Signals.__members__.items()}


class OciError(Exception):
    """An operation refused or failed; the message names the container, the field or the state, and nothing
    was changed by the refusal."""


# -- the bundle --------------------------------------------------------------------------------------------------


def _field(document, path, kind, required=False, within=""):
    """document's value at the dotted path, checked to be of kind; `within` names where document sits."""
    value = document
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            if required:
                raise OciError(f"config.json: {within}{path} is required")
            return None
        value = value[key]
    if value is not None and not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise OciError(f"config.json: {within}{path} must be a {expected}, got {type(value).__name__}")
    return value


def _check_process(process):
    args = _field(process, "args", list, required=True, within="process.")
    if not args or not all(isinstance(arg, str) for arg in args):
        raise OciError("config.json: process.args must be a non-empty list of strings")
    cwd = _field(process, "cwd", str, required=True, within="process.")
    if not cwd.startswith("/"):
        raise OciError(f"config.json: process.cwd must be an absolute path, got {cwd!r}")
    for item in _field(process, "env", list, within="process.") or []:
        if not isinstance(item, str) or "=" not in item:
            raise OciError(f"config.json: process.env entries must be KEY=VALUE strings, got {item!r}")
    user = _field(process, "user", dict, within="process.") or {}
    for key in ("uid", "gid"):
        if not isinstance(user.get(key, 0), int) or user.get(key, 0) < 0:
            raise OciError(f"config.json: process.user.{key} must be a number of 0 or more")
    _check_limits(process)
    _field(process, "terminal", bool, within="process.")


def _check_limits(process):
    """process.capabilities and process.rlimits: every name known (a capability the kernel has no number for is
    an error, not a silent no-op)."""
    for kind, names in (_field(process, "capabilities", dict, within="process.") or {}).items():
        if kind not in ("bounding", "effective", "inheritable", "permitted", "ambient"):
            raise OciError(f"config.json: process.capabilities.{kind} is not a capability set")
        for name in names or []:
            if not isinstance(name, str) or name.removeprefix("CAP_") not in spec.CAPABILITIES:
                raise OciError(f"config.json: process.capabilities.{kind}: unknown capability {name!r}")
    for limit in _field(process, "rlimits", list, within="process.") or []:
        if not isinstance(limit, dict) or limit.get("type") not in {f"RLIMIT_{v.upper()}" for v in spec.ULIMITS}:
            raise OciError(f"config.json: process.rlimits: unknown type {limit.get('type')!r}")
        for key in ("soft", "hard"):
            if not isinstance(limit.get(key), int):
                raise OciError(f"config.json: process.rlimits {limit['type']}.{key} must be a number")


def load_bundle(bundle):
    """The bundle's config.json, checked: the document, with root.path made absolute."""
    bundle = os.path.abspath(bundle)
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as handle:
            document = json.load(handle)
    except FileNotFoundError:
        raise OciError(f"bundle {bundle} has no config.json") from None
    except (OSError, ValueError) as exc:
        raise OciError(f"{path}: {exc}") from None
    if not isinstance(document, dict):
        raise OciError(f"{path}: the document must be an object")
    version = _field(document, "ociVersion", str, required=True)
    if version.split(".")[0] != "1":
        raise OciError(f"config.json: ociVersion {version!r} is not a 1.x version of the runtime spec")
    root = _field(document, "root.path", str, required=True)
    absolute = os.path.normpath(os.path.join(bundle, root))
    if not os.path.isdir(absolute):
        raise OciError(f"config.json: root.path {root!r} is not a directory ({absolute})")
    document["root"]["path"] = absolute
    _field(document, "root.readonly", bool)
    process = _field(document, "process", dict)
    if process is not None:
        _check_process(process)
    _check_mounts_and_hooks(document)
    _check_linux(document)
    return document


def _check_mounts_and_hooks(document):
    for index, entry in enumerate(_field(document, "mounts", list) or []):
        destination = entry.get("destination") if isinstance(entry, dict) else None
        if not isinstance(destination, str) or not destination.startswith("/"):
            raise OciError(f"config.json: mounts[{index}].destination must be an absolute path")
    for kind, hooks in (_field(document, "hooks", dict) or {}).items():
        if kind not in HOOK_KINDS:
            raise OciError(f"config.json: hooks.{kind} is not a hook of the runtime spec")
        for index, hook in enumerate(hooks or []):
            if not isinstance(hook, dict) or not str(hook.get("path", "")).startswith("/"):
                raise OciError(f"config.json: hooks.{kind}[{index}].path must be an absolute path")


def _check_linux(document):
    linux = _field(document, "linux", dict)
    if linux is None:
        raise OciError("config.json: linux is required on this runtime (a Linux container)")
    seen = set()
    for index, namespace in enumerate(_field(document, "linux.namespaces", list) or []):
        kind = namespace.get("type") if isinstance(namespace, dict) else None
        if kind not in _NAMESPACE_TYPES:
            raise OciError(f"config.json: linux.namespaces[{index}].type {kind!r} is not a namespace type")
        if kind in seen:
            raise OciError(f"config.json: linux.namespaces: {kind} is given twice")
        seen.add(kind)
        if kind not in _SUPPORTED_NAMESPACES:
            raise OciError(f"config.json: linux.namespaces: the {kind} namespace is not supported yet")
        if namespace.get("path") and not os.path.exists(namespace["path"]):
            raise OciError(f"config.json: linux.namespaces[{index}].path {namespace['path']} does not exist")
    _check_linux_fields(document, linux, seen)


def _check_linux_fields(document, linux, seen):
    if "mount" not in seen:
        raise OciError("config.json: linux.namespaces must hold a mount namespace (the runtime pivots into the root)")
    if document.get("hostname") and "uts" not in seen:
        raise OciError("config.json: hostname is set but linux.namespaces has no uts namespace to set it in")
    if _field(document, "linux.uidMappings", list) or _field(document, "linux.gidMappings", list):
        raise OciError("config.json: linux.uidMappings/gidMappings need a user namespace, not supported yet")
    if "sysctl" in linux:
        _field(document, "linux.sysctl", dict)
        for key in linux["sysctl"] or {}:
            if "/" in key or ".." in key:
                raise OciError(f"config.json: linux.sysctl key {key!r} is not a sysctl name")
    propagation = _field(document, "linux.rootfsPropagation", str)
    if propagation and propagation not in namespaces._PROPAGATION:
        raise OciError(f"config.json: linux.rootfsPropagation {propagation!r} is not a propagation type")
    resources = _field(document, "linux.resources", dict) or {}
    for key in ("hugepageLimits", "network", "rdma"):
        if resources.get(key):
            raise OciError(f"config.json: linux.resources.{key} is not supported on this runtime yet")
    block_io = resources.get("blockIO") or {}
    if any(value not in (None, [], 0) for value in block_io.values()):
        raise OciError("config.json: linux.resources.blockIO is not supported on this runtime yet")
    cgroups_path = _field(document, "linux.cgroupsPath", str)
    if cgroups_path and (":" in cgroups_path or ".." in cgroups_path.split("/")):
        raise OciError(
            f"config.json: linux.cgroupsPath {cgroups_path!r} must be a path (systemd's slice:prefix:name form "
            "needs --systemd-cgroup, which this runtime does not offer)"
        )


# -- the state ---------------------------------------------------------------------------------------------------


def check_id(container_id):
    if not isinstance(container_id, str) or not _ID.match(container_id):
        raise OciError(f"container id {container_id!r}: letters, digits, _.+- (128 at most), not starting with one")


def _start_time(pid):
    """The start time of pid in clock ticks, and whether it is a zombie (or None when there is no such pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[19]), fields[0] == b"Z"


class Runtime:
    """The containers of one state root (the global --root)."""

    def __init__(self, root=DEFAULT_ROOT):
        self.root = root

    def _dir(self, container_id):
        return os.path.join(self.root, container_id)

    @contextlib.contextmanager
    def _locked(self, container_id):
        check_id(container_id)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        with locked(os.path.join(self.root, f".{container_id}.lock")):
            yield

    def _record(self, container_id):
        try:
            with open(os.path.join(self._dir(container_id), "state.json")) as handle:
                return json.load(handle)
        except FileNotFoundError:
            raise OciError(f"container {container_id} does not exist") from None

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

    def create(self, container_id, bundle, pid_file=None, console_socket=None):
        """With console_socket (a unix socket's path; needs process.terminal), the container's process gets a new
        pty of the container's own devpts as its terminal and stdio, and its master goes to that socket (runc's
        protocol: one message, the descriptor as SCM_RIGHTS)."""
        with self._locked(container_id):
            directory = self._dir(container_id)
            if os.path.exists(directory):
                raise OciError(f"container {container_id} already exists")
            document = load_bundle(bundle)
            _check_terminal(document.get("process") or {}, console_socket)
            try:
                os.mkdir(directory, 0o700)
            except OSError as exc:
                raise OciError(f"{directory}: {exc.strerror}") from None
            group = None
            try:
                group = _cgroup(document, container_id)
                group.create()
                cgroups.apply(group, _resources(document))
                os.mkfifo(os.path.join(directory, "exec.fifo"), 0o600)
                record = {
                    "id": container_id, "bundle": os.path.abspath(bundle), "pid": 0, "pid_start": 0,
                    "annotations": document.get("annotations") or {}, "created": time.time(),
                }  # fmt: skip
                with _console(console_socket) as console:
                    document["mooring_console"] = console
                    self._spawn(document, record, directory, group)
                write_json(os.path.join(directory, "state.json"), record)
                write_json(os.path.join(directory, "config.json"), document)
                if pid_file:
                    _write_pid_file(pid_file, record["pid"])
            except BaseException:
                if group is not None:
                    with contextlib.suppress(Exception):
                        group.kill_all()
                    with contextlib.suppress(Exception):
                        group.remove()
                shutil.rmtree(directory, ignore_errors=True)
                raise

    def _spawn(self, document, record, directory, group):
        """Fork the intermediate and PID 1 (see the module's docstring); return PID 1's pid once it waits at the
        FIFO. Raises OciError with PID 1's own message when it failed."""
        seccomp_program = (
            seccomp.compile_filter(document["linux"]["seccomp"]) if document["linux"].get("seccomp") else None
        )
        kinds = {ns["type"]: ns.get("path") for ns in document["linux"].get("namespaces") or []}
        to_child_read, to_child_write = os.pipe2(os.O_CLOEXEC)
        from_child_read, from_child_write = os.pipe2(os.O_CLOEXEC)
        state_dir = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        intermediate = os.fork()
        if intermediate == 0:
            _intermediate(document, record, kinds, state_dir, (to_child_read, from_child_write), seccomp_program)
        os.close(to_child_read)
        os.close(from_child_write)
        os.close(state_dir)
        init = None
        try:
            os.waitpid(intermediate, 0)
            message = _read_message(from_child_read)
            if message[:1] != b"P":
                raise OciError(f"container {record['id']}: {_text(message)}")
            init = struct.unpack("i", message[1:5])[0]
            record["pid"] = init
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
            message = _read_message(from_child_read)
            if message != b"R":
                raise OciError(f"container {record['id']}: {_text(message)}")
            return init
        except BaseException:
            if init:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init, signal.SIGKILL)
            raise
        finally:
            os.close(to_child_write)
            os.close(from_child_read)

    # -- start, kill, delete --------------------------------------------------------------------------------

    def start(self, container_id):
        with self._locked(container_id):
            record = self._record(container_id)
            status = self._status(record)
            if status != "created":
                raise OciError(f"container {container_id} is {status}: start needs a created container")
            document = self._document(container_id)
            if not document.get("process"):
                raise OciError(f"container {container_id}: config.json has no process to start")
            fifo = os.path.join(self._dir(container_id), "exec.fifo")
            handle = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                # "0" when PID 1 took the start, then EOF once it exec'd the process (or its error).
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
                        time.sleep(0.0005)
            finally:
                os.close(handle)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(fifo)
            if received[1:2] == b"E":
                raise OciError(f"container {container_id}: {_text(received[1:])}")
            _run_hooks(document, "poststart", _hook_state(record, "running"), fatal=False)

    def kill(self, container_id, signal_name="SIGTERM", every=False):
        """The signal to PID 1, or with every to each process in the container's cgroup."""
        number = parse_signal(signal_name)
        with self._locked(container_id):
            record = self._record(container_id)
            status = self._status(record)
            if status not in ("created", "running", "paused"):
                raise OciError(f"container {container_id} is {status}: kill needs a created, running or paused one")
            targets = _cgroup(self._document(container_id), container_id).procs() if every else [record["pid"]]
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, number)

    def delete(self, container_id, force=False):
        with self._locked(container_id):
            record = self._record(container_id)
            status = self._status(record)
            if status != "stopped" and not force:
                raise OciError(f"container {container_id} is {status}: delete needs a stopped one (or --force)")
            document = self._document(container_id)
            group = _cgroup(document, container_id)
            group.kill_all()
            group.remove()
            shutil.rmtree(self._dir(container_id))
            _run_hooks(document, "poststop", _hook_state(record, "stopped"), fatal=False)

    def pause(self, container_id, frozen=True):
        """Freeze (pause) or thaw (resume) every process of the container's cgroup; runc's `paused` status."""
        with self._locked(container_id):
            record = self._record(container_id)
            status = self._status(record)
            wanted = ("running", "created") if frozen else ("paused",)
            if status not in wanted:
                verb = "pause needs a running" if frozen else "resume needs a paused"
                raise OciError(f"container {container_id} is {status}: {verb} container")
            _cgroup(self._document(container_id), container_id).freeze(frozen)
            record["paused"] = frozen
            write_json(os.path.join(self._dir(container_id), "state.json"), record)

    def processes(self, container_id):
        """The pids (as the host sees them) of every process in the container's cgroup."""
        with self._locked(container_id):
            self._record(container_id)
            return sorted(_cgroup(self._document(container_id), container_id).procs())

    def exec(self, container_id, process, pid_file=None, detach=False, console_socket=None):
        """Run process (an OCI process object, checked as config.json's) inside a created or running container:
        in its cgroup and namespaces, under its seccomp filter, with the runtime's own stdio. Returns once the
        process exec'd; with detach at once (the process is the caller's subreaper's, containerd's shim), else
        with the process's exit status once it ended."""
        _check_process(process)
        _check_terminal(process, console_socket)
        with self._locked(container_id):
            record = self._record(container_id)
            status = self._status(record)
            if status not in ("created", "running"):
                raise OciError(f"container {container_id} is {status}: exec needs a created or running container")
            document = self._document(container_id)
            group = _cgroup(document, container_id)
            program = seccomp.compile_filter(document["linux"]["seccomp"]) if document["linux"].get("seccomp") else None
            kinds = [ns["type"] for ns in document["linux"].get("namespaces") or []]
            handles = {
                kind: os.open(f"/proc/{record['pid']}/ns/{_PROC_NS[kind]}", os.O_RDONLY | os.O_CLOEXEC)
                for kind in _JOIN_ORDER if kind in kinds
            }  # fmt: skip
            status_read, status_write = os.pipe2(os.O_CLOEXEC)
            try:
                with _console(console_socket) as console:
                    middle = os.fork()
                    if middle == 0:
                        os.close(status_read)
                        _exec_middle(group, handles, process, program, (status_write, console), detach)
            finally:
                os.close(status_write)
                for handle in handles.values():
                    os.close(handle)
            try:
                message = _read_message(status_read)
                if message[:1] != b"P":
                    raise OciError(f"container {container_id}: exec: {_text(message)}")
                pid = struct.unpack("i", message[1:5])[0]
                rest = message[5:]  # the process's error may have come in the same read
                while chunk := os.read(status_read, 4096):
                    rest += chunk
            finally:
                os.close(status_read)
            if rest[:1] == b"E":
                os.waitpid(middle, 0)
                raise OciError(f"container {container_id}: exec: {_text(rest)}")
            if pid_file:
                _write_pid_file(pid_file, pid)
        _pid, status = os.waitpid(middle, 0)
        return namespaces._exit_code(status)

    def config(self, container_id):
        """The container's config.json as create checked it (an error naming the container when there is none)."""
        with self._locked(container_id):
            self._record(container_id)
            return self._document(container_id)

    def _document(self, container_id):
        with open(os.path.join(self._dir(container_id), "config.json")) as handle:
            return json.load(handle)


def parse_signal(value):
    text = str(value).upper()
    if text.isdigit():
        number = int(text)
        if not 0 < number < 65:
            raise OciError(f"signal {value!r}: a number from 1 to 64 or a name such as TERM or SIGKILL")
        return number
    number = SIGNALS.get(text.removeprefix("SIG"))
    if number is None:
        raise OciError(f"signal {value!r}: a number from 1 to 64 or a name such as TERM or SIGKILL")
    return number


def features():
    """What this runtime implements, in the runtime-spec's features document."""
    return {
        "ociVersionMin": "1.0.0", "ociVersionMax": OCI_VERSION, "hooks": list(HOOK_KINDS),
        "mountOptions": sorted(set(namespaces._MOUNT_FLAGS) | set(namespaces._PROPAGATION)),
        "linux": {
            "namespaces": list(_SUPPORTED_NAMESPACES),
            "capabilities": [f"CAP_{name}" for name in spec.CAPABILITIES],
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": True},
            "apparmor": {"enabled": False}, "selinux": {"enabled": False},
        },
    }  # fmt: skip


# -- helpers -----------------------------------------------------------------------------------------------------


def _cgroup(document, container_id):
    """The cgroup at linux.cgroupsPath (absolute: from each hierarchy's root; relative: under mooring-oci/), or
    mooring-oci/ID."""
    given = document["linux"].get("cgroupsPath") or ""
    if not given.strip("/"):
        path = f"mooring-oci/{container_id}"
    elif given.startswith("/"):
        path = given.strip("/")
    else:
        path = "mooring-oci/" + given.strip("/")
    parent, name = path.rpartition("/")[::2]
    return cgroups.detect(name, parent=parent)


def _resources(document):
    """linux.resources with the device rules every container gets after the bundle's own, as runc adds them: mknod
    of any node, the standard nodes in /dev, the pty master and slaves, and each node of linux.devices."""
    resources = dict(document["linux"].get("resources") or {})
    always = [rule for rule in spec.DEVICE_ALLOWLIST if (rule.get("major"), rule.get("minor")) != (10, 200)]
    own = [
        {"allow": True, "type": device["type"], "major": device.get("major"), "minor": device.get("minor"),
         "access": "rwm"}
        for device in document["linux"].get("devices") or [] if device.get("type") in ("c", "b", "u")
    ]  # fmt: skip
    resources["devices"] = list(resources.get("devices") or []) + always + own
    return resources


def _close_all_but(*keep):
    for name in os.listdir("/proc/self/fd"):
        number = int(name)
        if number not in keep:
            with contextlib.suppress(OSError):
                os.close(number)


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
        if not chunk or data[:1] in (b"N", b"R") or (data[:1] == b"P" and len(data) >= 5):
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
    """Each hook of kind in order, with the state on stdin and its timeout; a failing hook fails the operation
    when fatal, else it is reported on stderr and the next one runs (the spec's rule for poststart/poststop)."""
    for hook in (document.get("hooks") or {}).get(kind) or []:
        args = hook.get("args") or [hook["path"]]
        env = dict(item.split("=", 1) for item in hook.get("env") or [] if "=" in item)
        try:
            subprocess.run(
                args, executable=hook["path"], input=json.dumps(state).encode(), env=env, check=True,
                timeout=hook.get("timeout"), capture_output=True,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            detail = exc.stderr.decode(errors="replace").strip() if getattr(exc, "stderr", None) else str(exc)
            message = f"{kind} hook {hook['path']} failed: {detail or exc}"
            if fatal:
                raise OciError(message) from None
            os.write(2, (message + "\n").encode())


def _check_terminal(process, console_socket):
    if process.get("terminal") and not console_socket:
        raise OciError("process.terminal is true: a --console-socket to send the terminal's master to is needed")
    if console_socket and not process.get("terminal"):
        raise OciError("--console-socket is given but process.terminal is false (no terminal to send)")


@contextlib.contextmanager
def _console(path):
    """A connection to the console socket at path (None: no terminal); its descriptor goes on into the forks."""
    if not path:
        yield None
        return
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
    except OSError as exc:
        connection.close()
        raise OciError(f"--console-socket {path}: {exc.strerror or exc}") from None
    try:
        yield connection.fileno()
    finally:
        connection.close()


def _take_terminal(console, process, console_path):
    """In the container's mount namespace: a new pty from its devpts (/dev/ptmx), the master sent through the
    console socket, the slave made this process's controlling terminal and its stdio, owned by the process's user
    (and bound onto console_path, as runc binds /dev/console)."""
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
        with contextlib.suppress(FileExistsError):
            os.close(os.open(console_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        syscalls.mount(slave_path, console_path, None, syscalls.MS_BIND)
    os.setsid()
    fcntl.ioctl(slave, _TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)


def _loopback_up():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as handle:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(handle.fileno(), 0x8913, request))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(handle.fileno(), 0x8914, struct.pack("16sH22x", b"lo", flags | 0x1 | 0x40))  # SIOCSIFFLAGS


def _find_executable(process):
    command = process["args"][0]
    env = namespaces._env(process)
    if "/" in command:
        candidates = [os.path.join(process.get("cwd") or "/", command)]
    else:
        candidates = [os.path.join(entry or ".", command) for entry in env.get("PATH", spec.DEFAULT_PATH).split(":")]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return
    raise OciError(f"process.args[0] {command!r}: no such executable in the container")


def _intermediate(document, record, kinds, state_dir, channels, seccomp_program):
    """Enter or make the PID namespace, fork PID 1 into it, tell the runtime its pid, exit. Never returns."""
    from_runtime, to_runtime = channels
    try:
        # Only stdio and the sync channels go on into the container: never the container's lock (PID 1 would hold
        # it for its whole life), nor anything else the caller had open.
        console = document.get("mooring_console")
        _close_all_but(0, 1, 2, from_runtime, to_runtime, state_dir, *([] if console is None else [console]))
        if kinds.get("pid"):
            with open(kinds["pid"]) as joined:
                syscalls.setns(joined.fileno(), syscalls.CLONE_NEWPID)
        elif "pid" in kinds:
            syscalls.unshare(syscalls.CLONE_NEWPID)
        init = os.fork()
        if init == 0:
            _init(document, record, kinds, state_dir, channels, seccomp_program)
        os.write(to_runtime, b"P" + struct.pack("i", init))
        os._exit(0)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(to_runtime, b"E" + f"{type(exc).__name__}: {exc}".encode()[:4000])
        os._exit(1)


_PROC_NS = {"network": "net", "ipc": "ipc", "uts": "uts", "cgroup": "cgroup", "pid": "pid", "mount": "mnt"}
# The mount namespace last: after it, /proc/PID/ns of the host is out of sight (the handles are open already).
_JOIN_ORDER = ("cgroup", "network", "ipc", "uts", "pid", "mount")


def _exec_middle(group, handles, process, seccomp_program, channels, detach):
    """exec's forked side: join the cgroup and the namespaces, fork the process into the PID namespace, tell the
    runtime its pid, and exit (detach) or wait for it and exit with its status. Never returns."""
    status_write, console = channels
    try:
        group.add(os.getpid())
        for kind in _JOIN_ORDER:
            if kind in handles:
                syscalls.setns(handles[kind], _NAMESPACE_TYPES[kind])
        child = os.fork()
        if child == 0:
            try:
                if console is not None:
                    _take_terminal(console, process, console_path=None)
                os.chdir(process["cwd"])
                namespaces._become(process, seccomp_program)
                os.execvpe(process["args"][0], process["args"], namespaces._env(process))  # noqa: S606
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.write(status_write, b"E" + f"{type(exc).__name__}: {exc}".encode()[:4000])
            os._exit(127)
        os.write(status_write, b"P" + struct.pack("i", child))
        os.close(status_write)
        if detach:
            os._exit(0)
        _pid, status = os.waitpid(child, 0)
        os._exit(namespaces._exit_code(status))
    except BaseException as exc:
        with contextlib.suppress(OSError):
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
    create rather than start."""
    rootfs = document["root"]["path"]
    propagation = document["linux"].get("rootfsPropagation")
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount(rootfs, rootfs, None, syscalls.MS_BIND | syscalls.MS_REC)
    namespaces._mount_all(document, rootfs)
    _run_hooks(document, "createContainer", _hook_state(record, "created"), fatal=True)
    namespaces._pivot(rootfs)
    if propagation:
        syscalls.mount(None, "/", None, namespaces._PROPAGATION[propagation])
    namespaces._harden(document)
    if document.get("hostname") and "uts" in kinds:
        syscalls.sethostname(document["hostname"])
    process = document.get("process")
    if process:
        with contextlib.suppress(OSError):
            os.makedirs(process["cwd"], mode=0o755, exist_ok=True)
        os.chdir(process["cwd"])
        _find_executable(process)


def _init(document, record, kinds, state_dir, channels, seccomp_program):
    """PID 1 (see the module's docstring). Never returns."""
    from_runtime, to_runtime = channels
    try:
        os.read(from_runtime, 1)  # in the cgroup now
        document["mooring_cgroups"] = namespaces.own_cgroups()
        document["mooring_cgroup_mounts"] = cgroups.mounts()
        _namespaces(kinds)
        os.write(to_runtime, b"N")
        go = os.read(from_runtime, 5)  # the prestart and createRuntime hooks ran; PID 1's pid as the host sees it
        if len(go) != 5:
            os._exit(1)
        record["pid"] = struct.unpack("i", go[1:])[0]
        _enter_root(document, record, kinds)
        if document.get("mooring_console") is not None:
            _take_terminal(document["mooring_console"], document["process"], console_path="/dev/console")
        process = document.get("process")
        os.write(to_runtime, b"R")
        os.close(to_runtime)
        # Blocks until start opens the FIFO. The descriptor stays open, close-on-exec, so that start reads EOF
        # the moment the exec happened, or this process's error when it did not.
        to_runtime = os.open("exec.fifo", os.O_WRONLY | os.O_CLOEXEC, dir_fd=state_dir)
        os.write(to_runtime, b"0")
        os.close(state_dir)
        _run_hooks(document, "startContainer", _hook_state(record, "running"), fatal=True)
        namespaces._become(process, seccomp_program)
        os.execvpe(process["args"][0], process["args"], namespaces._env(process))  # noqa: S606
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(to_runtime, b"E" + f"{type(exc).__name__}: {exc}".encode()[:4000])
        with contextlib.suppress(OSError):
            os.write(2, f"mooring-ctr: container {record['id']}: {exc}\n".encode())
    os._exit(127)
