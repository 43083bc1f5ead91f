"""What docker_host promises on a converged host."""

import json
import time

import testinfra.utils.ansible_runner

from conftest import INVENTORY

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("all")

MIRROR = "https://mirror.molecule.test"
INSECURE_REGISTRY = "registry.molecule.test:5000"
INSECURE_RANGE = "10.213.0.0/16"


def _wait_for_docker(host, seconds=60):
    deadline = time.monotonic() + seconds
    while host.run("docker info").rc != 0:
        assert time.monotonic() < deadline, "docker did not answer after the restart"
        time.sleep(1)


def test_daemon_json_holds_mirrors_insecure_registries_and_the_unmanaged_key(host):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["registry-mirrors"] == [MIRROR]
    assert config["insecure-registries"] == [INSECURE_REGISTRY, INSECURE_RANGE]
    assert config["max-concurrent-downloads"] == 4
    assert config["labels"] == ["site=molecule"]


def test_docker_info_shows_the_mirrors_and_insecure_registries(host):
    registry_config = json.loads(host.check_output("docker info --format '{{json .RegistryConfig}}'"))
    assert [mirror.rstrip("/") for mirror in registry_config["Mirrors"]] == [MIRROR]
    assert registry_config["IndexConfigs"][INSECURE_REGISTRY]["Secure"] is False
    assert INSECURE_RANGE in registry_config["InsecureRegistryCIDRs"]


def test_docker_is_enabled_and_running(host):
    docker = host.service("docker")
    assert docker.is_enabled
    assert docker.is_running


def test_forward_policy_is_accept_again_after_a_docker_restart(host):
    # Start from the state docker itself leaves behind, so that only the role's drop-in can bring ACCEPT back.
    host.run_expect([0], "iptables -P FORWARD DROP")
    host.run_expect([0], "systemctl restart docker")
    _wait_for_docker(host)
    assert host.iptables.rules("filter", "FORWARD")[0] == "-P FORWARD ACCEPT"
    assert host.sysctl("net.ipv4.ip_forward") == 1


def test_ip_forward_is_persisted_for_the_next_boot(host):
    host.run_expect([0], "sysctl -q -w net.ipv4.ip_forward=0")
    try:
        host.run_expect([0], "sysctl -q --system")
        assert host.sysctl("net.ipv4.ip_forward") == 1
    finally:
        host.run("sysctl -q -w net.ipv4.ip_forward=1")


def test_the_operator_is_in_the_docker_group(host):
    assert "docker" in host.user("ops").groups


def test_the_registry_name_resolves_through_etc_hosts(host):
    assert host.check_output("getent hosts harbor.molecule.test").split()[0] == "192.0.2.10"


def test_the_engine_started_once_with_its_configuration_already_in_place(host):
    assert host.file("/root/dockerd-starts-at-first-converge").content_string.strip() == "1"


def test_the_pinned_version_is_installed_and_the_conflicting_package_is_gone(host):
    assert host.package("docker.io").version.startswith("20.10.")
    assert not host.package("podman-docker").is_installed
    assert host.package("podman").is_installed  # only the conflicting shim goes


def test_the_record_of_managed_keys_lists_what_the_role_set(host):
    record = host.file("/etc/docker/mooring-managed-keys.json")
    assert record.mode == 0o600
    assert json.loads(record.content_string) == ["insecure-registries", "registry-mirrors"]
