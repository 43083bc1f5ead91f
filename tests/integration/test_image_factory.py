"""The image_factory images built by `make lab` (the session fixture): each starts, passes its own
HEALTHCHECK, runs as its non-root user and does its job; and harbor.lab holds each one for the lab hosts."""

import json
import sys
import time
import urllib.parse
import uuid

import pytest
import requests

from conftest import LAB_DIR, REPO_DIR, changes, failures, run

HEALTH_TIMEOUT = 180
IMAGES = {
    "nginx": {"user": "www-data", "env": {}},
    "tomcat": {"user": "tomcat", "env": {}},
    "mariadb": {
        "user": "mysql",
        "env": {
            "MARIADB_ROOT_PASSWORD": "root-" + uuid.uuid4().hex,
            "MARIADB_DATABASE": "app",
            "MARIADB_USER": "app",
            "MARIADB_PASSWORD": "app-" + uuid.uuid4().hex,
        },
    },
    "redis": {"user": "redis", "env": {}},
    "rabbitmq": {"user": "rabbitmq", "env": {"RABBITMQ_DEFAULT_USER": "ops", "RABBITMQ_DEFAULT_PASS": "ops-secret"}},
}


def image_tag(name):
    tags = run(["docker", "images", f"mooring/{name}", "--format", "{{.Tag}}"]).stdout.split()
    assert tags, f"mooring/{name} was not built"
    return tags[0]


def inspect(container):
    return json.loads(run(["docker", "inspect", container]).stdout)[0]


def in_container(container, *command, env=None):
    env_args = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
    return run(["docker", "exec", *env_args, container, *command], timeout=120)


@pytest.fixture(scope="module", params=sorted(IMAGES))
def service(request, lab):
    name = request.param
    container = f"mooring-test-{name}-{uuid.uuid4().hex[:6]}"
    env_args = [arg for key, value in IMAGES[name]["env"].items() for arg in ("-e", f"{key}={value}")]
    try:
        started = run(["docker", "run", "-d", "--name", container, *env_args, f"mooring/{name}:{image_tag(name)}"])
        # A container that was created but could not start is removed too (finally).
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while (health := inspect(container)["State"].get("Health", {}).get("Status")) != "healthy":
            assert health in ("starting", None), run(["docker", "logs", "--tail", "40", container]).stderr
            assert time.monotonic() < deadline, f"{name} not healthy after {HEALTH_TIMEOUT}s"
            time.sleep(2)
        yield name, container
    finally:
        run(["docker", "rm", "-f", "-v", container])


def test_each_image_passes_its_healthcheck_as_its_own_user(service):
    name, container = service
    assert inspect(container)["State"]["Health"]["Status"] == "healthy"
    assert in_container(container, "id", "-un").stdout.strip() == IMAGES[name]["user"]


def test_each_image_does_its_job(service):
    name, container = service
    if name == "nginx":
        assert "mooring nginx" in in_container(container, "curl", "-fsS", "http://127.0.0.1/").stdout
    elif name == "tomcat":
        assert in_container(container, "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/").returncode == 0
    elif name == "mariadb":
        env = IMAGES["mariadb"]["env"]
        query = in_container(
            container,
            "mariadb",
            "-h",
            "127.0.0.1",
            "-u",
            "app",
            "app",
            "-N",
            "-e",
            "SELECT DATABASE()",
            env={"MYSQL_PWD": env["MARIADB_PASSWORD"]},
        )
        assert query.stdout.strip() == "app", query.stderr
        processes = in_container(container, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
        assert env["MARIADB_ROOT_PASSWORD"] not in processes
    elif name == "redis":
        assert in_container(container, "redis-cli", "ping").stdout.strip() == "PONG"
    elif name == "rabbitmq":
        address = inspect(container)["NetworkSettings"]["IPAddress"]
        overview = requests.get(f"http://{address}:15672/api/overview", auth=("ops", "ops-secret"), timeout=30)
        assert overview.status_code == 200
        assert overview.json()["rabbitmq_version"].startswith("3.")


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_the_registry_holds_each_image_for_the_lab_hosts(lab, name):
    reference = f"harbor.lab/mooring/{name}:{image_tag(name)}"
    pulled = run(["docker", "exec", "mooring-lab-node2", "docker", "pull", "-q", reference], timeout=600)
    assert pulled.returncode == 0, pulled.stderr


def test_mirror_mode_copies_an_upstream_image_into_the_registry(lab, tmp_path):
    """Mirror mode with harbor.lab's own library/debian standing in for an upstream registry (none is reachable
    here): the role pulls it, then pushes it to another project; a second run changes nothing."""
    playbook = tmp_path / "mirror.yml"
    playbook.write_text("- hosts: image_factory\n  gather_facts: false\n  roles: [mooring.ops.image_factory]\n")
    variables = tmp_path / "vars.json"
    variables.write_text(
        json.dumps(
            {
                "image_factory_images": [],
                "image_factory_project": "mooring-mirror",
                "image_factory_mirror_images": [
                    {"source": "harbor.lab/library/debian:bookworm", "repository": "debian", "tag": "bookworm"}
                ],
            }
        )
    )
    command = ["ansible-playbook", "-i", "inventory/lab", str(playbook), "-e", f"@{variables}"]
    try:
        first = run(command)
        assert first.returncode == 0, first.stdout[-3000:]
        password = (LAB_DIR / "registry-password").read_text().strip()
        answer = requests.get(
            "https://harbor.lab/v2/mooring-mirror/debian/manifests/bookworm",
            auth=("mooring", password),
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            verify=str(LAB_DIR / "ca" / "ca.crt"),
            timeout=30,
        )
        assert answer.status_code == 200
        local = json.loads(run(["docker", "image", "inspect", "harbor.lab/library/debian:bookworm"]).stdout)[0]
        assert answer.json()["config"]["digest"] == local["Id"]
        second = run(command)
        assert second.returncode == 0, second.stdout[-3000:]
        assert "changed=0" in second.stdout[second.stdout.rfind("PLAY RECAP") :], second.stdout[-3000:]
    finally:
        run(["docker", "image", "rm", "harbor.lab/mooring-mirror/debian:bookworm"])


def test_the_builds_apt_follows_this_machine_or_the_override(lab, tmp_path):
    """The service images are built FROM a build base whose apt names the machine's own mirror (make lab); with
    image_factory_apt_mirror set, the build base names that instead, and apt-get update works against it."""
    machine = run([sys.executable, str(REPO_DIR / "tests" / "apt_mirror.py")]).stdout.strip()
    sources = "/etc/apt/sources.list.d/debian.sources"
    built = run(["docker", "run", "--rm", f"mooring/nginx:{image_tag('nginx')}", "cat", sources]).stdout
    assert f"URIs: {machine}\n" in built, built

    mirror = urllib.parse.urlsplit(machine)
    if mirror.scheme not in ("http", "https") or mirror.port:
        pytest.skip(f"this machine's mirror {machine} cannot be respelt with its default port")
    port = 80 if mirror.scheme == "http" else 443
    override = mirror._replace(netloc=f"{mirror.hostname}:{port}").geturl()  # the same server, spelt differently
    playbook = tmp_path / "apt-base.yml"
    playbook.write_text(
        "- hosts: image_factory\n  gather_facts: false\n  tasks:\n"
        "    - {ansible.builtin.include_role: {name: mooring.ops.image_factory, tasks_from: apt_base}}\n"
    )
    namespace = f"mooring-apt-{uuid.uuid4().hex[:6]}"
    settings = {"image_factory_apt_mirror": override, "image_factory_namespace": namespace}
    command = ["ansible-playbook", "-i", "inventory/lab", str(playbook), "-e", json.dumps(settings)]
    try:
        first = run(command)
        assert first.returncode == 0, failures(first)
        image = f"{namespace}/apt-base:bookworm"
        written = run(["docker", "run", "--rm", image, "cat", sources]).stdout
        assert f"URIs: {override}\n" in written and f"URIs: {override}-security\n" in written, written
        updated = run(["docker", "run", "--rm", image, "apt-get", "update"], timeout=600)
        assert updated.returncode == 0, updated.stdout[-2000:] + updated.stderr[-2000:]
        assert override in updated.stdout
        second = run(command)
        assert second.returncode == 0 and changes(second)["localhost"] == 0, failures(second)
    finally:
        run(["docker", "image", "rm", f"{namespace}/apt-base:bookworm"])
