"""Helpers for the docker_host scenario: run the role again against the Molecule instance, and snapshot
what the role could touch, so that a test can prove that a refused run left the host as it was."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner

SCENARIO_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = SCENARIO_DIR.parents[1]
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
HOST_NAME = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("all")[0]


def run_converge(*extra_args):
    """Run the scenario's converge playbook with extra ansible-playbook arguments; return the process."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_DIR / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    command = ["ansible-playbook", "-i", INVENTORY, str(SCENARIO_DIR / "converge.yml"), *extra_args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_DIR, timeout=900, check=False)


def extra_vars(**variables):
    return ["-e", json.dumps(variables)]


@pytest.fixture
def snapshot(host):
    """What the role manages on the host, read in one go."""

    def take():
        return {
            "daemon.json": host.file("/etc/docker/daemon.json").content_string,
            "hosts": host.file("/etc/hosts").content_string,
            "sysctl.d": host.file("/etc/sysctl.d/60-mooring-docker.conf").content_string,
            "dockerd pid": host.check_output("systemctl show --property MainPID --value docker"),
            "docker groups": sorted(host.user("ops").groups),
            "forward policy": host.iptables.rules("filter", "FORWARD")[0],
        }

    return take
