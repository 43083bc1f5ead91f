"""Bad input to docker_host fails early, names the parameter, and leaves the host as it was.

Each run also asks for a change that a successful run would make (a new daemon option, a new hosts entry),
so a role that applied anything before failing would show up in the snapshot."""

import base64

import testinfra.utils.ansible_runner

from conftest import INVENTORY, extra_vars, run_converge

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("all")

TEMPTING_CHANGE = {
    "docker_host_daemon_options": {"debug": True},
    "docker_host_hosts_entries": {"harbor.molecule.test": "192.0.2.10", "extra.molecule.test": "192.0.2.11"},
}


def _output(process):
    return process.stdout + process.stderr


def _said(process):
    """The output with the YAML callback's line wrapping and quote doubling undone."""
    return " ".join(_output(process).replace("''", "'").split())


def test_broken_daemon_json_is_refused_and_left_untouched(host, snapshot):
    original = host.file("/etc/docker/daemon.json").content_string
    broken = '{"registry-mirrors": ["https://mirror.molecule.test"],'
    host.run_expect([0], f"printf '%s' '{broken}' > /etc/docker/daemon.json")
    try:
        before = snapshot()
        process = run_converge()
        assert process.returncode != 0
        assert "/etc/docker/daemon.json is not valid JSON" in _output(process)
        assert snapshot() == before
        assert host.file("/etc/docker/daemon.json").content_string == broken
        assert host.run("docker info").rc == 0
    finally:
        encoded = base64.b64encode(original.encode()).decode()
        host.run_expect([0], f"echo {encoded} | base64 -d > /etc/docker/daemon.json")


def test_a_daemon_option_dockerd_refuses_is_rolled_back_and_docker_keeps_running(host):
    daemon_json = "/etc/docker/daemon.json"
    before = host.file(daemon_json).content_string
    try:
        process = run_converge(*extra_vars(docker_host_daemon_options={"no-such-option": True}))
        assert process.returncode != 0
        assert f"docker did not start with the new {daemon_json}" in _output(process)
        assert host.file(daemon_json).content_string == before
        assert host.service("docker").is_running
        assert host.run("docker info").rc == 0
        assert "no-such-option" in host.file(f"{daemon_json}.refused").content_string
    finally:
        host.run(f"rm -f {daemon_json}.refused")


def test_non_list_registry_mirrors_fail_argument_validation(host, snapshot):
    before = snapshot()
    process = run_converge(
        *extra_vars(docker_host_registry_mirrors={"url": "https://mirror.molecule.test"}, **TEMPTING_CHANGE)
    )
    assert process.returncode != 0
    assert "Validating arguments against arg spec" in _output(process)
    # The specific message: any argument-spec failure prints every option name.
    assert "argument 'docker_host_registry_mirrors' is of type dict and we were unable to convert to list" in (
        _said(process)
    )
    assert snapshot() == before


def test_mirror_that_is_not_an_http_url_fails_before_any_change(host, snapshot):
    before = snapshot()
    process = run_converge(*extra_vars(docker_host_registry_mirrors=["mirror.molecule.test"], **TEMPTING_CHANGE))
    assert process.returncode != 0
    assert "docker_host_registry_mirrors: expected http(s) URLs" in _output(process)
    assert "mirror.molecule.test" in _output(process)
    assert snapshot() == before


def test_insecure_registry_with_a_scheme_fails_before_any_change(host, snapshot):
    before = snapshot()
    process = run_converge(
        *extra_vars(docker_host_insecure_registries=["https://registry.molecule.test"], **TEMPTING_CHANGE)
    )
    assert process.returncode != 0
    assert "docker_host_insecure_registries: expected host[:port]" in _output(process)
    assert snapshot() == before


def test_unknown_package_source_fails_argument_validation(host, snapshot):
    before = snapshot()
    process = run_converge(*extra_vars(docker_host_package_source="snap", **TEMPTING_CHANGE))
    assert process.returncode != 0
    assert "value of docker_host_package_source must be one of: docker-ce, distro, got: snap" in _said(process)
    assert snapshot() == before


def test_check_mode_on_a_configured_host_reports_no_change(host, snapshot):
    before = snapshot()
    process = run_converge("--check", "--diff")
    assert process.returncode == 0, _output(process)
    assert "changed=0" in process.stdout
    assert snapshot() == before


def test_check_mode_with_new_settings_reports_the_change_and_makes_none(host, snapshot):
    before = snapshot()
    process = run_converge("--check", "--diff", *extra_vars(**TEMPTING_CHANGE))
    assert process.returncode == 0, _output(process)
    assert "changed=0" not in process.stdout
    assert '+  "debug": true' in process.stdout
    assert snapshot() == before


def test_a_pin_the_repository_does_not_have_fails_before_any_change_listing_what_it_has(host, snapshot):
    before = snapshot()
    process = run_converge(*extra_vars(docker_host_version="99.1", **TEMPTING_CHANGE))
    assert process.returncode != 0
    assert "docker_host_version: 99.1 is not in the repository for docker.io 99.1 (the repository has: 20.10." in (
        _output(process)
    )
    assert snapshot() == before
    assert host.package("docker.io").version.startswith("20.10.")


def test_a_malformed_pin_fails_naming_the_variable(host, snapshot):
    before = snapshot()
    process = run_converge(*extra_vars(docker_host_version="latest", **TEMPTING_CHANGE))
    assert process.returncode != 0
    assert (
        "docker_host_version: expected a version such as 27.3.1, 27.3 or 20.10 (digits first, no epoch), got 'latest'"
        in (_output(process))
    )
    assert snapshot() == before
