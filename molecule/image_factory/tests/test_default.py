"""What image_factory promises after a converge: the image is built as documented, and the registry holds
exactly the local image under its version tag."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import requests

SCENARIO_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = SCENARIO_DIR.parents[1]
LAB_DIR = REPO_DIR / ".lab"
REGISTRY = "harbor.lab"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture(scope="module")
def pushed_tags(host):
    return sorted(host.check_output(f"docker images --format '{{{{.Tag}}}}' {REGISTRY}/molecule/redis").split())


@pytest.fixture(scope="module")
def pushed_tag(pushed_tags):
    """The version tag (7.0.15); the other one is its major.minor line (7.0)."""
    line, version = pushed_tags
    assert version.startswith(line + ".")
    return version


@pytest.fixture(scope="module")
def image(host, pushed_tag):
    return json.loads(host.check_output(f"docker image inspect molecule/redis:{pushed_tag}"))[0]


def test_the_image_runs_as_a_non_root_user_with_a_healthcheck_and_oci_labels(image, pushed_tag):
    assert image["Config"]["User"] not in ("", "root", "0")
    assert image["Config"]["Healthcheck"]["Test"][0] in ("CMD", "CMD-SHELL")
    labels = image["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == pushed_tag
    assert pushed_tag.startswith("7.")


@pytest.mark.parametrize("which", ["version", "line"])
def test_the_registry_holds_the_local_image_under_its_version_and_its_line(image, pushed_tags, which):
    tag = pushed_tags[1] if which == "version" else pushed_tags[0]
    answer = requests.get(
        f"https://{REGISTRY}/v2/molecule/redis/manifests/{tag}",
        auth=("mooring", (LAB_DIR / "registry-password").read_text().strip()),
        headers={"Accept": MANIFEST_V2},
        verify=str(LAB_DIR / "ca" / "ca.crt"),
        timeout=30,
    )
    assert answer.status_code == 200
    assert answer.json()["config"]["digest"] == image["Id"]


def test_a_check_mode_converge_reports_no_change():
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_DIR / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    for inherited in ("ANSIBLE_CALLBACKS_ENABLED", "ANSIBLE_FORCE_COLOR"):
        env.pop(inherited, None)
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    process = subprocess.run(
        ["ansible-playbook", "-i", inventory, str(SCENARIO_DIR / "converge.yml"), "--check"],
        capture_output=True, text=True, env=env, cwd=REPO_DIR, timeout=900, check=False,
    )  # fmt: skip
    assert process.returncode == 0, process.stdout[-3000:]
    assert "changed=0" in process.stdout[process.stdout.rfind("PLAY RECAP") :], process.stdout[-3000:]
