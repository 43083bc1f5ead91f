"""docker_host's package decisions (plugins/filter/docker_engine.py): which packages make the engine per OS and
source, how a version pin is written for apt and dnf, EL's distro refusal, and the pin lookup."""

import sys

import pytest
from ansible.errors import AnsibleFilterError

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.filter.docker_engine import (
    apt_madison_versions,
    docker_engine_packages,
    docker_pins_resolve,
)

DEBIAN_12 = {"os_family": "Debian", "distribution": "Debian", "distribution_major_version": "12"}
UBUNTU = {"os_family": "Debian", "distribution": "Ubuntu", "distribution_major_version": "24"}
ROCKY_9 = {"os_family": "RedHat", "distribution": "Rocky", "distribution_major_version": "9"}
CENTOS_7 = {"os_family": "RedHat", "distribution": "CentOS", "distribution_major_version": "7"}
FEDORA = {"os_family": "RedHat", "distribution": "Fedora", "distribution_major_version": "40"}
AMAZON = {"os_family": "RedHat", "distribution": "Amazon", "distribution_major_version": "2023"}

MADISON = """\
 docker-ce | 5:27.3.1-1~debian.12~bookworm | https://download.docker.com/linux/debian bookworm/stable amd64 Packages
 docker-ce | 5:26.1.4-1~debian.12~bookworm | https://download.docker.com/linux/debian bookworm/stable amd64 Packages
docker-ce-cli | 5:27.3.1-1~debian.12~bookworm | https://download.docker.com/linux/debian bookworm/stable amd64 Packages
 docker.io | 20.10.24+dfsg1-1+deb12u1+b6 | http://deb.debian.org/debian bookworm/main amd64 Packages
"""


def test_docker_ce_unpinned_is_the_three_packages_on_both_families():
    for facts, manager in ((DEBIAN_12, "apt"), (ROCKY_9, "dnf")):
        engine = docker_engine_packages("docker-ce", facts)
        assert engine == {"specs": ["docker-ce", "docker-ce-cli", "containerd.io"],
                          "names": ["docker-ce", "docker-ce-cli", "containerd.io"], "pinned": [],
                          "manager": manager}  # fmt: skip


def test_a_pin_carries_the_repository_s_epoch_is_a_dnf_glob_and_leaves_containerd_alone():
    apt = docker_engine_packages("docker-ce", DEBIAN_12, version="27.3")
    assert apt["specs"] == ["docker-ce", "docker-ce-cli", "containerd.io"]
    assert apt["pinned"] == [{"name": "docker-ce", "prefix": "5:27.3"}, {"name": "docker-ce-cli", "prefix": "5:27.3"}]
    dnf = docker_engine_packages("docker-ce", ROCKY_9, version="27.3.1")
    assert dnf["specs"] == ["docker-ce-27.3.1*", "docker-ce-cli-27.3.1*", "containerd.io"]
    assert dnf["pinned"][0] == {"name": "docker-ce", "prefix": "3:27.3.1"}
    assert docker_engine_packages("distro", DEBIAN_12, version="20.10")["pinned"] == [
        {"name": "docker.io", "prefix": "20.10"}
    ]


def test_distro_resolves_to_a_package_that_exists_on_each_os():
    assert docker_engine_packages("distro", DEBIAN_12)["names"] == ["docker.io"]
    assert docker_engine_packages("distro", UBUNTU)["names"] == ["docker.io"]
    assert docker_engine_packages("distro", FEDORA)["names"] == ["moby-engine"]
    assert docker_engine_packages("distro", CENTOS_7)["names"] == ["docker"]
    assert docker_engine_packages("distro", AMAZON)["names"] == ["docker"]


def test_distro_on_el8_and_later_is_refused_naming_the_variable_and_the_way_out():
    with pytest.raises(AnsibleFilterError) as refused:
        docker_engine_packages("distro", ROCKY_9)
    assert str(refused.value) == (
        "docker_host_package_source: distro has no Docker engine on Rocky 9 (EL8 and later ship podman, not docker);"
        " use docker_host_package_source: docker-ce"
    )


@pytest.mark.parametrize("version", ["5:27.3.1", "latest", "27.3 ", "27;rm", "v27"])
def test_a_malformed_pin_is_refused_naming_docker_host_version(version):
    if version.strip() == "27.3":
        assert docker_engine_packages("distro", DEBIAN_12, version=version)["pinned"][0]["prefix"] == "27.3"
        return
    with pytest.raises(AnsibleFilterError, match=r"^docker_host_version: expected a version such as 27.3.1"):
        docker_engine_packages("distro", DEBIAN_12, version=version)


def test_explicit_packages_replace_the_source_s_list_unpinned():
    engine = docker_engine_packages(
        "docker-ce", DEBIAN_12, version="27.3", packages=["docker-ce=5:27.3.1-1~debian.12~bookworm"]
    )
    assert engine["specs"] == ["docker-ce=5:27.3.1-1~debian.12~bookworm"] and engine["pinned"] == []


def test_unknown_source_and_os_family_are_refused():
    with pytest.raises(AnsibleFilterError, match=r"^docker_host_package_source: expected docker-ce or distro"):
        docker_engine_packages("snap", DEBIAN_12)
    with pytest.raises(AnsibleFilterError, match=r"^docker_host supports the Debian and RedHat OS families, not Suse"):
        docker_engine_packages("distro", {"os_family": "Suse"})


def test_madison_output_parses_and_pins_resolve_to_the_newest_exact_version_under_them():
    available = apt_madison_versions(MADISON)
    assert available == {
        "docker-ce": ["5:27.3.1-1~debian.12~bookworm", "5:26.1.4-1~debian.12~bookworm"],
        "docker-ce-cli": ["5:27.3.1-1~debian.12~bookworm"],
        "docker.io": ["20.10.24+dfsg1-1+deb12u1+b6"],
    }
    resolved = docker_pins_resolve(available, docker_engine_packages("docker-ce", DEBIAN_12, version="27.3"))
    assert resolved == {
        "specs": ["docker-ce=5:27.3.1-1~debian.12~bookworm", "docker-ce-cli=5:27.3.1-1~debian.12~bookworm",
                  "containerd.io"],
        "missing": [],
    }  # fmt: skip
    distro = docker_pins_resolve(available, docker_engine_packages("distro", DEBIAN_12, version="20.10.24"))
    assert distro == {"specs": ["docker.io=20.10.24+dfsg1-1+deb12u1+b6"], "missing": []}
    older = docker_pins_resolve(available, docker_engine_packages("docker-ce", DEBIAN_12, version="26.1"))
    assert older["missing"] == ["docker-ce-cli 5:26.1 (the repository has: 5:27.3.1-1~debian.12~bookworm)"]
    # A pin ends at a version boundary: 20.1 is not 20.10.
    boundary = docker_pins_resolve(available, docker_engine_packages("distro", DEBIAN_12, version="20.1"))
    assert boundary["missing"] == ["docker.io 20.1 (the repository has: 20.10.24+dfsg1-1+deb12u1+b6)"]
    nothing = docker_pins_resolve({}, docker_engine_packages("distro", DEBIAN_12, version="99"))
    assert nothing["missing"] == ["docker.io 99 (the repository has: none)"]
    unpinned = docker_engine_packages("distro", DEBIAN_12)
    assert docker_pins_resolve(available, unpinned) == {"specs": ["docker.io"], "missing": []}
