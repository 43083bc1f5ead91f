# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A container's lifecycle on top of the other files: create, start under a shim, stop, pause, remove, exec.

    /run/mooring/containers/<name>/    state.json (status, pids, ip, exit code) and config.json, under a lock
    /var/lib/mooring/containers/<name>/ upper/work/merged (the writable layer survives stop and restart),
                                        container.log, and the /etc files the container sees

The shim is the module's own process, forked twice into a new session with its stdio on /dev/null (so Ansible
does not wait for it): it sets up the network and mounts the rootfs, which with the container's config.json
(spec.build) make an OCI bundle in the data directory; the OCI runtime (oci.py, state under <run_dir>/oci) then
creates and starts the container from that bundle, as it does for containerd. The shim is PID 1's subreaper, as
containerd's shim is: it waits for it, records the exit status, has the OCI runtime delete the container (its
cgroup and every process left), undoes the rest in reverse order, and applies the restart policy. exec, pause and
stop go through the OCI runtime too. `mooring-ctr run` without -d is its own shim instead (run_attached): no fork,
and the output reaches the terminal as it comes.
"""

from __future__ import annotations

import os
import time

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import (
    cgroups,
    fastjson,
    namespaces,
    network,
    oci,
    overlay,
    paths,
    spec,
    syscalls,
)
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.layers import Store
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.lean import (
    SIGINT,
    SIGTERM,
    Undo,
    set_handler,
    suppress,
)
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.state import locked, write_json

# A container's name: 1-63 of these, the first a letter or digit (checked without re, off a start's imports).
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
START_TIMEOUT = 30
# The cgroup parent of every container (cgroups.detect's default): /mooring/<name> in each hierarchy.
CGROUP_PARENT = "mooring"
_PR_SET_CHILD_SUBREAPER = 36


class ContainerError(Exception):
    """A lifecycle step failed; the message names the option or the container."""


def check_name(name):
    if not (
        isinstance(name, str) and 0 < len(name) <= 63 and name.isascii() and name[0].isalnum()
        and set(name) <= NAME_CHARACTERS
    ):  # fmt: skip
        raise ContainerError(
            f"name must be 1-63 letters, digits, '_', '.' or '-' and start with a letter or digit, got {name!r}"
        )


def _alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with suppress(OSError), open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1].split()[0] != "Z"
    return True


def parse_ports(values):
    """["8080:80", "5353:53/udp"] -> port dicts; ValueError naming published_ports otherwise."""
    ports = []
    for value in values:
        spec, _slash, protocol = str(value).partition("/")
        host, _colon, container = spec.rpartition(":")
        if not (host.isdigit() and container.isdigit() and protocol in ("", "tcp", "udp")):
            raise ValueError(f"published_ports: {value!r} is not host_port:container_port[/tcp|udp]")
        if not (0 < int(host) < 65536 and 0 < int(container) < 65536):
            raise ValueError(f"published_ports: {value!r} has a port outside 1-65535")
        ports.append({"host_port": int(host), "container_port": int(container), "protocol": protocol or "tcp"})
    return ports


def parse_volumes(values):
    """["/host:/in", "/host:/in:ro"] -> volume dicts, the host path resolved; ValueError naming volumes."""
    volumes = []
    for value in values:
        parts = str(value).split(":")
        if len(parts) not in (2, 3) or not parts[1].startswith("/") or parts[2:] not in ([], ["ro"], ["rw"]):
            raise ValueError(f"volumes: {value!r} is not host_path:container_path[:ro]")
        if not os.path.exists(parts[0]):
            raise ValueError(f"volumes: the host path {parts[0]} does not exist")
        volumes.append({"source": os.path.realpath(parts[0]), "target": parts[1], "read_only": parts[2:] == ["ro"]})
    return volumes


def parse_restart_policy(value):
    """no | on-failure[:N] | always -> {name, maximum_retry_count}; ValueError naming restart_policy."""
    name, _colon, count = str(value).partition(":")
    if name not in ("no", "on-failure", "always") or (count and (name != "on-failure" or not count.isdigit())):
        raise ValueError(f"restart_policy must be no, on-failure, on-failure:N or always, got {value!r}")
    return {"name": name, "maximum_retry_count": int(count or 0)}


class Runtime:
    def __init__(self, root="/var/lib/mooring", run_dir="/run/mooring", bridge=network.BRIDGE, subnet=network.SUBNET):
        self.root = root
        self.run_dir = run_dir
        self.store = Store(root)
        self._network_settings = (os.path.join(run_dir, "network"), bridge, subnet)
        self._oci = self._network = None

    @property
    def oci(self):
        """The OCI runtime that creates, starts, pauses, execs in and deletes this runtime's containers."""
        if self._oci is None:
            self._oci = oci.Runtime(os.path.join(self.run_dir, "oci"))
        return self._oci

    @property
    def network(self):
        """The bridge's manager, made when a bridged container needs it."""
        if self._network is None:
            self._network = network.Network(*self._network_settings)
        return self._network

    # -- files ------------------------------------------------------------------------------------------------
    def state_dir(self, name):
        return os.path.join(self.run_dir, "containers", name)

    def data_dir(self, name):
        return os.path.join(self.root, "containers", name)

    def lock(self, name):
        """The container's operation lock: one module run or CLI verb at a time changes a container. It lives
        beside the state directory, not in it, so that a remove does not pull it from under a waiter."""
        return locked(os.path.join(self.run_dir, "locks", name + ".lock"))

    def _state_lock(self, name):
        """Held for each read-change-write of state.json (the shim, stop and the CLI all write it)."""
        return locked(os.path.join(self.run_dir, "locks", name + ".state.lock"))

    def _read(self, name, what):
        try:
            with open(os.path.join(self.state_dir(name), what)) as handle:
                return fastjson.load(handle)
        except FileNotFoundError:
            return None

    def _write(self, name, what, value):
        write_json(os.path.join(self.state_dir(name), what), value)

    def state(self, name):
        state = self._read(name, "state.json")
        if state and state.get("status") in ("running", "paused", "starting") and not _alive(state.get("shim_pid")):
            state["status"] = "exited"
        return state

    def config(self, name):
        return self._read(name, "config.json")

    def update_state(self, name, **changes):
        """Change some keys of state.json under the state lock; a container removed meanwhile stays removed."""
        with self._state_lock(name):
            if not os.path.isdir(self.state_dir(name)):
                return {}
            state = self._read(name, "state.json") or {}
            state.update(changes)
            self._write(name, "state.json", state)
            return state

    def names(self):
        directory = os.path.join(self.run_dir, "containers")
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []

    # -- lifecycle --------------------------------------------------------------------------------------------
    def create(self, name, config):
        check_name(name)
        os.makedirs(self.state_dir(name), mode=0o700, exist_ok=True)
        os.makedirs(self.data_dir(name), mode=0o700, exist_ok=True)
        record = self.store.image(config["image"])
        if record is not None:
            # The store's garbage collection keeps what a container stands on, even after its image is removed.
            self.store.reference_layers(self.data_dir(name), record)
        self._write(name, "config.json", config)
        self._write(name, "state.json", {"status": "created", "restart_count": 0})

    def _previous_shim_restarts(self, name):
        """Whether a shim of an earlier start is alive and about to restart the container itself (its restart
        back-off); a live shim that is not is on its way out, and this waits for it to end. Either way no second
        shim is forked beside a live one: two would set up, and tear down, the same container's network at once."""
        state = self._read(name, "state.json") or {}
        shim = state.get("shim_pid")
        if not _alive(shim):
            return False
        if state.get("restart_pending") and not state.get("stop_requested"):
            return True
        deadline = time.monotonic() + START_TIMEOUT
        while _alive(shim):
            if time.monotonic() > deadline:
                raise ContainerError(f"{name}: the shim of its last start (pid {shim}) outlived {START_TIMEOUT} s")
            time.sleep(0.01)
        return False

    def start(self, name):
        """Fork the shim and wait until PID 1 runs (or the start failed); return the state."""
        restarting = self._previous_shim_restarts(name)
        self.update_state(name, status="starting", error=None, stop_requested=False)
        if restarting:
            return self._await_start(name)
        first = os.fork()
        if first == 0:
            try:
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, 65536)
                self._supervise(name)
            finally:
                os._exit(0)
        os.waitpid(first, 0)
        return self._await_start(name)

    def _await_start(self, name):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            state = self._read(name, "state.json")
            if state["status"] in ("running", "exited"):
                break
            if time.monotonic() > deadline:
                raise ContainerError(f"{name} did not start within {START_TIMEOUT} s")
            time.sleep(0.005)
        if state["status"] == "exited" and state.get("error"):
            raise ContainerError(f"{name}: {state['error']}")
        return state

    def run_attached(self, name, echo):
        """`mooring-ctr run` without -d: this process is the shim, and the output also goes to ``echo`` (an fd)
        as it comes. SIGINT and SIGTERM are passed on to PID 1, as `docker run` does. Returns the final state."""

        def forward(signum, _frame):
            init = self._read(name, "state.json").get("pid")
            if init and _alive(init):
                os.kill(init, signum)

        self.update_state(name, status="starting", error=None, stop_requested=False)
        previous = {signum: set_handler(signum, forward) for signum in (SIGINT, SIGTERM)}
        try:
            self._supervise(name, echo)
        finally:
            for signum, handler in previous.items():
                set_handler(signum, handler)
        return self.state(name)

    def _supervise(self, name, echo=None):
        """The shim: run the container, record how it ended, restart it as its policy says."""
        config = self.config(name)
        policy = config.get("restart_policy") or {"name": "no"}
        self.update_state(name, shim_pid=os.getpid())
        # PID 1's parent (the OCI runtime's intermediate) exits at once: PID 1 is then this process's to wait for.
        syscalls.prctl(_PR_SET_CHILD_SUBREAPER, 1)
        restarts = (self._read(name, "state.json") or {}).get("restart_count", 0)
        while True:
            code, error, oom = self._run_once(name, config, restarts, echo)
            # Decided and recorded in one step under the state lock, so a stop cannot slip in between.
            with self._state_lock(name):
                state = self._read(name, "state.json")
                if state is None:
                    return
                again = not state.get("stop_requested") and not error and (
                    policy["name"] == "always"
                    or (policy["name"] == "on-failure" and code != 0
                        and (not policy.get("maximum_retry_count") or restarts < policy["maximum_retry_count"]))
                )  # fmt: skip
                state.update(
                    status="exited", exit_code=code, oom_killed=oom, error=error, pid=None, restart_count=restarts,
                    finished_at=time.time(), restart_pending=again,
                )  # fmt: skip
                self._write(name, "state.json", state)
            if not again:
                return
            restarts += 1
            time.sleep(min(0.1 * 2**restarts, 2))
            if (self._read(name, "state.json") or {"stop_requested": True}).get("stop_requested"):
                return

    def _run_once(self, name, config, restarts, echo=None):
        record = self.store.image(config["image"])
        with Undo() as stack:
            try:
                if record is None:
                    raise ContainerError(f"image {config['image']} is not in the store; pull it with ns_image")
                info = {"ip": None}
                if config["network"] == "bridge":
                    info = self.network.setup(name, config["published_ports"], config["hostname"], stack)
                etc = network.write_etc(self.data_dir(name), config["hostname"], info["ip"])
                merged = overlay.mount_rootfs(self.store, record, self.data_dir(name), config.get("volatile", False))
                stack.callback(overlay.unmount_rootfs, self.data_dir(name), True)
                log = os.open(
                    os.path.join(self.data_dir(name), "container.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
                )
                stack.callback(os.close, log)
                # The container writes to a pipe, as under Docker (a non-root process may reopen /proc/self/fd/1),
                # and the shim copies it to the log.
                output, output_write = os.pipe()
                stack.callback(os.close, output)
                # No stdin, as `docker run` without -i (an attached run must not read the terminal).
                stdin = os.open(os.devnull, os.O_RDONLY)
                stack.callback(os.close, stdin)
                user = spec.resolve_user(merged, config["user"])
                document = spec.build(config, merged, info.get("netns"), sorted(etc.items()), user)
                # The cgroup that stop, remove and the limits' tests find by the container's name.
                document["linux"]["cgroupsPath"] = f"/{CGROUP_PARENT}/{name}"
                bundle = self.data_dir(name)
                write_json(os.path.join(bundle, "config.json"), document)
                # What a shim that died (killed, host crash) left of the last start.
                self.oci.delete(name, force=True)
                try:
                    init = self.oci.create(name, bundle, stdio=(stdin, output_write, output_write))
                finally:
                    os.close(output_write)
                stack.callback(self.oci.delete, name, True)
                self.oci.start(name)
                self.update_state(
                    name, status="running", pid=init, ip=info["ip"], cgroup=cgroups.detect(name).path,
                    rootfs=merged, started_at=time.time(), restart_count=restarts, exit_code=None,
                )  # fmt: skip
                while chunk := os.read(output, 65536):
                    os.write(log, chunk)
                    if echo is not None:
                        os.write(echo, chunk)
                _pid, status = os.waitpid(init, 0)
                # Read before the OCI runtime's delete removes the cgroup (which also kills what PID 1 left).
                return namespaces._exit_code(status), None, cgroups.detect(name).oom_killed()
            except Exception as exc:
                return 127, str(exc), False

    def stop(self, name, timeout=10):
        """SIGTERM to PID 1, SIGKILL after timeout; wait until the shim has cleaned up."""
        state = self.update_state(name, stop_requested=True)
        if state.get("status") == "paused":
            with suppress(oci.OciError):  # a frozen PID 1 takes no signal; the runtime thaws it (as docker stop)
                self.oci.pause(name, False)
        init = state.get("pid")
        if init and _alive(init):
            self._kill(name, "SIGTERM")
            deadline = time.monotonic() + timeout
            while _alive(init) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(init):
                self._kill(name, "SIGKILL")
        shim = state.get("shim_pid")
        deadline = time.monotonic() + 30
        while _alive(shim) and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.state(name)

    def _kill(self, name, signal_name):
        with suppress(oci.OciError):  # it ended meanwhile
            self.oci.kill(name, signal_name)

    def pause(self, name, paused=True):
        try:
            self.oci.pause(name, paused)
        except oci.OciError as exc:
            raise ContainerError(str(exc)) from None
        return self.update_state(name, status="paused" if paused else "running")

    def remove(self, name, timeout=10):
        state = self.state(name)
        if state and state.get("status") in ("running", "paused", "starting"):
            self.stop(name, timeout)
        # Whatever a crashed shim left: network, mount, cgroup. Only a bridged container has network to undo.
        config = self.config(name)
        if config is None or config.get("network") == "bridge":
            self.network.teardown(name, published=config is None or bool(config.get("published_ports")))
        with suppress(oci.OciError, cgroups.CgroupError):
            # A shim that died leaves its container running: the OCI runtime kills what is in its cgroup.
            self.oci.delete(name, force=True)
        with suppress(cgroups.CgroupError):
            cgroups.detect(name).kill_all()
        overlay.unmount_rootfs(self.data_dir(name))
        with suppress(cgroups.CgroupError):
            cgroups.detect(name).remove()
        paths.remove_tree(self.data_dir(name))
        paths.remove_tree(self.state_dir(name))

    def bundle(self, name):
        """The OCI runtime-spec document of the container's current (or last) start."""
        with suppress(FileNotFoundError), open(os.path.join(self.data_dir(name), "config.json")) as handle:
            return fastjson.load(handle)
        return None

    def exec(self, name, argv, env=None, user=None, working_dir=None, stdin=b""):
        """Run argv inside the running container, with its capabilities, limits and seccomp filter (as docker
        exec does); return (exit code, stdout, stderr)."""
        state, document = self.state(name), self.bundle(name)
        if not state or state.get("status") != "running" or document is None:
            raise ContainerError(f"{name} is not running")
        process = dict(document["process"], args=list(argv))
        if env:
            process["env"] = [*process["env"], *(f"{key}={value}" for key, value in env.items())]
        if working_dir:
            process["cwd"] = working_dir
        if user is not None:
            uid, gid = spec.resolve_user(f"/proc/{state['pid']}/root", user)
            process["user"] = {"uid": uid, "gid": gid}
            # As at the start: root has the bounding set in effect, another user no capability.
            granted = process["capabilities"]["bounding"] if uid == 0 else []
            process["capabilities"] = dict(process["capabilities"], effective=granted, permitted=granted)
        pipes = os.pipe(), os.pipe(), os.pipe()
        (in_read, in_write), (out_read, out_write), (err_read, err_write) = pipes
        try:
            middle = self.oci.exec(name, process, stdio=(in_read, out_write, err_write), wait=False)
        except oci.OciError as exc:
            for fd in (in_write, out_read, err_read):
                os.close(fd)
            # As a shell says it (and docker exec): 127 for a program that is not there, 126 for one not run.
            return (127 if "no such executable" in str(exc) else 126), b"", str(exc).encode()
        finally:
            for fd in (in_read, out_write, err_write):
                os.close(fd)
        stdout, stderr = _communicate(in_write, out_read, err_read, stdin)
        _pid, status = os.waitpid(middle, 0)
        return namespaces._exit_code(status), stdout, stderr

    def copy(self, name, host_fd, path, into):
        """put_file/fetch_file of the connection plugin: host_fd to path in the container (into) or back, as the
        container's user, inside its mount namespace and root (namespaces.transfer)."""
        state, document = self.state(name), self.bundle(name)
        if not state or state.get("status") != "running" or document is None:
            raise ContainerError(f"{name} is not running")
        user = document["process"]["user"]
        namespaces.transfer(state["pid"], host_fd, path, into, (user["uid"], user["gid"]))

    def logs(self, name):
        path = os.path.join(self.data_dir(name), "container.log")
        with suppress(FileNotFoundError), open(path, "rb") as handle:
            return handle.read()
        return b""


def _communicate(stdin_fd, stdout_fd, stderr_fd, data):
    """Feed data to stdin_fd while reading stdout_fd and stderr_fd to their ends (the three are closed)."""
    import selectors  # noqa: PLC0415 - not on a container's start

    outputs = {stdout_fd: [], stderr_fd: []}
    with selectors.DefaultSelector() as selector:
        if data:
            os.set_blocking(stdin_fd, False)
            selector.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            os.close(stdin_fd)
        for fd in outputs:
            selector.register(fd, selectors.EVENT_READ)
        view = memoryview(data)
        while selector.get_map():
            for key, _events in selector.select():
                if key.fd == stdin_fd:
                    try:
                        view = view[os.write(stdin_fd, view[:65536]) :]
                    except BrokenPipeError:
                        view = view[:0]
                    if not view:
                        selector.unregister(stdin_fd)
                        os.close(stdin_fd)
                    continue
                chunk = os.read(key.fd, 65536)
                if chunk:
                    outputs[key.fd].append(chunk)
                else:
                    selector.unregister(key.fd)
                    os.close(key.fd)
    return b"".join(outputs[stdout_fd]), b"".join(outputs[stderr_fd])
