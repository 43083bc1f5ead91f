"""Shared fixtures: the repository, running a module through Ansible, and the lab (up once a session)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parents[1]
LAB_DIR = REPO_DIR / ".lab"
os.environ.setdefault("ANSIBLE_CONFIG", str(REPO_DIR / "ansible.cfg"))


def run(command, timeout=1800):
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_DIR, timeout=timeout, check=False)


def run_module(module, args, *options):
    """Run a module on localhost through Ansible, with the JSON stdout callback; return its result."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    process = subprocess.run(
        ["ansible", "localhost", "-m", module, "-a", json.dumps(args), *options],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_DIR,
        timeout=600,
        check=False,
    )
    result = json.loads(process.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    result["_output"] = process.stdout + process.stderr
    return result


def changes(process):
    """The PLAY RECAP's changed count of every host of an ansible-playbook run."""
    recap = process.stdout[process.stdout.rfind("PLAY RECAP") :]
    counts = dict(re.findall(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", recap, re.MULTILINE))
    assert counts, "no PLAY RECAP in:\n" + process.stdout[-3000:] + process.stderr[-2000:]
    return {host: int(count) for host, count in counts.items()}


def failures(process):
    """What an ansible-playbook run said about its failed tasks (each fatal/failed block), else its tail."""
    blocks = [
        process.stdout[match.start() : match.start() + 2500]
        for match in re.finditer(r"^(fatal|failed): ", process.stdout, re.MULTILINE)
    ]
    return "\n".join(blocks) or process.stdout[-3000:] + process.stderr[-2000:]


def lab_node(node, *command, timeout=300):
    """Run a command on a lab host (the systemd container), e.g. docker against its own engine."""
    return run(["docker", "exec", f"mooring-lab-{node}", *command], timeout=timeout)


def runtime_residue(name, run_dir):
    """What a runtime container (mooring.ops.ns_container, mooring-ctr) named name left on this host: its netns,
    host veth, iptables rules, address lease (under run_dir/network), cgroup, mounts and state directory."""
    sys.path.insert(0, str(REPO_DIR / "collections"))
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import cgroups, network  # noqa: PLC0415

    found = []
    if network.netns_name(name) in run(["ip", "netns", "list"]).stdout:
        found.append("netns")
    if run(["ip", "link", "show", network.host_veth(name)]).returncode == 0:
        found.append("veth")
    if f"mooring:{name}" in run(["iptables", "-w", "-t", "nat", "-S"]).stdout:
        found.append("iptables")
    leases = os.path.join(run_dir, "network", "leases.json")
    if os.path.exists(leases) and name in json.loads(open(leases).read()):  # noqa: SIM115
        found.append("lease")
    if any(os.path.exists(path) for path in cgroups.CgroupV1(name).paths.values()):
        found.append("cgroup")
    if name in open("/proc/self/mountinfo").read():  # noqa: SIM115
        found.append("mount")
    if os.path.exists(os.path.join(run_dir, "containers", name)):
        found.append("state")
    return found


@pytest.fixture(scope="session")
def lab():
    """`make lab` once for the session; `make lab-down` at its end, checking that nothing is left.

    MOORING_KEEP_LAB=1 keeps the lab up afterwards (for working on one test); CI never sets it."""
    process = run(["make", "lab"])
    assert process.returncode == 0, process.stdout[-5000:] + process.stderr[-3000:]
    yield process
    if os.environ.get("MOORING_KEEP_LAB") == "1":
        return
    down = run(["make", "lab-down"])
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    leftovers = run(["docker", "ps", "-a", "--filter", "label=org.mooring.lab", "--format", "{{.Names}}"])
    assert leftovers.stdout.strip() == ""
    assert run(["docker", "network", "inspect", "mooring-lab"]).returncode != 0
    assert run(["docker", "volume", "ls", "-q", "--filter", "label=org.mooring.lab"]).stdout.strip() == ""
    assert not LAB_DIR.exists()


@pytest.fixture(scope="session")
def debian_image(lab, tmp_path_factory):
    """The lab's Debian image (with Python), from `docker save`, in a runtime store of its own: (Store, record)."""
    sys.path.insert(0, str(REPO_DIR / "collections"))
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.layers import (  # noqa: PLC0415
        Store,
        import_archive,
    )

    root = tmp_path_factory.mktemp("runtime")
    archive = root / "image.tar"
    saved = run(["docker", "save", "-o", str(archive), "mooring/debian-python:bookworm"])
    assert saved.returncode == 0, saved.stderr
    store = Store(str(root / "store"))
    store.ensure()
    record = import_archive(store, str(archive), "debian")[0]
    archive.unlink()
    return store, record
