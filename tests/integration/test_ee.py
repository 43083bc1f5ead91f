"""mooring's execution environment, as AWX/AAP runs it: `make ee` builds it here, offline, with ansible-builder
on this machine's engine (roles/lab_ee, ee/execution-environment.yml); then site.yml runs from inside the image
against the converged lab, as an AWX job would: the project (this checkout) mounted, the collection taken from
the image, the ssh key and the vault-like secrets (.lab) given to the EE's default user.

The lab hosts' share of "a second site.yml run changes nothing" is proved here, from the EE; test_lab's second
run covers this machine's share (image_factory), which an EE cannot reach."""

import json
import shutil

import pytest
import yaml

from conftest import LAB_DIR, REPO_DIR, changes, failures, run

GALAXY = yaml.safe_load((REPO_DIR / "galaxy.yml").read_text())
EE_IMAGE = f"mooring/ee:{GALAXY['version']}"
# ansible-builder's default user in the image (options.user), as AWX runs it.
EE_UID = 1000
NODES = ["node1", "node2", "node3"]
DEV_TOOLCHAIN = {"molecule", "pytest", "pytest-testinfra", "ruff", "ansible-lint", "yamllint", "ansible-builder"}


def ee_playbook(*arguments):
    return ["ansible-playbook", "-i", "inventory/lab", "playbooks/lab.yml", "--tags", "ee", *arguments]


@pytest.fixture(scope="module")
def ee(lab):
    """`make ee`'s playbook (the lab fixture brought up what it builds on); make test built the image already."""
    built = run(ee_playbook(), timeout=2400)
    assert built.returncode == 0, failures(built)
    return EE_IMAGE


def in_ee(ee, command):
    return run(["docker", "run", "--rm", ee, "sh", "-c", command], timeout=300)


def test_a_second_ee_build_changes_nothing(ee):
    again = run(ee_playbook(), timeout=1200)
    assert again.returncode == 0, failures(again)
    assert changes(again) == {"localhost": 0}, again.stdout[-3000:]


def test_the_ee_holds_the_collection_and_its_dependencies_from_the_tarballs(ee):
    listed = in_ee(ee, "ansible-galaxy collection list --format json")
    assert listed.returncode == 0, listed.stderr
    installed = {}
    for path, collections in json.loads(listed.stdout).items():
        for name, info in collections.items():
            installed[name] = (path, info["version"])
    assert installed["mooring.ops"] == ("/usr/share/ansible/collections/ansible_collections", GALAXY["version"])
    for dependency in GALAXY["dependencies"]:
        assert installed[dependency][0] == "/usr/share/ansible/collections/ansible_collections", dependency
    # The tarball, not this checkout: galaxy.yml's build_ignore applies, so the lab is not in the EE.
    lab_roles = in_ee(ee, "ls /usr/share/ansible/collections/ansible_collections/mooring/ops/roles")
    assert "docker_host" in lab_roles.stdout.split()
    assert not [role for role in lab_roles.stdout.split() if role.startswith("lab_")]


def test_the_ee_runs_the_projects_ansible_core_and_what_the_collection_needs_but_no_dev_toolchain(ee):
    venv_core = run(["ansible", "--version"]).stdout.splitlines()[0]
    assert in_ee(ee, "ansible --version").stdout.splitlines()[0] == venv_core
    listed = in_ee(ee, "python3 -m pip list --format json 2>/dev/null")
    packages = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    # meta/ee-requirements.txt (requests, cryptography), and community.docker's own (the Docker SDK).
    assert {"requests", "cryptography", "docker", "ansible-runner"} <= packages
    assert packages.isdisjoint(DEV_TOOLCHAIN), packages & DEV_TOOLCHAIN
    # meta/ee-bindep.txt: ssh to reach the managed hosts.
    assert in_ee(ee, "command -v ssh").returncode == 0
    # The build-time pip CA and apt lists stay out of the EE.
    leftovers = in_ee(ee, "ls /etc/pip.conf /usr/local/share/mooring-build-ca.crt /var/lib/apt/lists/*Packages*")
    assert leftovers.stdout.strip() == "", leftovers.stdout


def test_site_yml_from_the_ee_changes_nothing_on_the_converged_lab(ee, tmp_path):
    """The lab's secrets and ssh key are the EE user's (mode 0600 as AWX hands them over); the ssh control
    sockets of this machine's runs stay out, so each connection is the EE's own."""
    secrets = tmp_path / "lab"
    shutil.copytree(LAB_DIR, secrets, ignore=shutil.ignore_patterns("cm-*", "ee", "pythons", "image-factory"))
    for path in [secrets, *secrets.rglob("*")]:
        shutil.chown(path, EE_UID, 0)
    process = run(
        [
            "docker", "run", "--rm", "--network", "mooring-lab",
            "--volume", f"{REPO_DIR}:/runner/project:ro",
            "--volume", f"{secrets}:/runner/project/.lab",
            "--env", "ANSIBLE_PIPELINING=true",
            "--workdir", "/runner",
            ee,
            "ansible-playbook", "-i", "/runner/project/inventory/lab", "mooring.ops.site",
            "--limit", "all:!lab_engine",
        ],
        timeout=1800,
    )  # fmt: skip
    assert process.returncode == 0, failures(process)
    assert changes(process) == dict.fromkeys(NODES, 0), process.stdout[-5000:]
