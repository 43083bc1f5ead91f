# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which RabbitMQ version changes a rolling (in-place) upgrade may make, and which it must refuse.

RabbitMQ's rules: a rolling upgrade goes from one minor series to the next only (patch releases may be skipped,
series may not: 3.12 cannot go straight to 4.0), each step after every stable feature flag of the running
series is enabled; 4.0 follows 3.13. Feature flags cannot be disabled, so a node never goes back to an older
series in place."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

# The last minor series of each major that has a successor; the next series of any other X.Y is X.(Y+1).
LAST_MINOR = {3: 13}
VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def _series(version, what):
    match = VERSION.match(str(version).rsplit(":", maxsplit=1)[-1])
    if not match:
        raise AnsibleFilterError(
            f"rabbitmq_upgrade_path: {what} must be a RabbitMQ version such as 3.13.7, got {version!r}"
        )
    return int(match.group(1)), int(match.group(2))


def _next(series):
    major, minor = series
    return (major + 1, 0) if LAST_MINOR.get(major) == minor else (major, minor + 1)


def _name(series):
    return "%d.%d" % series


def rabbitmq_upgrade_path(running, wanted):
    """The series a rolling upgrade from `running` to `wanted` passes through, and why it is refused (if it is).

    Returns {"steps": ["3.10", "3.11", ...], "allowed": bool, "reason": str}; a same-series change (a patch
    release, either way) is allowed with steps [series]."""
    start, goal = _series(running, "running"), _series(wanted, "wanted")
    if goal < start:
        return {
            "steps": [_name(start), _name(goal)],
            "allowed": False,
            "reason": (
                f"RabbitMQ {running} cannot go back to {wanted} in place: feature flags, once enabled, cannot be "
                "disabled, and an older series does not read the newer one's data; restore the older cluster from "
                "its exported definitions (blue-green) instead"
            ),
        }
    steps = [start]
    while steps[-1] < goal and len(steps) < 64:
        steps.append(_next(steps[-1]))
    names = [_name(step) for step in steps]
    if steps[-1] != goal:
        raise AnsibleFilterError(f"rabbitmq_upgrade_path: no series path from {running} to {wanted}")
    if len(steps) > 2:
        return {
            "steps": names,
            "allowed": False,
            "reason": (
                f"RabbitMQ {running} cannot be rolled to {wanted} in place: a rolling upgrade goes one minor series "
                f"at a time ({' -> '.join(names)}), each after all feature flags are enabled; roll through each "
                "series in turn, or build a new cluster from the exported definitions (blue-green)"
            ),
        }
    return {"steps": names, "allowed": True, "reason": ""}


class FilterModule:
    def filters(self):
        return {"rabbitmq_upgrade_path": rabbitmq_upgrade_path}
