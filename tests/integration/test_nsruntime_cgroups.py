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


def test_cpus_half_a_core_is_enforced(cgroup):
    group, children = cgroup
    group.limit(cpus=0.5)
    start(children, group, SPIN)
    time.sleep(0.3)
    used_before, started = group.cpu_usage_ns(), time.monotonic()
    time.sleep(2.0)
    share = (group.cpu_usage_ns() - used_before) / ((time.monotonic() - started) * 1e9)
    # One spinning thread would use 1.0 of a core unlimited; the quota allows 0.5 (CFS's accounting adds a
    # little scheduling slack, hence 0.6).
    assert 0.3 < share < 0.6, share


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
