# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The docker_swarm role's checks of its inventory, before any host changes: pure logic, one message per fault,
each naming the variable."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

# What a placement constraint can name and compare (swarmkit's constraint parser): a label the constraints cannot
# reach is a label nobody can use, so it is refused here rather than found out at deploy time.
_LABEL_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]+")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9:_\s.*()?+\[\]\\^$|/-]*")
AVAILABILITIES = ("active", "pause", "drain")


def _host_list(value, variable):
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise AnsibleFilterError(f"{variable}: expected a list of inventory host names, got {value!r}")
    return [str(host) for host in value]


def docker_swarm_membership_errors(managers, workers, play_hosts):
    """What is wrong with the managers and workers lists: none, a host in both, a host listed twice, a host the
    play does not reach."""
    managers = _host_list(managers, "docker_swarm_managers")
    workers = _host_list(workers, "docker_swarm_workers")
    play_hosts = _host_list(play_hosts, "the play's hosts")
    errors = []
    if not managers:
        errors.append(
            "docker_swarm_managers: expected at least one host (inventory group docker_swarm_managers), got none;"
            " a swarm without a manager cannot be formed or kept"
        )
    both = [host for host in workers if host in managers]
    if both:
        errors.append(
            f"docker_swarm_workers: {', '.join(both)} also listed in docker_swarm_managers; a node is a manager or"
            " a worker, not both (a manager runs tasks too)"
        )
    for variable, hosts in (("docker_swarm_managers", managers), ("docker_swarm_workers", workers)):
        twice = sorted({host for host in hosts if hosts.count(host) > 1})
        if twice:
            errors.append(f"{variable}: {', '.join(twice)} listed more than once")
        strangers = [host for host in hosts if host not in play_hosts]
        if strangers:
            errors.append(
                f"{variable}: {', '.join(strangers)} not among this play's hosts ({', '.join(play_hosts)}); the"
                " role must reach every node it places"
            )
    return errors


def docker_swarm_label_errors(labels, host=""):
    """What is wrong with a host's docker_swarm_labels: a mapping of label keys to scalar values, keys and values
    that placement constraints can name."""
    where = f" of {host}" if host else ""
    if not isinstance(labels, dict):
        return [
            f"docker_swarm_labels{where}: expected a mapping of label keys to values"
            f" (e.g. {{zone: a, disk: ssd}}), got {type(labels).__name__} {labels!r}"
        ]
    errors = []
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            errors.append(
                f"docker_swarm_labels{where}: key {key!r} is not a label key placement constraints can use"
                " (expected a letter or _, then letters, digits, '.', '-' or '_'; two characters at least)"
            )
        elif isinstance(value, (dict, list, tuple)) or value is None:
            errors.append(
                f"docker_swarm_labels{where}: {key} must be a string, number or boolean, got"
                f" {type(value).__name__} {value!r}"
            )
        elif not _LABEL_VALUE.fullmatch(_label_text(value)):
            errors.append(
                f"docker_swarm_labels{where}: {key}={_label_text(value)!r} has characters placement constraints"
                " cannot compare ('=', ',', quotes and the like)"
            )
    return errors


def _label_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def docker_swarm_labels(labels):
    """The labels as Docker stores them: every value a string (YAML's true becomes "true", not "True")."""
    return {key: _label_text(value) for key, value in labels.items()}


class FilterModule:
    def filters(self):
        return {
            "docker_swarm_membership_errors": docker_swarm_membership_errors,
            "docker_swarm_label_errors": docker_swarm_label_errors,
            "docker_swarm_labels": docker_swarm_labels,
        }
