# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which packages make the Docker engine on a host, pinned, and whether the repository has the pin.

The docker_host role's decisions that depend on the OS and the package source, kept in Python so that they are
unit-tested (tests/unit/test_docker_engine_filters.py) rather than spread over Jinja."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

DOCKER_CE = ["docker-ce", "docker-ce-cli", "containerd.io"]
# docker-ce's packages carry an epoch: 5 in the apt repository, 3 in the yum one.
DOCKER_CE_EPOCH = {"apt": "5:", "dnf": "3:"}
VERSION = re.compile(r"^[0-9][0-9A-Za-z.+~-]*$")
EL_REBUILDS = {"RedHat", "CentOS", "Rocky", "AlmaLinux", "OracleLinux", "Oracle Linux", "Scientific"}


def _distro_engine(facts):
    family = facts.get("os_family")
    distribution = facts.get("distribution", "")
    major = str(facts.get("distribution_major_version", ""))
    if family == "Debian":
        return "docker.io"
    if family == "RedHat":
        if distribution == "Fedora":
            return "moby-engine"
        if distribution == "Amazon":
            return "docker"
        if distribution in EL_REBUILDS and major == "7":
            return "docker"
        raise AnsibleFilterError(
            f"docker_host_package_source: distro has no Docker engine on {distribution} {major} (EL8 and later ship "
            "podman, not docker); use docker_host_package_source: docker-ce"
        )
    raise AnsibleFilterError(f"docker_host supports the Debian and RedHat OS families, not {family}")


def docker_engine_packages(source, facts, version="", packages=None):
    manager = "apt" if facts.get("os_family") == "Debian" else "dnf"
    version = (version or "").strip()
    if version and not VERSION.match(version):
        raise AnsibleFilterError(
            f"docker_host_version: expected a version such as 27.3.1, 27.3 or 20.10 (digits first, no epoch), "
            f"got {version!r}"
        )
    if packages:
        return {"specs": list(packages), "names": list(packages), "pinned": [], "manager": manager}
    if source == "docker-ce":
        names, pinned_names, epoch = list(DOCKER_CE), ["docker-ce", "docker-ce-cli"], DOCKER_CE_EPOCH[manager]
    elif source == "distro":
        names = [_distro_engine(facts)]
        pinned_names, epoch = names, ""
    else:
        raise AnsibleFilterError(f"docker_host_package_source: expected docker-ce or distro, got {source!r}")
    pinned = [{"name": name, "prefix": f"{epoch}{version}"} for name in pinned_names] if version else []
    # apt installs the exact version that docker_pins_resolve finds; dnf takes a glob without the epoch.
    specs = [f"{name}-{version}*" if manager == "dnf" and version and name in pinned_names else name for name in names]
    return {"specs": specs, "names": names, "pinned": pinned, "manager": manager}


def _matches(candidate, prefix):
    """A pin is a version prefix that ends at a version boundary: 27.3 is 27.3.1 and 27.3-1, never 27.30."""
    return candidate == prefix or (candidate.startswith(prefix) and candidate[len(prefix)] in ".-+~")


def docker_pins_resolve(available, engine):
    """The engine's install specs with each pin replaced by the newest version the repository has under it
    (``available`` maps names to versions, newest first, as apt-cache madison lists them), and the pins that no
    version satisfies, each with what the repository has instead."""
    exact, missing = {}, []
    for entry in engine["pinned"]:
        versions = available.get(entry["name"], [])
        found = [candidate for candidate in versions if _matches(candidate, entry["prefix"])]
        if found:
            exact[entry["name"]] = found[0]
        else:
            missing.append(
                f"{entry['name']} {entry['prefix']} (the repository has: {', '.join(versions[:8]) or 'none'})"
            )
    specs = [f"{spec}={exact[spec]}" if spec in exact else spec for spec in engine["specs"]]
    return {"specs": specs, "missing": missing}


def apt_madison_versions(stdout):
    """{package: [versions]} from ``apt-cache madison`` output (``name | version | source``)."""
    found = {}
    for line in stdout.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) >= 2 and parts[0] and parts[1]:
            found.setdefault(parts[0], [])
            if parts[1] not in found[parts[0]]:
                found[parts[0]].append(parts[1])
    return found


class FilterModule:
    def filters(self):
        return {
            "docker_engine_packages": docker_engine_packages,
            "docker_pins_resolve": docker_pins_resolve,
            "apt_madison_versions": apt_madison_versions,
        }
