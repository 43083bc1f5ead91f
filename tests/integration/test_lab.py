"""The embedded lab end to end: `make lab` on this machine (the session fixture `lab`), then what it promises;
the fixture runs `make lab-down` at the end of the session and checks that nothing is left."""

import json
import re
import socket
import ssl

import pytest

from conftest import REPO_DIR, run

NODES = ["node1", "node2", "node3"]
REGISTRY = "harbor.lab"
REGISTRY_ADDRESS = "172.30.0.10"
PROBE_IMAGE = f"{REGISTRY}/library/debian:bookworm"
# What each lab host runs (inventory/lab: lab_node_suite): Debian's version file and python3.
RELEASES = {"node1": ("11.", "3.9"), "node2": ("12.", "3.11"), "node3": ("13.", "3.13")}


def in_node(node, command):
    return run(["docker", "exec", f"mooring-lab-{node}", "sh", "-c", command], timeout=300)


def recap(output):
    """Per-host counters of the last PLAY RECAP in an ansible-playbook output."""
    counters = {}
    for host, fields in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, flags=re.MULTILINE):
        counters[host] = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", fields)}
    return counters


def test_make_lab_prints_the_summary(lab):
    """make lab's last step; where the lab was made before pytest (make test's lab stream), that step again."""
    said = (
        lab.stdout
        if lab is not None
        else run(["ansible-playbook", "-i", "inventory/lab", "playbooks/lab_summary.yml"]).stdout
    )
    for node in NODES:
        assert f"{node}      172.30.0.1" in said
    assert f"registry   https://{REGISTRY}" in said


def test_a_second_site_run_changes_nothing_on_this_machine(lab):
    """This machine's plays (image_factory). The lab hosts' second run is made from the execution environment
    (test_ee.py): the same site.yml, the same collection, reaching them over ssh as AWX would."""
    process = run(["ansible-playbook", "-i", "inventory/lab", "site.yml", "--limit", "lab_engine"])
    assert process.returncode == 0, process.stdout[-5000:]
    counters = recap(process.stdout)
    assert sorted(counters) == ["localhost"]
    assert all(host["changed"] == 0 and host["failed"] == 0 for host in counters.values()), counters


def test_a_second_lab_run_changes_nothing(lab):
    process = run(["ansible-playbook", "-i", "inventory/lab", "playbooks/lab.yml"])
    assert process.returncode == 0, process.stdout[-5000:]
    assert recap(process.stdout)["localhost"]["changed"] == 0


@pytest.mark.parametrize("node", NODES)
def test_each_node_runs_its_own_engine_under_systemd(lab, node):
    assert in_node(node, "systemctl is-active docker").stdout.strip() == "active"
    info = json.loads(in_node(node, "docker info --format '{{json .}}'").stdout)
    assert info["Driver"] == "overlay2"
    assert in_node(node, "iptables -S FORWARD | head -n 1").stdout.strip() == "-P FORWARD ACCEPT"


@pytest.mark.parametrize("node", NODES)
def test_each_node_runs_the_debian_release_and_python_the_inventory_names(lab, node):
    version, python = RELEASES[node]
    assert in_node(node, "cat /etc/debian_version").stdout.startswith(version)
    found = in_node(node, "python3 -c 'import sys; print(*sys.version_info[:2], sep=\".\")'").stdout.strip()
    assert found == python


def test_debian_13s_dockerd_refuses_a_bad_daemon_option_before_the_file_or_the_engine_is_touched(lab):
    """docker.io 26 has `dockerd --validate`: the role's daemon.json merge is checked by the engine itself, so a
    key dockerd does not know never reaches the file and docker is not restarted (20.10 on node1/2 can only
    try a restart and roll back, which Molecule's docker_host scenario tests)."""
    before = in_node("node3", "cat /etc/docker/daemon.json").stdout
    started = in_node("node3", "systemctl show --property=ExecMainStartTimestamp docker").stdout
    refused = run(
        [
            "ansible-playbook",
            "-i",
            "inventory/lab",
            "--limit",
            "node3",
            "-e",
            json.dumps({"docker_host_daemon_options": {"bogus-key": 1}}),
            "playbooks/docker_hosts.yml",
        ]
    )
    assert refused.returncode != 0
    assert "dockerd refused the merged configuration for /etc/docker/daemon.json" in refused.stdout
    assert "bogus-key" in refused.stdout
    assert in_node("node3", "cat /etc/docker/daemon.json").stdout == before
    assert in_node("node3", "ls /etc/docker/daemon.json.refused").returncode != 0
    assert in_node("node3", "systemctl show --property=ExecMainStartTimestamp docker").stdout == started
    assert in_node("node3", "systemctl is-active docker").stdout.strip() == "active"


@pytest.mark.parametrize("node", NODES)
def test_each_node_pulls_from_the_registry_with_its_login(lab, node):
    in_node(node, f"docker image rm -f {PROBE_IMAGE}")
    pulled = in_node(node, f"docker pull {PROBE_IMAGE}")
    assert pulled.returncode == 0, pulled.stderr
    ran = in_node(node, f"docker run --rm {PROBE_IMAGE} cat /etc/debian_version")
    assert ran.stdout.strip().startswith("12.")


@pytest.mark.parametrize("node", NODES)
def test_the_registry_refuses_a_pull_without_credentials(lab, node):
    anonymous = in_node(node, f"DOCKER_CONFIG=$(mktemp -d) docker pull {REGISTRY}/library/debian-python:bookworm")
    assert anonymous.returncode != 0
    assert "no basic auth credentials" in anonymous.stderr or "unauthorized" in anonymous.stderr


def test_the_registry_serves_tls_signed_by_the_lab_ca_for_its_name(lab):
    trusted = ssl.create_default_context(cafile=str(REPO_DIR / ".lab" / "ca" / "ca.crt"))
    with (
        socket.create_connection((REGISTRY_ADDRESS, 443), timeout=10) as connection,
        trusted.wrap_socket(connection, server_hostname=REGISTRY) as tls,
    ):
        assert tls.version().startswith("TLS")
    untrusted = ssl.create_default_context()
    with (
        socket.create_connection((REGISTRY_ADDRESS, 443), timeout=10) as connection,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        untrusted.wrap_socket(connection, server_hostname=REGISTRY)


def test_the_registry_password_file_is_private(lab):
    mode = (REPO_DIR / ".lab" / "registry-password").stat().st_mode & 0o777
    assert mode == 0o600
