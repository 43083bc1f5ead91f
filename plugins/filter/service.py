# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the other hosts reach a host's published services: one rule for every service role."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError


def _first_set(*values):
    return next((str(value) for value in values if value not in (None, "")), "")


def service_address(host, hostvars):
    """mooring_service_address, else the host's default IPv4 address (gathered facts), else ansible_host, else the
    inventory name."""
    if not isinstance(host, str) or not host:
        raise AnsibleFilterError(f"service_address: expected an inventory host name, got {host!r}")
    try:
        variables = hostvars[host]
    except KeyError:
        raise AnsibleFilterError(f"service_address: {host!r} is not a host of the inventory") from None
    facts = variables.get("ansible_facts") or {}
    default_ipv4 = facts.get("default_ipv4") or {}
    return _first_set(
        variables.get("mooring_service_address"), default_ipv4.get("address"), variables.get("ansible_host"), host
    )


class FilterModule:
    def filters(self):
        return {"service_address": service_address}
