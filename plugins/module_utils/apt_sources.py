# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read apt's sources (one-line ``.list`` and deb822 ``.sources`` files) for the mirrors a host already uses.

A site's machines point apt at the site's own mirror (a company mirror, a cloud provider's); tools that fetch
Debian packages (debootstrap, image builds, the test suite's interpreters) follow the host instead of a mirror
host written into mooring's defaults. Pure functions: no Ansible, so the test tooling imports them too.
"""

from __future__ import annotations

import glob
import os
import re

SOURCES_PATHS = ("/etc/apt/sources.list", "/etc/apt/sources.list.d/*.list", "/etc/apt/sources.list.d/*.sources")
# debootstrap and a Dockerfile's apt can use these; mirror+file:, cdrom: and tor+ schemes they cannot.
USABLE_SCHEMES = ("http://", "https://", "file:/")


def source_files(patterns=SOURCES_PATHS):
    """The sources files in the order apt reads them."""
    files = []
    for pattern in patterns:
        files.extend(sorted(glob.glob(pattern)) if "*" in pattern else [pattern] if os.path.exists(pattern) else [])
    return files


def entries(path, text):
    """The enabled binary (``deb``) entries of one file: dicts of uri, suites, components and path."""
    found = []
    if path.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            fields = {key.lower(): value for key, value in re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.M)}
            if fields.get("enabled", "yes").strip().lower() == "no" or "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                found.append(
                    {
                        "uri": uri,
                        "suites": fields.get("suites", "").split(),
                        "components": fields.get("components", "").split(),
                        "path": path,
                    }
                )
    else:
        for line in text.splitlines():
            match = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line.split("#", 1)[0].strip())
            if match:
                found.append({"uri": match[1], "suites": [match[2]], "components": match[3].split(), "path": path})
    return found


def mirrors(files):
    """{'archive': [...], 'security': [...]}: the usable mirror URIs (no trailing slash) in apt's order, each
    once. An entry is a security one when every suite it carries ends in -security (bookworm-security)."""
    result = {"archive": [], "security": []}
    for path, text in files:
        for entry in entries(path, text):
            uri = entry["uri"].rstrip("/")
            if not uri.startswith(USABLE_SCHEMES):
                continue
            suites = entry["suites"] or [""]
            kind = "security" if all(suite.endswith("-security") for suite in suites) else "archive"
            if uri not in result[kind]:
                result[kind].append(uri)
    return result


def host_mirrors(patterns=SOURCES_PATHS):
    """The mirrors of the host this runs on, and the files they came from."""
    files = []
    for path in source_files(patterns):
        try:
            with open(path, encoding="utf-8") as handle:
                files.append((path, handle.read()))
        except (OSError, UnicodeDecodeError):
            continue
    return mirrors(files), [path for path, _text in files]


def settle(found, archive_mirror="", security_mirror=""):
    """(archive, security): the mirrors to fetch from, the given ones first, else the host's.

    The host's security mirror is taken only when its archive mirror is too: a given archive mirror is another
    mirror, whose -security tree sits beside it (as on deb.debian.org), so the security mirror falls back to
    the archive with -security appended. No archive mirror anywhere: ("", security_mirror)."""
    archive = archive_mirror or next(iter(found["archive"]), "")
    host_security = "" if archive_mirror else next(iter(found["security"]), "")
    security = security_mirror or host_security or (archive + "-security" if archive else "")
    return archive, security
