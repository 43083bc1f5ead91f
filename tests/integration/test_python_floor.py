"""mooring's modules on the Pythons that managed hosts really have: Debian 11's 3.9 (the floor the collection
claims, as EL9's /usr/bin/python3) and Debian 13's 3.13, each with that release's own requests, Docker SDK and
loader (tests/pythons.sh). Ansible runs the modules under them, as ansible_python_interpreter does on a host:
the runtime pulls over TLS from harbor.lab and runs, limits, stops and removes a container; docker_daemon_config
merges a daemon.json; harbor_image pushes with that release's Docker SDK. Each is idempotent on that Python."""

import json
import pathlib
import subprocess
import sys
import uuid

import pytest

from conftest import LAB_DIR, REPO_DIR, container, residue, rt, run, run_module, wait_for

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import cgroups

PYTHONS = {"3.9": "bullseye", "3.13": "trixie"}


@pytest.fixture(scope="module")
def pythons(lab):
    made = run(["tests/pythons.sh"], timeout=900)
    assert made.returncode == 0, made.stdout + made.stderr
    return {version: str(LAB_DIR / "pythons" / "bin" / f"python{version}") for version in PYTHONS}


def interpreter(path):
    return "-e", f"ansible_python_interpreter={path}"


@pytest.mark.parametrize("version", sorted(PYTHONS))
def test_the_interpreter_is_the_release_s_own(pythons, version):
    answer = subprocess.run(
        [pythons[version], "-c", "import sys, docker, requests; print(sys.version.split()[0], docker.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert answer.stdout.startswith(version + ".")


@pytest.mark.parametrize("version", sorted(PYTHONS))
def test_the_runtime_modules_pull_run_limit_stop_and_remove_on_that_python(pythons, runtime, version):
    python = pythons[version]
    pulled_args = {
        "root": runtime["root"],
        "name": "harbor.lab/library/debian:bookworm",
        "username": "mooring",
        "password": (LAB_DIR / "registry-password").read_text().strip(),
        "ca_cert": str(LAB_DIR / "ca" / "ca.crt"),
    }
    pulled = run_module("mooring.ops.ns_image", pulled_args, *interpreter(python))
    assert pulled.get("failed") is not True, pulled["_output"]
    assert run_module("mooring.ops.ns_image", pulled_args, *interpreter(python))["changed"] is False

    name = f"py{version.replace('.', '')}-{uuid.uuid4().hex[:6]}"
    options = {"image": "debian", "command": "echo $((6*7)); exec sleep 600", "memory": "64m", "network": "none",
               "stop_timeout": 1}  # fmt: skip
    try:
        started = container(runtime, name, python=python, **options)
        assert started["changed"] is True, started["_output"]
        again = container(runtime, name, python=python, **options)
        assert again["changed"] is False, again["_output"]
        wait_for(lambda: rt(runtime).logs(name).strip() == b"42", 20, "the container's output")
        group = cgroups.detect(name)
        if isinstance(group, cgroups.CgroupV1):
            limit = pathlib.Path(group.paths["memory"], "memory.limit_in_bytes")
        else:
            limit = pathlib.Path(group.path, "memory.max")
        assert limit.read_text().strip() == str(64 << 20)
        stopped = container(runtime, name, python=python, **{**options, "state": "stopped"})
        assert stopped["changed"] is True, stopped["_output"]
    finally:
        removed = container(runtime, name, python=python, state="absent", stop_timeout=1)
        assert removed.get("failed") is not True, removed["_output"]
    assert residue(runtime, name) == []


@pytest.mark.parametrize("version", sorted(PYTHONS))
def test_docker_daemon_config_merges_and_is_idempotent_on_that_python(pythons, tmp_path, version):
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"log-driver": "json-file"}))
    args = {"path": str(path), "config": {"registry-mirrors": ["https://mirror.example.com"]}, "validate": False}
    first = run_module("mooring.ops.docker_daemon_config", args, *interpreter(pythons[version]))
    assert first["changed"] is True, first["_output"]
    assert json.loads(path.read_text()) == {
        "log-driver": "json-file",
        "registry-mirrors": ["https://mirror.example.com"],
    }
    second = run_module("mooring.ops.docker_daemon_config", args, *interpreter(pythons[version]))
    assert second["changed"] is False, second["_output"]


@pytest.mark.parametrize("version", sorted(PYTHONS))
def test_harbor_image_pushes_with_that_release_s_docker_sdk(pythons, version):
    repository = f"py{version.replace('.', '')}-{uuid.uuid4().hex[:8]}"
    args = {
        "source": "mooring/debian:bookworm",
        "registry": "harbor.lab",
        "project": "mooring-test",
        "repository": repository,
        "username": "mooring",
        "password": (LAB_DIR / "registry-password").read_text().strip(),
        "ca_cert": str(LAB_DIR / "ca" / "ca.crt"),
    }
    try:
        first = run_module("mooring.ops.harbor_image", args, *interpreter(pythons[version]))
        assert first["changed"] is True, first["_output"]
        second = run_module("mooring.ops.harbor_image", args, *interpreter(pythons[version]))
        assert second["changed"] is False, second["_output"]
        assert second["digest"] == first["digest"]
    finally:
        run(["docker", "image", "rm", f"harbor.lab/mooring-test/{repository}:bookworm"])


def test_the_floor_is_what_the_modules_documentation_says():
    for module in (REPO_DIR / "plugins" / "modules").glob("*.py"):
        text = module.read_text()
        assert "Python 3.9 or later on the host that runs the module" in text, module.name
        assert f'require_python(module, "mooring.ops.{module.stem}")' in text, module.name
