"""mooring's runtime run by a real docker engine: dockerd -> containerd -> its runc shim (io.containerd.runc.v2)
-> /usr/local/bin/mooring-runtime, registered as `runtimes: {mooring: ...}` in daemon.json by the oci_runtime and
docker_host roles. On this machine's engine (Debian 12's docker.io 20.10) beside runc, and on each lab host
(Debian 11, 12 and 13: docker.io 20.10 and 26, Python 3.9 to 3.13) with the service images from harbor.lab.

Each container is checked from the host: that the runtime which ran it is mooring's (its state file, not runc's),
what the process sees against what runc gives it for the same `docker run` line, and that nothing is left once
docker removed it (state directory, cgroup, process)."""

import json
import os
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import host_disk, run

IMAGE = "mooring/debian-python:bookworm"
SHIM_ROOT = "/run/docker/runtime-runc/moby"  # the --root containerd's shim passes every runtime (docker 20.10)
NODES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}
NGINX = "harbor.lab/mooring/nginx:1.22"


def docker(*argv, timeout=120):
    return run(["docker", *argv], timeout=timeout)


def runtime_state(container_id, root=SHIM_ROOT):
    """mooring's own record of the container (its state.json has fields runc's has not), or None."""
    try:
        with open(os.path.join(root, container_id, "state.json")) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def cgroup_of(container_id):
    return f"/sys/fs/cgroup/memory/docker/{container_id}"


@pytest.fixture
def started(lab_registry):
    """docker run -d with a name of the test's own; every container is removed at the end and must leave nothing."""
    names = []

    def start(*argv, runtime="mooring"):
        name = "oci-engine-" + uuid.uuid4().hex[:8]
        created = docker("run", "-d", "--name", name, "--runtime", runtime, *argv)
        assert created.returncode == 0, created.stderr
        names.append((name, created.stdout.strip()))
        return name, created.stdout.strip()

    yield start
    for name, container_id in names:
        docker("rm", "-f", name)
        assert runtime_state(container_id) is None and not os.path.exists(os.path.join(SHIM_ROOT, container_id))
        assert not os.path.exists(os.path.join(SHIM_ROOT, f".{container_id}.lock"))
        assert not os.path.exists(cgroup_of(container_id)), container_id


def test_the_engine_has_the_runtime_registered(lab_registry):
    runtimes = json.loads(docker("info", "--format", "{{json .Runtimes}}").stdout)
    assert runtimes["mooring"]["path"] == "/usr/local/bin/mooring-runtime"
    shown = run(["/usr/local/bin/mooring-runtime", "features"])
    assert shown.returncode == 0 and json.loads(shown.stdout)["ociVersionMax"].startswith("1.")


def test_docker_run_rm_gives_the_same_process_as_runc(lab_registry):
    """The same restricted `docker run --rm` line through runc and through mooring: the same user, capabilities,
    no_new_privs, seccomp mode, limits (memory, pids, a disk's read throttle), read-only root and hostname; and
    the engine's exit status."""
    disk, major, minor = host_disk()
    report = (
        "id; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; "
        "cat /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device; "
        "touch /probe 2>/dev/null || echo read-only; hostname; cat /proc/sys/net/ipv4/ip_forward; exit 3"
    )
    line = [
        "run", "--rm", "--network", "none", "--read-only", "-m", "64m", "--pids-limit", "50", "--user", "1000:1000",
        "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE", "--security-opt", "no-new-privileges",
        "--device-read-bps", f"/dev/{disk}:1mb", "--hostname", "same", IMAGE, "sh", "-c", report,
    ]  # fmt: skip
    by_runc = docker(*line[:1], "--runtime", "runc", *line[1:])
    by_mooring = docker(*line[:1], "--runtime", "mooring", *line[1:])
    assert by_runc.returncode == 3 and by_mooring.returncode == 3, by_mooring.stderr
    assert by_mooring.stdout == by_runc.stdout
    assert "uid=1000" in by_mooring.stdout
    assert f"67108864\n50\n{major}:{minor} {1 << 20}\nread-only\nsame\n" in by_mooring.stdout


def test_exec_logs_top_pause_stop_and_rm_through_dockerd(started):
    """The shim's calls beyond the lifecycle: exec (detached, with its status, env, user and a terminal), logs,
    top (ps), update, pause and unpause (the freezer), and a stop whose TERM the process handles."""
    script = "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.2; done"
    name, container_id = started("--env", "GREETING=hello", IMAGE, "sh", "-c", script)
    record = runtime_state(container_id)
    assert record is not None and record["pid_start"] > 0, "the container was not made by mooring's runtime"
    assert json.loads(docker("inspect", "--format", "{{json .HostConfig.Runtime}}", name).stdout) == "mooring"

    assert docker("exec", name, "sh", "-c", "exit 7").returncode == 7
    shown = docker("exec", "-u", "65534", "-e", "EXTRA=1", name, "sh", "-c", "id -u; echo $GREETING $EXTRA")
    assert shown.returncode == 0 and shown.stdout == "65534\nhello 1\n", shown.stderr
    terminal = docker("exec", "-t", name, "tty")
    assert terminal.returncode == 0 and terminal.stdout.strip().startswith("/dev/pts/"), terminal.stderr
    missing = docker("exec", name, "/no/such/program")
    assert missing.returncode != 0
    top = docker("top", name)
    assert top.returncode == 0 and str(record["pid"]) in top.stdout.split(), top.stdout

    # docker update: containerd's shim sends the new linux.resources to `update --resources -` on stdin.
    updated = docker("update", "--memory", "96m", "--memory-swap", "96m", "--pids-limit", "40", name)
    assert updated.returncode == 0, updated.stderr
    limits = docker("exec", name, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/pids/pids.max")
    assert limits.stdout.split() == [str(96 << 20), "40"], limits.stdout + limits.stderr

    assert docker("pause", name).returncode == 0
    assert json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)["Paused"] is True
    freezer = f"/sys/fs/cgroup/freezer/docker/{container_id}/freezer.state"
    assert Path(freezer).read_text().strip() == "FROZEN"
    assert docker("unpause", name).returncode == 0
    assert Path(freezer).read_text().strip() == "THAWED"

    began = time.monotonic()
    stopped = docker("stop", "-t", "20", name)
    assert stopped.returncode == 0 and time.monotonic() - began < 15, "TERM did not reach the process"
    assert json.loads(docker("inspect", "--format", "{{json .State.ExitCode}}", name).stdout) == 0
    logs = docker("logs", name)
    assert logs.stdout == "ready\ngot-term\n", logs.stdout + logs.stderr
    assert runtime_state(container_id) is None, "the stopped container's state was not deleted"
    assert docker("start", name).returncode == 0, "a stopped container starts again"
    assert runtime_state(container_id) is not None


def test_a_published_port_answers_and_rm_f_leaves_nothing(started):
    name, container_id = started("-p", "127.0.0.1::8000", IMAGE, "python3", "-m", "http.server", "8000")
    port = docker("port", name, "8000/tcp").stdout.strip().rsplit(":", 1)[1]
    deadline, answer = time.monotonic() + 20, None
    while answer is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                answer = response.status
        except OSError:
            time.sleep(0.2)
    assert answer == 200
    init = runtime_state(container_id)["pid"]
    removed = docker("rm", "-f", name)
    assert removed.returncode == 0, removed.stderr
    assert not os.path.exists(f"/proc/{init}") or Path(f"/proc/{init}/stat").read_text().split()[2] == "Z"
    assert runtime_state(container_id) is None and not os.path.exists(cgroup_of(container_id))


def test_a_refusal_reaches_docker_run_and_leaves_nothing(lab_registry):
    """A config the runtime refuses (a cgroup parent in systemd's slice form, which needs the systemd driver this
    runtime does not offer) fails docker run with the runtime's message naming the field; the container the
    engine made has neither state nor cgroup of the runtime left."""
    name = "oci-engine-" + uuid.uuid4().hex[:8]
    refused = docker("run", "--name", name, "--runtime", "mooring", "--cgroup-parent", "bad:slice:form", IMAGE, "true")
    try:
        assert refused.returncode != 0 and "linux.cgroupsPath" in refused.stderr, refused.stderr
        container_id = docker("inspect", "--format", "{{.Id}}", name).stdout.strip()
        assert container_id and runtime_state(container_id) is None
        assert not os.path.exists(os.path.join(SHIM_ROOT, container_id))
        assert not os.path.exists("/sys/fs/cgroup/memory/bad:slice:form")
    finally:
        docker("rm", "-f", name)


@pytest.mark.parametrize("node", sorted(NODES))
def test_each_lab_host_serves_nginx_through_mooring(lab, node):
    """On each lab host (its own dockerd under systemd): the nginx service image from harbor.lab, as it is (its
    user www-data, its command), through `--runtime mooring`: its published port answers from this machine, the
    engine's health check (an exec through the runtime) turns it healthy, docker logs has the request, and rm -f
    leaves nothing in the shim's state root or the cgroups."""
    container = f"mooring-lab-{node}"

    def on_node(command):
        return run(["docker", "exec", container, "sh", "-c", command], timeout=300)

    name = "oci-nginx"
    on_node(f"docker rm -f {name}")
    started_here = on_node(f"docker run -d --name {name} --runtime mooring -p 18089:80 {NGINX}")
    assert started_here.returncode == 0, started_here.stderr
    container_id = started_here.stdout.strip()
    try:
        record = on_node(f"cat {SHIM_ROOT}/{container_id}/state.json")
        assert record.returncode == 0 and "pid_start" in json.loads(record.stdout), "not mooring's container"
        deadline, body = time.monotonic() + 30, None
        while body is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{NODES[node]}:18089/", timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                time.sleep(0.3)
        assert body is not None and "mooring nginx" in body
        assert "GET / HTTP/1.1" in on_node(f"docker logs {name} 2>&1").stdout
        health, deadline = None, time.monotonic() + 60
        while health != "healthy" and time.monotonic() < deadline:
            time.sleep(1)
            health = on_node(f"docker inspect --format '{{{{.State.Health.Status}}}}' {name}").stdout.strip()
        assert health == "healthy"
        user = on_node(f"docker exec {name} id -un")
        assert user.returncode == 0 and user.stdout == "www-data\n", user.stderr
    finally:
        removed = on_node(f"docker rm -f {name}")
    assert removed.returncode == 0, removed.stderr
    assert on_node(f"test -e {SHIM_ROOT}/{container_id}").returncode != 0
    assert on_node(f"test -e /sys/fs/cgroup/memory/docker/{container_id}").returncode != 0
