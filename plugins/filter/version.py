# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a service may change from the version it runs to another in place, by the service's rule.

Stateless services (nginx, Tomcat) may go anywhere. A service whose data a newer series rewrites (MariaDB's
system tables after mariadb-upgrade, Redis's RDB and AOF formats) cannot go back to an older series on that
data. RabbitMQ has its own rule (rabbitmq_upgrade_path)."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError
from ansible_collections.mooring.ops.plugins.filter.rabbitmq import rabbitmq_upgrade_path

VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")
RULES = ("any", "no_downgrade", "rabbitmq")


def _parts(version, what):
    match = VERSION.match(str(version).rsplit(":", maxsplit=1)[-1])
    if not match:
        raise AnsibleFilterError(f"version_change: {what} must be a version such as 10.11.6, got {version!r}")
    return tuple(int(part or 0) for part in match.groups())


def version_change(running, wanted, rule="any"):
    """Returns {"change": "none" | "patch" | "upgrade" | "downgrade", "allowed": bool, "reason": str}: "upgrade"
    and "downgrade" cross a major.minor series, "patch" stays within one (either way)."""
    if rule not in RULES:
        raise AnsibleFilterError(f"version_change: rule must be one of {', '.join(RULES)}, got {rule!r}")
    start, goal = _parts(running, "running"), _parts(wanted, "wanted")
    if start == goal:
        change = "none"
    elif start[:2] == goal[:2]:
        change = "patch"
    else:
        change = "upgrade" if goal > start else "downgrade"
    if rule == "rabbitmq" and change in ("upgrade", "downgrade"):
        path = rabbitmq_upgrade_path(running, wanted)
        return {"change": change, "allowed": path["allowed"], "reason": path["reason"]}
    if rule == "no_downgrade" and change == "downgrade":
        return {
            "change": change,
            "allowed": False,
            "reason": (
                f"{running} cannot go back to {wanted} in place: the data that {running} has written may not be "
                f"readable by the older series {goal[0]}.{goal[1]}"
            ),
        }
    return {"change": change, "allowed": True, "reason": ""}


class FilterModule:
    def filters(self):
        return {"version_change": version_change}
