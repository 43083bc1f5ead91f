"""Print the Debian mirror this machine's apt uses (a site's company mirror, a cloud mirror), for the tools that
fetch Debian releases (tests/pythons.sh). It reads the sources with the same parser as mooring.ops.apt_mirror_info,
which the lab's playbooks use."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "module_utils"))
from apt_sources import host_mirrors  # the collection's own parser, without Ansible on the path

if __name__ == "__main__":
    archive = host_mirrors()[0]["archive"]
    if not archive:
        sys.exit("this machine's apt sources name no http(s) mirror; set MOORING_DEBIAN_MIRROR")
    print(archive[0])
