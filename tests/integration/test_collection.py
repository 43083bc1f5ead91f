"""The collection as a site installs it: the tarball that `ansible-galaxy collection build` makes from this
repository holds the collection and not the lab, declares every collection its content calls, installs, and its
docs and playbooks resolve by FQCN from the installed copy (outside this checkout). No lab needed."""

import os
import re
import tarfile

import pytest
import yaml

from conftest import REPO_DIR, run

# Collections that come with ansible-core itself, and the collection's own name.
BUILTIN = {"ansible.builtin", "ansible.module_utils", "ansible.plugins", "ansible.legacy", "mooring.ops"}
FQCN = re.compile(r"(?<![\w.])([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\.[a-z][a-z0-9_]*")
LAB_AND_DEV = re.compile(
    r"^(roles/lab_|playbooks/lab|inventory/|bench/|molecule/|ee/|tests/integration/|tests/unit/|\.venv/|\.lab/|\.ci/|"
    r"collections/|changelogs/fragments/|requirements\.txt$|Makefile$|ansible\.cfg$|site\.yml$)"
    r"|(__pycache__|\.pyc$|\.ruff_cache|\.pytest_cache)"
)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    built = run(["ansible-galaxy", "collection", "build", "--output-path", str(out), str(REPO_DIR)], timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("mooring-ops-*.tar.gz")
    return path


@pytest.fixture(scope="module")
def members(tarball):
    with tarfile.open(tarball) as archive:
        return {member.name.rstrip("/") for member in archive.getmembers()}


@pytest.fixture(scope="module")
def galaxy():
    return yaml.safe_load((REPO_DIR / "galaxy.yml").read_text())


def test_the_tarball_holds_the_collection_and_none_of_the_lab_or_the_dev_toolchain(members):
    lab_or_dev = sorted(name for name in members if LAB_AND_DEV.search(name))
    assert lab_or_dev == []
    for wanted in (
        "LICENSE",
        "README.md",
        "meta/runtime.yml",
        "plugins/modules/harbor_image.py",
        "plugins/module_utils/nsruntime/spec.py",
        "plugins/connection/ns_container.py",
        "roles/docker_host/meta/argument_specs.yml",
        "roles/redis_cluster/tasks/main.yml",
        "playbooks/site.yml",
        "playbooks/docker_hosts.yml",
        "changelogs/config.yaml",
        "bin/mooring-ctr",
    ):
        assert wanted in members, wanted
    assert not [name for name in members if name.startswith("roles/lab")]


def test_galaxy_declares_every_collection_the_shipped_content_calls(tarball, members, galaxy):
    used = {}
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            if not member.isfile() or not member.name.endswith((".yml", ".yaml", ".py", ".j2")):
                continue
            text = archive.extractfile(member).read().decode()
            for namespace, name in FQCN.findall(text):
                collection = f"{namespace}.{name}"
                if namespace in ("ansible", "community", "containers", "kubernetes", "amazon"):
                    used.setdefault(collection, member.name)
    undeclared = {
        name: where for name, where in used.items() if name not in BUILTIN and name not in galaxy["dependencies"]
    }
    assert undeclared == {}
    # community.mysql and community.rabbitmq were the missing ones; they must stay.
    assert {"community.mysql", "community.rabbitmq", "community.docker"} <= set(used)


def test_awx_project_requirements_ask_for_what_galaxy_declares(galaxy):
    requirements = yaml.safe_load((REPO_DIR / "collections" / "requirements.yml").read_text())
    asked = {entry["name"]: entry["version"] for entry in requirements["collections"]}
    assert asked == galaxy["dependencies"]


def test_action_groups_name_existing_modules():
    runtime = yaml.safe_load((REPO_DIR / "meta" / "runtime.yml").read_text())
    groups = runtime["action_groups"]
    assert set(groups) == {"harbor", "nsruntime"}
    for modules in groups.values():
        for module in modules:
            assert (REPO_DIR / "plugins" / "modules" / f"{module}.py").is_file(), module


def test_the_installed_tarball_documents_its_modules_and_resolves_its_playbooks_by_fqcn(tarball, tmp_path):
    """Installed with --no-deps into an empty path (the declared dependencies come from the ansible bundle, as
    ansible-galaxy would install them), then used from a directory that is not this checkout."""
    install = tmp_path / "collections"
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env["ANSIBLE_COLLECTIONS_PATH"] = str(install)
    done = run(
        ["ansible-galaxy", "collection", "install", "--no-deps", "--offline", "-p", str(install), str(tarball)],
        timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (install / "ansible_collections" / "mooring" / "ops" / "roles" / "lab_nodes").exists()

    doc = run(["ansible-doc", "--json", "mooring.ops.harbor_image", "mooring.ops.ns_container"], 300, env, tmp_path)
    assert doc.returncode == 0, doc.stderr
    assert "harbor_url" in doc.stdout and "HARBOR_URL" in doc.stdout

    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"host1": {}}}}))
    for playbook in ("mooring.ops.site", "mooring.ops.docker_hosts", "mooring.ops.redis_cluster"):
        checked = run(["ansible-playbook", "-i", str(inventory), playbook, "--syntax-check"], 300, env, tmp_path)
        assert checked.returncode == 0, playbook + ": " + checked.stdout + checked.stderr

    # What ansible-builder puts into an execution environment for this collection: meta/execution-environment.yml's
    # controller needs, nothing of the development toolchain (which it used to take from requirements.txt).
    introspected = run(["ansible-builder", "introspect", str(install)], 300, env, tmp_path)
    assert introspected.returncode == 0, introspected.stderr
    needs = yaml.safe_load(introspected.stdout)
    python = {re.split(r"[<>=\s#]", line.strip(), maxsplit=1)[0].lower() for line in needs["python"]}
    assert python == {"requests", "cryptography"}, needs["python"]
    assert any("openssh-client [platform:dpkg]" in line for line in needs["system"]), needs["system"]
