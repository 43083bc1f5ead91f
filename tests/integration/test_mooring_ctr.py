"""bin/mooring-ctr, the runtime's command line: the commands a docker user would type, run as processes, against
the lab's registry (harbor.lab, TLS and a password) and this kernel. Each container is checked for residue."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import LAB_DIR, REPO_DIR, free_port, run, runtime_residue

PROBE = "harbor.lab/library/debian-python:bookworm"
BRIDGE, SUBNET, GATEWAY = "mooringt2", "10.92.0.0/24", "10.92.0.1"


@pytest.fixture(scope="module")
def ctr(lab_registry, tmp_path_factory):
    """mooring-ctr with a store, state directory and bridge of the test's own, and the probe image pulled."""
    root = tmp_path_factory.mktemp("ctr")
    base = [
        sys.executable, str(REPO_DIR / "bin" / "mooring-ctr"), "--root", str(root / "store"),
        "--run-dir", str(root / "run"), "--bridge", BRIDGE, "--subnet", SUBNET,
    ]  # fmt: skip

    def command(*argv, stdin=None, timeout=120):
        return subprocess.run([*base, *argv], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)

    command.base, command.run_dir = base, str(root / "run")
    password = (LAB_DIR / "registry-password").read_text().strip()
    pulled = command(
        "pull", "--username", "mooring", "--password-stdin", "--ca-cert", str(LAB_DIR / "ca" / "ca.crt"), PROBE,
        stdin=password + "\n",
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    command.digest = pulled.stdout.strip()
    yield command
    run(["ip", "link", "delete", BRIDGE])
    run(["iptables", "-w", "-t", "nat", "-F", "MOORING"])


@pytest.fixture
def name(ctr):
    chosen = "ctr" + uuid.uuid4().hex[:8]
    yield chosen
    ctr("rm", "-f", chosen)
    assert runtime_residue(chosen, ctr.run_dir) == []


def test_pull_prints_the_digest_the_registry_serves_and_images_lists_it(ctr):
    local = json.loads(run(["docker", "image", "inspect", PROBE]).stdout)[0]
    assert f"harbor.lab/library/debian-python@{ctr.digest}" in local["RepoDigests"]
    listed = ctr("images")
    assert listed.returncode == 0, listed.stderr
    assert PROBE in listed.stdout and ctr.digest[7:19] in listed.stdout
    again = ctr("pull", "--username", "mooring", "--password-stdin", "--ca-cert", str(LAB_DIR / "ca" / "ca.crt"),
                PROBE, stdin=(LAB_DIR / "registry-password").read_text())  # fmt: skip
    assert again.stdout.strip() == ctr.digest


def test_a_wrong_password_is_refused_without_printing_it(ctr):
    wrong = "wrong-" + uuid.uuid4().hex
    failed = ctr("pull", "--username", "mooring", "--password-stdin", "--ca-cert", str(LAB_DIR / "ca" / "ca.crt"),
                 PROBE, stdin=wrong + "\n")  # fmt: skip
    assert failed.returncode != 0
    assert "rejected the credentials of user mooring" in failed.stderr, failed.stderr
    assert wrong not in failed.stderr + failed.stdout


def test_run_rm_gives_the_output_and_the_exit_code_and_leaves_nothing(ctr, name):
    ran = ctr("run", "--rm", "--name", name, "-e", "GREETING=hello", PROBE,
              "sh", "-c", 'echo "$GREETING from $(hostname), pid $$"; exit 3')  # fmt: skip
    assert ran.returncode == 3, ran.stderr
    assert ran.stdout == f"hello from {name}, pid 1\n"
    assert runtime_residue(name, ctr.run_dir) == []
    assert name not in ctr("ps", "-a").stdout


def test_an_attached_run_streams_its_output_and_passes_sigterm_to_pid_1(ctr, name):
    script = 'trap "echo got TERM; exit 7" TERM; echo ready; while :; do sleep 0.1; done'
    process = subprocess.Popen(
        [*ctr.base, "run", "--rm", "--name", name, PROBE, "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Only a streamed line can arrive while the container still runs: it never ends by itself.
        assert process.stdout.readline() == "ready\n"
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 7, err
    assert out == "got TERM\n"
    assert runtime_residue(name, ctr.run_dir) == []


def test_detached_ps_exec_logs_published_port_stop_and_rm(ctr, name):
    port = free_port()
    started = ctr("run", "-d", "--name", name, "-p", f"{port}:8000", "-m", "128m", PROBE,
                  "python3", "-u", "-m", "http.server", "8000", "--directory", "/etc")  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == name
    listed = [line.split() for line in ctr("ps").stdout.splitlines() if line.startswith(name + " ")]
    assert len(listed) == 1 and listed[0][1] == "running", listed
    pid, address = int(listed[0][2]), listed[0][3]
    assert address.startswith("10.92.0.")
    assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    # The container is the OCI runtime's: its own command line sees it under the run directory's state root.
    oci_root = os.path.join(ctr.run_dir, "oci")
    state = subprocess.run(
        [*ctr.base[:2], "--root", oci_root, "state", name], capture_output=True, text=True, check=False
    )
    assert state.returncode == 0, state.stderr
    state = json.loads(state.stdout)
    assert (state["status"], state["pid"], state["annotations"]) == ("running", pid, {"org.mooring.image": PROBE})
    assert json.loads(Path(state["bundle"], "config.json").read_text())["root"]["path"] == f"{state['bundle']}/merged"

    inside = ctr("exec", name, "cat", "/etc/hostname")
    assert (inside.returncode, inside.stdout) == (0, name + "\n"), inside.stderr
    deadline = time.monotonic() + 20
    answer = None
    while answer is None:
        try:
            with urllib.request.urlopen(f"http://{GATEWAY}:{port}/hostname", timeout=2) as response:
                answer = response.read().decode()
        except OSError:
            assert time.monotonic() < deadline, "the published port never answered"
            time.sleep(0.2)
    assert answer == name + "\n"
    assert "GET /hostname" in ctr("logs", name).stdout

    refused = ctr("rm", name)
    assert refused.returncode != 0 and "stop it first" in refused.stderr
    stopped = ctr("stop", "-t", "5", name)
    assert stopped.returncode == 0, stopped.stderr
    assert [line.split()[1] for line in ctr("ps", "-a").stdout.splitlines() if line.startswith(name + " ")] == [
        "exited"
    ]
    assert name not in ctr("ps").stdout
    assert ctr("rm", name).returncode == 0
    assert runtime_residue(name, ctr.run_dir) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "../x"], "name"),
        (["-m", "lots"], "memory"),
        (["-v", "/no/such/dir:/data"], "/no/such/dir"),
    ],
)
def test_bad_input_fails_with_a_message_and_leaves_nothing(ctr, argv, message):
    failed = ctr("run", "--rm", *argv, PROBE, "true")
    assert failed.returncode != 0
    assert message in failed.stderr, failed.stderr
    assert ctr("ps", "-a").stdout.splitlines()[1:] == []
    for entry in os.listdir(os.path.join(ctr.run_dir, "containers")):
        pytest.fail(f"state left behind: {entry}")


def test_an_image_that_is_not_in_the_store_is_named(ctr):
    failed = ctr("run", "--rm", "harbor.lab/library/nothing-here:1", "true")
    assert failed.returncode != 0
    assert "harbor.lab/library/nothing-here:1 is not in the store" in failed.stderr


def test_rmi_removes_the_image_and_the_layers_no_other_image_uses(ctr, tmp_path):
    archive = tmp_path / "probe.tar"
    assert run(["docker", "save", "-o", str(archive), PROBE]).returncode == 0
    loaded = ctr("load", "-i", str(archive), "--name", "offline/probe:1")
    assert loaded.returncode == 0 and "Loaded image: offline/probe:1" in loaded.stdout, loaded.stderr
    store = os.path.join(ctr.base[ctr.base.index("--root") + 1])
    shared = sorted(os.listdir(os.path.join(store, "layers")))
    # An image with a layer of its own: rmi takes that layer, and keeps the ones the pulled image still uses.
    own = tmp_path / "own"
    own.mkdir()
    (own / "only-here").write_text(uuid.uuid4().hex)
    with tarfile.open(tmp_path / "own.tar", "w") as output:
        output.add(own / "only-here", arcname="only-here")
    name = f"mooring-test/own-layer:{uuid.uuid4().hex[:8]}"
    assert run(["docker", "import", str(tmp_path / "own.tar"), name]).returncode == 0
    assert run(["docker", "save", "-o", str(tmp_path / "own-image.tar"), name]).returncode == 0
    run(["docker", "rmi", name])
    assert ctr("load", "-i", str(tmp_path / "own-image.tar"), "--name", "offline/own:1").returncode == 0
    with_own = sorted(os.listdir(os.path.join(store, "layers")))
    assert len(with_own) == len(shared) + 1
    assert ctr("rmi", "offline/own:1").returncode == 0
    assert ctr("rmi", "offline/probe:1").returncode == 0
    assert sorted(os.listdir(os.path.join(store, "layers"))) == shared  # still used by the pulled image
    assert "offline/probe:1" not in ctr("images").stdout and "offline/own:1" not in ctr("images").stdout
    missing = ctr("rmi", "offline/probe:1")
    assert missing.returncode != 0 and "no such image: offline/probe:1" in missing.stderr
