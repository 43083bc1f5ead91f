"""The runtime's cgroups (plugins/module_utils/nsruntime/cgroups.py) on this kernel, as root: real limits on
real processes. This machine is cgroup v1 with an empty cgroup2 beside it; the v2 class is exercised on a cgroup2
mount made by the test, where the kernel offers what a hybrid host can (membership, the freezer), and its limits
must fail with a message that names the option."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO_DIR, run

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import cgroups

ALLOCATE_ON_INPUT = "import sys; sys.stdin.read(1); block = bytearray(256 * 1024 * 1024); print(len(block))"
SPIN = "while True: pass"


@pytest.fixture
def cgroup():
    group = cgroups.CgroupV1(f"test-{uuid.uuid4().hex[:8]}", parent="mooring-test")
    group.create()
    children = []
    yield group, children
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()
    if group.frozen():
        group.freeze(False)
    group.remove()
    assert not any(os.path.exists(path) for path in group.paths.values())
    for path in group.paths.values():
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))


def start(children, group, code):
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    children.append(child)
    group.add(child.pid)
    return child


def test_detect_finds_this_hosts_cgroup_version():
    unified = cgroups.mounts().get("/sys/fs/cgroup", ("tmpfs",))[0] == "cgroup2"
    assert cgroups.detect("probe").version == (2 if unified else 1)


def test_a_process_above_its_memory_limit_is_oom_killed(cgroup):
    group, children = cgroup
    group.limit(memory=cgroups.parse_size("64m", "memory"))
    child = start(children, group, ALLOCATE_ON_INPUT)
    child.stdin.write(b"x")
    child.stdin.flush()
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert group.oom_killed()


def test_pids_limit_stops_a_fork_bomb(cgroup):
    group, children = cgroup
    group.limit(pids_limit=20)
    # A bounded bomb: tries 200 children; the cgroup must refuse all but the first ~19.
    bomb = (
        "import os, sys, time\nsys.stdin.read(1)\nmade = 0\nfor _ in range(200):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        continue\n"
        "    if pid == 0:\n        time.sleep(5)\n        os._exit(0)\n    made += 1\nprint(made, flush=True)\n"
        "time.sleep(5)\n"
    )
    child = start(children, group, bomb)
    child.stdin.write(b"x")
    child.stdin.flush()
    made = int(child.stdout.readline())
    assert 0 < made < 20
    assert len(group.procs()) <= 20
    for pid in group.procs():
        os.kill(pid, signal.SIGKILL)


def test_cpus_half_a_core_is_a_quota_the_kernel_throttles_to(cgroup):
    group, children = cgroup
    group.limit(cpus=0.5)
    start(children, group, SPIN)
    cpu = group.paths["cpu"]
    with open(os.path.join(cpu, "cpu.cfs_quota_us")) as quota, open(os.path.join(cpu, "cpu.cfs_period_us")) as period:
        assert (quota.read().strip(), period.read().strip()) == ("50000", "100000")
    deadline = time.monotonic() + 20
    while True:
        with open(os.path.join(cpu, "cpu.stat")) as stat_file:
            stats = dict(line.split() for line in stat_file)
        if int(stats["nr_throttled"]) > 0:
            break
        assert time.monotonic() < deadline, f"the spinning process was never throttled: {stats}"
        time.sleep(0.1)


def test_a_frozen_group_makes_no_progress_until_thawed(cgroup):
    group, children = cgroup
    start(children, group, SPIN)
    time.sleep(0.2)
    group.freeze(True)
    assert group.frozen()
    frozen_at = group.cpu_usage_ns()
    time.sleep(0.5)
    assert group.cpu_usage_ns() == frozen_at
    group.freeze(False)
    time.sleep(0.3)
    assert group.cpu_usage_ns() > frozen_at


@pytest.mark.parametrize(("value", "expected"), [("512m", 512 << 20), ("1g", 1 << 30), ("1048576", 1 << 20)])
def test_sizes_parse(value, expected):
    assert cgroups.parse_size(value, "memory") == expected


@pytest.mark.parametrize("value", ["lots", "-5m", "0"])
def test_a_bad_size_names_the_option(value):
    with pytest.raises(cgroups.CgroupError, match=r"^memory must be"):
        cgroups.parse_size(value, "memory")


@pytest.fixture
def cgroup2_mount(tmp_path):
    point = tmp_path / "cgroup2"
    point.mkdir()
    mounted = run(["mount", "-t", "cgroup2", "none", str(point)])
    assert mounted.returncode == 0, mounted.stderr
    yield str(point)
    run(["umount", str(point)])


def test_cgroup_v2_membership_and_freezer_on_a_cgroup2_mount(cgroup2_mount):
    group = cgroups.CgroupV2(f"test-{uuid.uuid4().hex[:8]}", root=cgroup2_mount, parent="mooring-test")
    group.create()
    child = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        group.add(child.pid)
        assert group.procs() == [child.pid]
        group.freeze(True)
        assert group.frozen()
        with open(f"/proc/{child.pid}/stat") as stat:
            before = stat.read().split()[13]
        time.sleep(0.3)
        with open(f"/proc/{child.pid}/stat") as stat:
            assert stat.read().split()[13] == before
        group.freeze(False)
        assert not group.frozen()
        # This hybrid host's controllers belong to the v1 hierarchies: a v2 limit cannot be set, and says why.
        with open(os.path.join(cgroup2_mount, "cgroup.controllers")) as controllers:
            offered = controllers.read().split()
        if "memory" not in offered:
            with pytest.raises(cgroups.CgroupError, match=r"^memory needs the cgroup v2 memory controller"):
                group.limit(memory=64 << 20)
    finally:
        child.kill()
        child.wait()
        group.remove()
        os.rmdir(group.parent)
    assert not os.path.exists(group.path)


def test_cgroup_v2_device_rules_are_a_bpf_program_that_denies_what_no_rule_allows(cgroup2_mount):
    """On this hybrid host a process is in a v1 devices cgroup and in the cgroup2 hierarchy at once; the kernel
    asks the v2 cgroup's BPF device program on every open and mknod, so the program is exercised for real."""
    sys.path.insert(0, str(REPO_DIR / "collections"))
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import spec  # noqa: PLC0415

    group = cgroups.CgroupV2(f"test-{uuid.uuid4().hex[:8]}", root=cgroup2_mount, parent="mooring-test")
    group.create()
    probe = (
        "import os, sys\nsys.stdin.read(1)\nfor path, flags in (('/dev/null', os.O_WRONLY), ('/dev/kmsg', os.O_WRONLY),"
        " ('/dev/zero', os.O_RDONLY), ('/dev/zero', os.O_WRONLY)):\n"
        "    try:\n        os.close(os.open(path, flags)); print(path, flags, 'ok')\n"
        "    except OSError as e:\n        print(path, flags, e.errno)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", probe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        group.devices([{"allow": False, "access": "rwm"}, *spec.DEVICE_ALLOWLIST,
                       {"allow": False, "type": "c", "major": 1, "minor": 5, "access": "w"}])  # fmt: skip
        group.add(child.pid)
        out, _err = child.communicate("g", timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        group.remove()
        os.rmdir(group.parent)
    # /dev/null allowed; /dev/kmsg (1:11) never allowed; /dev/zero readable, but its write taken back by the
    # later rule (the last matching rule decides).
    assert out.splitlines() == ["/dev/null 1 ok", "/dev/kmsg 1 1", "/dev/zero 0 ok", "/dev/zero 1 1"], out
