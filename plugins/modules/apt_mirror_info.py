#!/usr/bin/python
# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: apt_mirror_info
short_description: The Debian/Ubuntu mirrors a host's apt already uses
description:
  - Reads C(/etc/apt/sources.list), C(/etc/apt/sources.list.d/*.list) and the deb822
    C(/etc/apt/sources.list.d/*.sources) files, in apt's order, and returns the enabled binary (C(deb)) mirrors.
  - Roles that fetch packages themselves (debootstrap in mooring.ops.lab_images, the image builds of
    mooring.ops.image_factory) follow the host's mirror with it, so a site's company or cloud mirror is used
    without being written into any inventory, and no mirror host name sits in mooring's defaults.
  - Entries whose suites all end in C(-security) are security mirrors; the rest are archive mirrors.
  - Only C(http), C(https) and C(file) URIs are returned; C(mirror+file:), C(cdrom:) and the like are skipped.
  - With O(archive_mirror) and O(security_mirror) it also settles the pair to fetch from, the given ones first,
    so that every role that overrides the host's mirror does so by the same rule.
  - A host without apt (EL) returns empty lists; it is the caller's decision what that means.
version_added: 0.3.0
author:
  - mooring developers (@mooring)
requirements:
  - Python 3.9 or later on the host that runs the module.
options:
  archive_mirror:
    description:
      - The archive mirror to use instead of the host's (for example V(http://mirror.example.com/debian)).
      - Empty means the host's first archive mirror.
    type: str
    default: ""
  security_mirror:
    description:
      - The security mirror to use.
      - Empty means the host's first security mirror when O(archive_mirror) is empty too, else the archive
        mirror with C(-security) appended.
    type: str
    default: ""
notes:
  - Supports check mode (it changes nothing).
"""

EXAMPLES = r"""
- name: Read the host's apt mirror
  mooring.ops.apt_mirror_info:
  register: apt_mirror

- name: Bootstrap from it
  ansible.builtin.command:
    argv: [debootstrap, --variant=minbase, bookworm, /srv/rootfs, "{{ apt_mirror.archive_mirror }}"]

- name: The host's mirrors unless the inventory names one
  mooring.ops.apt_mirror_info:
    archive_mirror: "{{ my_mirror | default('') }}"
  register: apt_mirror
"""

RETURN = r"""
archive_mirror:
  description:
    - The archive mirror to fetch from, O(archive_mirror) or the host's first; empty when there is none.
  type: str
  returned: always
  sample: http://mirror.example.com/debian
security_mirror:
  description:
    - The security mirror to fetch from (see O(security_mirror)); empty when there is no mirror at all.
  type: str
  returned: always
  sample: http://mirror.example.com/debian-security
archive_mirrors:
  description: The archive mirrors, in apt's order, each once, without a trailing slash.
  type: list
  elements: str
  returned: always
  sample: ["http://mirror.example.com/debian"]
security_mirrors:
  description: The security mirrors (suites ending in C(-security)), in apt's order.
  type: list
  elements: str
  returned: always
  sample: ["http://mirror.example.com/debian-security"]
sources:
  description: The files that were read.
  type: list
  elements: str
  returned: always
  sample: ["/etc/apt/sources.list.d/debian.sources"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mooring.ops.plugins.module_utils.apt_sources import host_mirrors, settle
from ansible_collections.mooring.ops.plugins.module_utils.python_floor import require_python


def main():
    module = AnsibleModule(
        argument_spec={
            "archive_mirror": {"type": "str", "default": ""},
            "security_mirror": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    require_python(module, "mooring.ops.apt_mirror_info")
    found, sources = host_mirrors()
    archive, security = settle(found, module.params["archive_mirror"], module.params["security_mirror"])
    module.exit_json(
        changed=False,
        archive_mirror=archive,
        security_mirror=security,
        archive_mirrors=found["archive"],
        security_mirrors=found["security"],
        sources=sources,
    )


if __name__ == "__main__":
    main()
