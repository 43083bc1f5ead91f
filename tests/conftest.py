"""Shared fixtures: the repository, running a module through Ansible, and the lab (up once a session)."""

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parents[1]
LAB_DIR = REPO_DIR / ".lab"
os.environ.setdefault("ANSIBLE_CONFIG", str(REPO_DIR / "ansible.cfg"))


def run(command, timeout=1800, env=None, cwd=REPO_DIR):
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False)


def free_port():
    """A TCP port nobody listens on now, chosen by the kernel from its ephemeral range (fixed or pid-derived
    numbers collide with whatever else the machine runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("0.0.0.0", 0))  # noqa: S104 - a published port listens on every address
        return probe.getsockname()[1]


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
    if os.path.exists(os.path.join(run_dir, "oci", name)):
        found.append("oci state")
    return found


def host_disk():
    """(name, major, minor) of a disk of this host (vda, 254, 0 here): block I/O throttles need a real block
    device. None when there is none."""
    for name in sorted(os.listdir("/sys/block")):
        if not name.startswith(("loop", "zram", "ram", "nbd")):
            major, minor = open(f"/sys/block/{name}/dev").read().split(":")  # noqa: SIM115
            return name, int(major), int(minor)
    return None


class OciStarted:
    """A container that the OCI runtime (oci.Runtime) created and started from a bundle, this test's process
    being PID 1's subreaper for as long as it runs (as a shim is): wait() gives its exit status as a shell would."""

    def __init__(self, runtime, container_id, pid):
        self.runtime, self.id, self.pid, self.code = runtime, container_id, pid, None

    def wait(self):
        if self.code is None:
            _pid, status = os.waitpid(self.pid, 0)
            self.code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        return self.code


@contextlib.contextmanager
def oci_started(document, bundle, container_id, stdio=None):
    """document written as bundle/config.json, created and started by the OCI runtime (its state under
    bundle/oci), with stdio's three descriptors (else /dev/null, this process's stdout and stderr); killed if it
    still runs and deleted at the end."""
    sys.path.insert(0, str(REPO_DIR / "collections"))
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import oci, syscalls  # noqa: PLC0415

    with open(os.path.join(bundle, "config.json"), "w") as handle:
        json.dump(document, handle)
    runtime = oci.Runtime(os.path.join(bundle, "oci"))
    syscalls.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    try:
        with open(os.devnull, "rb") as null:
            pid = runtime.create(container_id, str(bundle), stdio=stdio or (null.fileno(), 1, 2))
        started = OciStarted(runtime, container_id, pid)
        try:
            runtime.start(container_id)
            yield started
        finally:
            if started.code is None:
                with contextlib.suppress(oci.OciError):
                    runtime.kill(container_id, "SIGKILL")
                started.wait()
            runtime.delete(container_id, force=True)
    finally:
        syscalls.prctl(36, 0)


# Lab test files whose tests act on the whole lab (site.yml on every host, the execution environment, builds
# with this machine's image cache, other Debian releases' hosts): make test runs them alone, before the files of
# one service each, which run side by side (pytest-xdist, one group per file).
LAB_ALONE = {"test_lab.py", "test_ee.py", "test_image_factory.py", "test_python_floor.py", "test_elk.py"}
# Lab test files that stop a lab host's engine or take hosts out of the swarm: every service's containers on that
# host stop with it, so make test runs them last, alone, after the files of one service each.
LAB_LAST = {"test_swarm.py"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "lab: needs the lab hosts (set on every test that uses the lab fixture); make test runs these last"
    )
    config.addinivalue_line("markers", "lab_alone: a lab test that acts on the whole lab; make test runs these alone")
    config.addinivalue_line(
        "markers", "lab_last: a lab test that stops a lab host's engine; make test runs these alone, at the end"
    )


def pytest_collection_modifyitems(items):
    """`-m lab` / `-m "not lab"` split the integration tests into those that need the lab hosts and those that
    need at most the lab's images and registry, which make test runs beside Molecule. Among the lab tests,
    `lab_alone` marks the whole-lab files; the others run a file per worker (pytest-xdist's --dist loadfile), so
    that one service's tests run in order on one worker while another service's run on the other. (Not loadgroup:
    with pytest 9 its renaming of the test ids has no effect, and one file's tests went to both workers.)"""
    for item in items:
        if "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)
            if item.path.name in LAB_ALONE:
                item.add_marker(pytest.mark.lab_alone)
            if item.path.name in LAB_LAST:
                item.add_marker(pytest.mark.lab_last)


_running_test = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    _running_test.append(item)
    try:
        return (yield)
    finally:
        _running_test.pop()


def report(text):
    """What a test measured (a client's counts during a roll or an upgrade): printed, and kept with the test's
    result, so that the end of the run lists it under "measured" without -s, from pytest-xdist's workers too."""
    print(text)
    if _running_test:
        _running_test[-1].user_properties.append(("measured", text))


def pytest_terminal_summary(terminalreporter):
    lines = [  # once each: a report can be listed twice (xdist hands some on again at the end of a worker)
        f"{result.nodeid.rsplit('::', 1)[-1]} ({outcome}): {value}"
        for outcome in ("passed", "failed")
        for result in terminalreporter.stats.get(outcome, [])
        for name, value in getattr(result, "user_properties", ())
        if name == "measured" and result.when == "call"
    ]
    if lines:
        terminalreporter.section("measured")
        for line in dict.fromkeys(lines):
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def lab_registry():
    """The lab's engine, images and registry harbor.lab on this machine (`make registry`), without the lab hosts:
    what the runtime's tests pull and run. Taken as it is when the registry runs and the images are there (make
    test made them just before); left up at the end (`make lab-down` removes it, as the lab fixture does)."""
    running = run(["docker", "inspect", "--format", "{{.State.Running}}", "mooring-lab-registry"])
    images = run(["docker", "image", "inspect", "mooring/debian-python:bookworm", "mooring/lab-registry:bookworm"])
    if running.stdout.strip() == "true" and images.returncode == 0:
        return
    process = run(["make", "registry"])
    assert process.returncode == 0, process.stdout[-5000:] + process.stderr[-3000:]


@pytest.fixture(scope="session")
def lab():
    """`make lab` once for the session; `make lab-down` at its end, checking that nothing is left.

    MOORING_KEEP_LAB=1 keeps the lab up afterwards (for working on one test), and MOORING_LAB_READY=1 with it
    takes a lab that is already up as it is; CI sets neither."""
    if os.environ.get("MOORING_KEEP_LAB") == "1" and os.environ.get("MOORING_LAB_READY") == "1":
        yield None
        return
    process = run(["make", "lab"])
    assert process.returncode == 0, process.stdout[-5000:] + process.stderr[-3000:]
    yield process
    if os.environ.get("MOORING_KEEP_LAB") == "1":
        return
    lab_down_and_check()


def lab_down_and_check():
    """`make lab-down`, then nothing of the lab is left on this machine (the lab fixture's end, and make test's
    last test, tests/integration/test_lab_down.py)."""
    down = run(["make", "lab-down"])
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    leftovers = run(["docker", "ps", "-a", "--filter", "label=org.mooring.lab", "--format", "{{.Names}}"])
    assert leftovers.stdout.strip() == ""
    assert run(["docker", "network", "inspect", "mooring-lab"]).returncode != 0
    assert run(["docker", "volume", "ls", "-q", "--filter", "label=org.mooring.lab"]).stdout.strip() == ""
    assert not LAB_DIR.exists()
    # What the README promises lab-down takes back on this machine too: the image tags, docker's trust of the
    # lab CA, the /etc/hosts block and the registry login.
    tags = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.split()
    lab_tags = [tag for tag in tags if tag.startswith(("harbor.lab/", "mooring/"))]
    assert lab_tags == []
    assert run(["docker", "images", "-q", "--filter", "label=org.opencontainers.image.vendor=mooring"]).stdout == ""
    assert not Path("/etc/docker/certs.d/harbor.lab").exists()
    assert "mooring docker_host" not in Path("/etc/hosts").read_text()
    docker_config = Path.home() / ".docker" / "config.json"
    assert not docker_config.exists() or "harbor.lab" not in json.loads(docker_config.read_text()).get("auths", {})


@pytest.fixture(scope="session")
def debian_image(lab_registry, tmp_path_factory):
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


# -- containers of mooring's own runtime, for the runtime's tests ------------------------------------------------
RUNTIME_IMAGE = "mooring/debian-python:bookworm"
RUNTIME_BRIDGE, RUNTIME_SUBNET = "mooringt1", "10.90.0.0/24"
RUNTIME_GATEWAY = "10.90.0.1"


@pytest.fixture(scope="module")
def runtime(lab_registry, tmp_path_factory):
    """A runtime store and state directory of the test module's own, with the lab's Debian image as `debian`
    (imported through ns_image), on a bridge of its own; the bridge goes at the end."""
    sys.path.insert(0, str(REPO_DIR / "collections"))
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import network  # noqa: PLC0415

    root = tmp_path_factory.mktemp("runtime")
    archive = root / "image.tar"
    assert run(["docker", "save", "-o", str(archive), RUNTIME_IMAGE]).returncode == 0
    settings = {"root": str(root / "store"), "run_dir": str(root / "run"), "bridge": RUNTIME_BRIDGE,
                "subnet": RUNTIME_SUBNET}  # fmt: skip
    imported = run_module(
        "mooring.ops.ns_image", {"root": settings["root"], "archive": str(archive), "name": "debian"},
        "-e", f"ansible_python_interpreter={HOST_PYTHON}",
    )  # fmt: skip
    assert imported["changed"] is True, imported["_output"]
    archive.unlink()
    yield settings
    network.Network(bridge=RUNTIME_BRIDGE, subnet=RUNTIME_SUBNET).remove_bridge()


# Ansible runs a module on a managed Debian 12 host with the host's own Python (3.11.2 there, older than the
# venv's): the runtime's module tests run it the same way.
HOST_PYTHON = "/usr/bin/python3"


def container(runtime, name=None, check=False, python=HOST_PYTHON, **options):
    """mooring.ops.ns_container through Ansible (with --check when check), on the test module's runtime, under
    the host's own Python (or the interpreter ``python``)."""
    arguments = {**runtime, "name": name or "c" + uuid.uuid4().hex[:8], **options}
    interpreter = ["-e", f"ansible_python_interpreter={python}"]
    return run_module("mooring.ops.ns_container", arguments, *interpreter, *(["--check"] if check else []))


def residue(runtime, name):
    return runtime_residue(name, runtime["run_dir"])


@pytest.fixture
def named(runtime):
    """Container names for a test; each is removed at its end, and must leave nothing behind."""
    names = []

    def make():
        names.append("c" + uuid.uuid4().hex[:8])
        return names[-1]

    yield make
    for name in names:
        # sleep as PID 1 has no SIGTERM handler: the kernel ignores the signal, so only SIGKILL stops it.
        removed = container(runtime, name, state="absent", stop_timeout=1)
        assert removed.get("failed") is not True, removed["_output"]
        assert residue(runtime, name) == []


def rt(runtime):
    """The runtime's Python API on the test module's store."""
    sys.path.insert(0, str(REPO_DIR / "collections"))
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.container import Runtime  # noqa: PLC0415

    return Runtime(runtime["root"], runtime["run_dir"], runtime["bridge"], runtime["subnet"])


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
