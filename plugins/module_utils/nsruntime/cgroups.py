# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Control groups: the limits of a container (memory, cpu quota and weight, cpuset, pids) and its freezer.

Hosts come in two kinds: cgroup v1 (a hierarchy per controller under /sys/fs/cgroup, as on this project's
machines) and cgroup v2 (one unified hierarchy, as on most hosts today). `detect()` reads /proc/self/mountinfo
and returns the matching class; both offer the same calls, so the runtime never asks which one it has.
"""

from __future__ import annotations

import errno
import os
import time

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.lean import SIGKILL

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "devices")
# Joined where the host mounts them (block I/O and huge page limits need them; most containers do not).
V1_OPTIONAL = ("blkio", "hugetlb")
V2_CONTROLLERS = ("memory", "cpu", "cpuset", "pids", "io", "hugetlb")
# linux.resources.blockIO's throttle fields and the name each has in the blkio controller's files.
THROTTLES = {
    "throttleReadBpsDevice": "read_bps",
    "throttleWriteBpsDevice": "write_bps",
    "throttleReadIOPSDevice": "read_iops",
    "throttleWriteIOPSDevice": "write_iops",
}
CPU_PERIOD_US = 100000
UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class CgroupError(Exception):
    """A cgroup could not be made, limited or removed; the message names the file or the option."""


def parse_size(value, option):
    """'512m', '1g', '1024' (bytes) -> bytes; a clear error that names the option otherwise."""
    text = str(value).strip().lower().removesuffix("b") if str(value).strip().lower() != "b" else "b"
    number, unit = (text[:-1], text[-1]) if text and text[-1] in UNITS else (text, "b")
    try:
        size = int(float(number) * UNITS[unit])
    except ValueError:
        raise CgroupError(f"{option} must be a size such as 512m, 1g or a number of bytes, got {value!r}") from None
    if size <= 0:
        raise CgroupError(f"{option} must be more than 0, got {value!r}")
    return size


def _write(path, value):
    # One write(2) on a bare descriptor, as the kernel takes a control file's value (open()'s buffered file adds
    # four system calls a write, a few dozen of a container's start).
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(handle, str(value).encode())
        finally:
            os.close(handle)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from exc


def _read(path):
    handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(handle, 65536):
            chunks.append(chunk)
    finally:
        os.close(handle)
    return b"".join(chunks).decode().strip()


def mounts():
    """{mount point: (fstype, super options)} of the cgroup file systems."""
    found = {}
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            separator = fields.index("-")
            fstype, options = fields[separator + 1], fields[separator + 3]
            if fstype in ("cgroup", "cgroup2"):
                found[fields[4]] = (fstype, options.split(","))
    return found


def detect(name, parent="mooring"):
    """The cgroup of a container on this host: v2 when /sys/fs/cgroup is the unified hierarchy, else v1."""
    found = mounts()
    if found.get("/sys/fs/cgroup", ("",))[0] == "cgroup2":
        return CgroupV2(name, "/sys/fs/cgroup", parent)
    return CgroupV1(name, parent=parent, found=found)


class CgroupV1:
    version = 1

    def __init__(self, name, parent="mooring", found=None):
        self.name = name
        self.paths = {}
        found = mounts() if found is None else found
        for controller in V1_CONTROLLERS:
            point = next(
                (point for point, (kind, opts) in found.items() if kind == "cgroup" and controller in opts), None
            )
            if point is None:
                raise CgroupError(f"the cgroup v1 controller {controller} is not mounted")
            self.paths[controller] = os.path.join(point, parent, name)
        for controller in V1_OPTIONAL:
            for point, (kind, opts) in found.items():
                if kind == "cgroup" and controller in opts:
                    self.paths[controller] = os.path.join(point, parent, name)
                    break

    @property
    def path(self):
        return self.paths["memory"]

    def create(self):
        for controller, path in self.paths.items():
            missing = []
            above = os.path.dirname(path)
            while not os.path.isdir(above):
                missing.insert(0, above)
                above = os.path.dirname(above)
            for level in missing:
                os.makedirs(level, exist_ok=True)
                if controller == "cpuset":
                    self._inherit_cpuset(level)
            os.makedirs(path, exist_ok=True)
        self._inherit_cpuset(self.paths["cpuset"])

    @staticmethod
    def _inherit_cpuset(path):
        """A v1 cpuset starts empty, and a process cannot join it until cpus and mems are set."""
        above = os.path.dirname(path)
        for key in ("cpuset.cpus", "cpuset.mems"):
            if not _read(os.path.join(path, key)):
                _write(os.path.join(path, key), _read(os.path.join(above, key)))

    def limit(self, memory=None, memory_swap=None, cpus=None, cpu_shares=None, cpuset_cpus=None, pids_limit=None):
        if memory:
            limit_file = os.path.join(self.paths["memory"], "memory.limit_in_bytes")
            swap_file = os.path.join(self.paths["memory"], "memory.memsw.limit_in_bytes")
            writes = [(limit_file, memory)]
            if os.path.exists(swap_file):
                swap = (swap_file, memory_swap if memory_swap and memory_swap > 0 else memory)
                # The kernel keeps memsw at or above the limit: raised (update) memsw goes first, lowered last.
                writes = [swap, *writes] if memory > int(_read(limit_file)) else [*writes, swap]
            for path, value in writes:
                _write(path, value)
        if cpus:
            self.cpu_quota(int(cpus * CPU_PERIOD_US), CPU_PERIOD_US)
        if cpu_shares:
            _write(os.path.join(self.paths["cpu"], "cpu.shares"), cpu_shares)
        if cpuset_cpus:
            _write(os.path.join(self.paths["cpuset"], "cpuset.cpus"), cpuset_cpus)
        if pids_limit:
            _write(os.path.join(self.paths["pids"], "pids.max"), pids_limit)

    def cpu_quota(self, quota, period):
        _write(os.path.join(self.paths["cpu"], "cpu.cfs_period_us"), period)
        _write(os.path.join(self.paths["cpu"], "cpu.cfs_quota_us"), quota)

    def cpuset_mems(self, mems):
        _write(os.path.join(self.paths["cpuset"], "cpuset.mems"), mems)

    def devices(self, rules):
        """The spec's linux.resources.devices, in order, as the devices controller's allow and deny lists."""
        files = {}
        try:
            for rule in rules:
                if rule.get("type", "a") == "a" and "major" not in rule and "minor" not in rule:
                    text = "a"
                else:
                    text = f"{rule.get('type', 'a')} {rule.get('major', '*')}:{rule.get('minor', '*')} {rule['access']}"
                name = "devices.allow" if rule["allow"] else "devices.deny"
                if name not in files:
                    files[name] = os.open(os.path.join(self.paths["devices"], name), os.O_WRONLY | os.O_CLOEXEC)
                # One rule a write, as the controller parses them; one open a file.
                try:
                    os.write(files[name], text.encode())
                except OSError as exc:
                    raise CgroupError(f"cannot write {text!r} to {name} of {self.paths['devices']}: {exc}") from exc
        finally:
            for handle in files.values():
                os.close(handle)

    def block_io(self, block_io):
        """linux.resources.blockIO on the blkio hierarchy: the weights (blkio.weight, or BFQ's blkio.bfq.weight)
        and the throttles; a field this host cannot apply is refused by its name."""
        directory = self.paths.get("blkio")
        if directory is None:
            raise CgroupError("linux.resources.blockIO needs the cgroup v1 blkio controller, which is not mounted")

        def weight_file(name, field):
            for candidate in (f"blkio.{name}", f"blkio.bfq.{name}"):
                if os.path.exists(os.path.join(directory, candidate)):
                    return os.path.join(directory, candidate)
            raise CgroupError(
                f"linux.resources.blockIO.{field} needs blkio.{name} (CFQ) or blkio.bfq.{name} (BFQ), which this "
                "host's blkio hierarchy does not offer (no proportional I/O scheduler)"
            )

        def write(field, path, text):
            try:
                with open(path, "w") as handle:
                    handle.write(text)
            except OSError as exc:
                raise CgroupError(
                    f"linux.resources.blockIO.{field}: the kernel refused {text!r} in {os.path.basename(path)}: "
                    f"{exc.strerror}"
                    + (" (a device's weight needs it to use the BFQ scheduler)" if "weight" in field else "")
                ) from exc

        if block_io.get("weight"):
            write("weight", weight_file("weight", "weight"), str(block_io["weight"]))
        if block_io.get("leafWeight"):
            write("leafWeight", weight_file("leaf_weight", "leafWeight"), str(block_io["leafWeight"]))
        for index, device in enumerate(block_io.get("weightDevice") or []):
            if device.get("weight"):
                text = f"{device['major']}:{device['minor']} {device['weight']}"
                write(f"weightDevice[{index}]", weight_file("weight_device", "weightDevice"), text)
        for field, name in THROTTLES.items():
            for index, device in enumerate(block_io.get(field) or []):
                path = os.path.join(directory, f"blkio.throttle.{name}_device")
                write(f"{field}[{index}]", path, f"{device['major']}:{device['minor']} {device['rate']}")

    def hugepages(self, limits):
        """linux.resources.hugepageLimits: hugetlb.<size>.limit_in_bytes for each page size."""
        directory = self.paths.get("hugetlb")
        if directory is None:
            raise CgroupError(
                "linux.resources.hugepageLimits needs the cgroup v1 hugetlb controller, which is not mounted"
            )
        for index, entry in enumerate(limits):
            path = os.path.join(directory, f"hugetlb.{entry['pageSize']}.limit_in_bytes")
            if not os.path.exists(path):
                raise CgroupError(f"linux.resources.hugepageLimits[{index}].pageSize {entry['pageSize']!r}: "
                                  "this host has no such huge page size")  # fmt: skip
            _write(path, entry["limit"])

    def add(self, pid):
        for path in self.paths.values():
            _write(os.path.join(path, "cgroup.procs"), pid)

    def enter(self):
        """Move the calling process, which must have a single thread (a process just forked), into the cgroup.
        "0" written to `tasks` moves the calling thread, and the kernel then skips the global threadgroup lock
        whose first writer after a quiet spell waits out an RCU grace period (7-13 ms here; cgroup.procs pays
        it: see the README's benchmark). The process must still be the host's root (not in a user namespace of its
        own)."""
        for path in self.paths.values():
            _write(os.path.join(path, "tasks"), 0)

    def procs(self):
        return [int(pid) for pid in _read(os.path.join(self.path, "cgroup.procs")).split()]

    def freeze(self, frozen=True):
        state_file = os.path.join(self.paths["freezer"], "freezer.state")
        _write(state_file, "FROZEN" if frozen else "THAWED")
        _wait_for(lambda: _read(state_file) == ("FROZEN" if frozen else "THAWED"), state_file)

    def frozen(self):
        return _read(os.path.join(self.paths["freezer"], "freezer.state")) == "FROZEN"

    def cpu_usage_ns(self):
        return int(_read(os.path.join(self.paths["cpuacct"], "cpuacct.usage")))

    def oom_killed(self):
        control = os.path.join(self.paths["memory"], "memory.oom_control")
        return "oom_kill 0" not in _read(control) if os.path.exists(control) else False

    def remove(self):
        for path in self.paths.values():
            _rmdir(path)

    def kill_all(self):
        _kill_all(self)


class CgroupV2:
    version = 2

    def __init__(self, name, root="/sys/fs/cgroup", parent="mooring"):
        self.name = name
        self.root = root
        self.parent = os.path.join(root, parent)
        self.path = os.path.join(self.parent, name)

    def create(self):
        if not os.path.isdir(self.parent):
            os.makedirs(self.parent)
        available = _read(os.path.join(self.root, "cgroup.controllers")).split()
        wanted = [controller for controller in V2_CONTROLLERS if controller in available]
        levels = os.path.relpath(self.parent, self.root).split(os.sep)
        for directory in [self.root] + [os.path.join(self.root, *levels[: n + 1]) for n in range(len(levels))]:
            enabled = _read(os.path.join(directory, "cgroup.subtree_control")).split()
            missing = [controller for controller in wanted if controller not in enabled]
            if missing:
                _write(os.path.join(directory, "cgroup.subtree_control"), " ".join("+" + c for c in missing))
        os.makedirs(self.path, exist_ok=True)

    def _controller_file(self, controller, name, option):
        path = os.path.join(self.path, name)
        if not os.path.exists(path):
            raise CgroupError(
                f"{option} needs the cgroup v2 {controller} controller, which {self.root} does not offer "
                "(on a hybrid host it belongs to a v1 hierarchy)"
            )
        return path

    def limit(self, memory=None, memory_swap=None, cpus=None, cpu_shares=None, cpuset_cpus=None, pids_limit=None):
        if memory:
            _write(self._controller_file("memory", "memory.max", "memory"), memory)
            swap = (memory_swap - memory) if memory_swap and memory_swap > 0 else 0
            _write(self._controller_file("memory", "memory.swap.max", "memory_swap"), swap)
        if cpus:
            self.cpu_quota(int(cpus * CPU_PERIOD_US), CPU_PERIOD_US)
        if cpu_shares:
            # v1 shares 2..262144 onto v2 weights 1..10000, as runc and crun map them.
            weight = 1 + ((cpu_shares - 2) * 9999) // 262142
            _write(self._controller_file("cpu", "cpu.weight", "cpu_shares"), weight)
        if cpuset_cpus:
            _write(self._controller_file("cpuset", "cpuset.cpus", "cpuset_cpus"), cpuset_cpus)
        if pids_limit:
            _write(self._controller_file("pids", "pids.max", "pids_limit"), pids_limit)

    def cpu_quota(self, quota, period):
        _write(self._controller_file("cpu", "cpu.max", "cpus"), f"{quota} {period}")

    def cpuset_mems(self, mems):
        _write(self._controller_file("cpuset", "cpuset.mems", "cpuset_mems"), mems)

    def devices(self, rules):
        """The spec's linux.resources.devices as a BPF device program on the cgroup (devices.py)."""
        from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import devices  # noqa: PLC0415

        try:
            devices.attach(self.path, rules)
        except OSError as exc:
            raise CgroupError(f"linux.resources.devices on {self.path}: {exc}") from exc

    def block_io(self, block_io):
        """linux.resources.blockIO as io.weight and io.max (weights mapped from v1's 10..1000, as runc does)."""

        def v2_weight(value):
            return 1 + (value - 10) * 9999 // 990

        lines = []
        if block_io.get("weight"):
            lines.append(f"default {v2_weight(block_io['weight'])}")
        lines += [
            f"{device['major']}:{device['minor']} {v2_weight(device['weight'])}"
            for device in block_io.get("weightDevice") or [] if device.get("weight")
        ]  # fmt: skip
        for line in lines:
            _write(self._controller_file("io", "io.weight", "linux.resources.blockIO.weight"), line)
        if block_io.get("leafWeight"):
            raise CgroupError("linux.resources.blockIO.leafWeight has no cgroup v2 counterpart")
        for field, name in THROTTLES.items():
            key = {"read_bps": "rbps", "write_bps": "wbps", "read_iops": "riops", "write_iops": "wiops"}[name]
            for device in block_io.get(field) or []:
                path = self._controller_file("io", "io.max", f"linux.resources.blockIO.{field}")
                _write(path, f"{device['major']}:{device['minor']} {key}={device['rate']}")

    def hugepages(self, limits):
        for index, entry in enumerate(limits):
            field = f"linux.resources.hugepageLimits[{index}]"
            _write(self._controller_file("hugetlb", f"hugetlb.{entry['pageSize']}.max", field), entry["limit"])

    def add(self, pid):
        _write(os.path.join(self.path, "cgroup.procs"), pid)

    def enter(self):
        """Move the calling process into the cgroup (v2 moves a thread across domains only with its process:
        cgroup.procs, which takes the global threadgroup lock)."""
        _write(os.path.join(self.path, "cgroup.procs"), 0)

    def procs(self):
        return [int(pid) for pid in _read(os.path.join(self.path, "cgroup.procs")).split()]

    def freeze(self, frozen=True):
        _write(os.path.join(self.path, "cgroup.freeze"), 1 if frozen else 0)
        events = os.path.join(self.path, "cgroup.events")
        _wait_for(lambda: f"frozen {1 if frozen else 0}" in _read(events), events)

    def frozen(self):
        return "frozen 1" in _read(os.path.join(self.path, "cgroup.events"))

    def cpu_usage_ns(self):
        for line in _read(os.path.join(self.path, "cpu.stat")).splitlines():
            key, _sep, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) * 1000
        return 0

    def oom_killed(self):
        events = os.path.join(self.path, "memory.events")
        if not os.path.exists(events):
            return False
        return any(line.startswith("oom_kill ") and line.split()[1] != "0" for line in _read(events).splitlines())

    def remove(self):
        _rmdir(self.path)

    def kill_all(self):
        _kill_all(self)


def apply(group, resources):
    """The OCI spec's linux.resources on a container's cgroup (v1 or v2): limits, then device rules."""
    apply_limits(group, resources)
    group.devices(resources.get("devices") or [])


def apply_limits(group, resources):
    """linux.resources but the device rules (what `update` changes on a running container, as runc's does)."""
    memory, cpu = resources.get("memory") or {}, resources.get("cpu") or {}
    group.limit(
        memory=memory.get("limit"),
        memory_swap=memory.get("swap"),
        cpu_shares=cpu.get("shares"),
        cpuset_cpus=cpu.get("cpus"),
        pids_limit=(resources.get("pids") or {}).get("limit"),
    )
    # The spec's own quota and period, not their ratio over a period of the runtime's choosing.
    if (cpu.get("quota") or 0) > 0:
        group.cpu_quota(cpu["quota"], cpu.get("period") or CPU_PERIOD_US)
    if cpu.get("mems"):
        group.cpuset_mems(cpu["mems"])
    if any((resources.get("blockIO") or {}).values()):
        group.block_io(resources["blockIO"])
    if resources.get("hugepageLimits"):
        group.hugepages(resources["hugepageLimits"])


def _kill_all(group, timeout=5.0):
    """SIGKILL every process of the cgroup (thawed first: a frozen process cannot die) and wait for it to empty."""
    try:
        if group.frozen():
            group.freeze(False)
        deadline = time.monotonic() + timeout
        while pids := group.procs():
            for pid in pids:
                try:
                    os.kill(pid, SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise CgroupError(f"processes {pids} of {group.path} did not die within {timeout} s")
            time.sleep(0.01)
    except FileNotFoundError:
        return


def _wait_for(condition, what, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise CgroupError(f"{what} did not change within {timeout} s")
        time.sleep(0.01)


def _rmdir(path, timeout=5.0):
    """rmdir a cgroup; the kernel says EBUSY while its last processes are still exiting, so retry briefly."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"cannot remove {path}: {exc.strerror}") from exc
            time.sleep(0.02)
