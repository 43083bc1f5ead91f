"""A daemon.json key the role set is removed once the inventory stops setting it, with --diff showing it go;
a key the role never set stays. Runs after test_default, and leaves the host converged as it found it."""

import json

import testinfra.utils.ansible_runner

from conftest import INVENTORY, extra_vars, run_converge

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("all")


def test_an_option_taken_out_of_the_inventory_leaves_daemon_json(host):
    added = run_converge(*extra_vars(docker_host_daemon_options={"live-restore": True}))
    assert added.returncode == 0, added.stdout[-3000:]
    assert json.loads(host.file("/etc/docker/daemon.json").content_string)["live-restore"] is True
    assert "live-restore" in json.loads(host.file("/etc/docker/mooring-managed-keys.json").content_string)

    checked = run_converge("--check", "--diff")
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert '-  "live-restore": true,' in checked.stdout
    assert json.loads(host.file("/etc/docker/daemon.json").content_string)["live-restore"] is True

    removed = run_converge("--diff")
    assert removed.returncode == 0, removed.stdout[-3000:]
    assert '-  "live-restore": true,' in removed.stdout
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert "live-restore" not in config
    assert config["max-concurrent-downloads"] == 4 and config["labels"] == ["site=molecule"]
    assert host.run("docker info").rc == 0

    again = run_converge()
    assert again.returncode == 0
    assert "changed=0" in again.stdout[again.stdout.rfind("PLAY RECAP") :]
