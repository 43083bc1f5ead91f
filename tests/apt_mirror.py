"""Print the Debian mirror this machine's apt uses (a site's company mirror, a cloud mirror), for the tools that
fetch Debian releases (tests/pythons.sh). The lab's playbooks read the same sources through the lab_images role."""

import glob
import re
import sys

DEFAULT = "http://deb.debian.org/debian"


def mirrors(paths):
    """Archive URIs in the order apt lists them, security archives left out."""
    found = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            continue
        if path.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.MULTILINE))
                if fields.get("Enabled", "yes").lower() == "no" or "deb" not in fields.get("Types", "").split():
                    continue
                if any(suite.endswith("-security") for suite in fields.get("Suites", "").split()):
                    continue
                found += fields.get("URIs", "").split()
        else:
            for line in text.splitlines():
                match = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
                if match and not match.group(2).endswith("-security"):
                    found.append(match.group(1))
    return [uri.rstrip("/") for uri in found if uri.startswith(("http://", "https://", "file:/"))]


if __name__ == "__main__":
    sources = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
    sources += sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
    print((mirrors(sources) or [DEFAULT])[0])
    sys.exit(0)
