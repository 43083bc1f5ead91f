#!/usr/bin/python
# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: harbor_robot
short_description: Manage Harbor robot accounts through Harbor's REST API v2.0
description:
  - Makes sure a robot account exists with the given permissions, lifetime and state, or does not exist.
  - Reads the robot first (C(GET /api/v2.0/robots)) and changes only what differs (C(POST), C(PUT), C(DELETE)),
    so that a second run reports no change and check mode writes nothing.
  - Harbor shows a robot's secret once, when it is created or refreshed (C(PATCH /api/v2.0/robots/{id})). The
    module returns it only then. Give the task C(no_log=true) and store the secret in a vault.
version_added: 0.1.0
author:
  - mooring developers (@mooring)
requirements:
  - Python 3.9 or later on the host that runs the module (EL9 and Debian 11 have it as C(/usr/bin/python3)).
  - C(requests) on the host that runs the module.
extends_documentation_fragment:
  - mooring.ops.harbor_api
options:
  name:
    description:
      - The robot's short name (lower case letters, digits, C(.), C(_) and C(-)). Harbor names it
        C(<prefix><name>) at system level and C(<prefix><project>+<name>) at project level.
    type: str
    required: true
  level:
    description: A C(project) robot works in one project; a C(system) robot can span projects.
    type: str
    choices: [project, system]
    default: project
  project:
    description: The project of a project-level robot; required with O(level=project).
    type: str
  permissions:
    description:
      - What the robot may do, per project. Defaults to pulling from O(project) for a project-level robot.
    type: list
    elements: dict
    suboptions:
      project:
        description: The project (C(*) for every project, system level only).
        type: str
        required: true
      access:
        description: C(resource:action) pairs, for example C(repository:pull), C(repository:push), C(artifact:delete).
        type: list
        elements: str
        required: true
  description:
    description: Free text shown in Harbor.
    type: str
    default: ""
  duration:
    description: Lifetime in days from creation; C(-1) never expires.
    type: int
    default: -1
  disable:
    description: Disable the robot without deleting it.
    type: bool
    default: false
  refresh_secret:
    description: Have Harbor generate a new secret (always a change); the new secret is returned.
    type: bool
    default: false
  robot_name_prefix:
    description: Harbor's robot name prefix (Harbor's C(robot_name_prefix) setting).
    type: str
    default: robot$
  state:
    description: Whether the robot exists.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    description: Reads the robot and reports what would change; writes nothing.
    support: full
  diff_mode:
    description: Shows the robot's description, lifetime, state and permissions before and after.
    support: full
  idempotent:
    description: A second run with the same options changes nothing (unless O(refresh_secret=true)).
    support: full
notes:
  - Harbor cannot tell a robot's secret after creation. Lose it and only O(refresh_secret) gets a new one.
  - A robot's name and level cannot change; a different O(level) or O(project) is a different robot.
"""

EXAMPLES = r"""
- name: A robot that pushes the platform's images (its secret is shown once)
  mooring.ops.harbor_robot:
    harbor_url: https://harbor.example.com
    name: ci-push
    project: platform
    permissions:
      - project: platform
        access: [repository:pull, repository:push]
    username: admin
    password: "{{ vault_harbor_admin_password }}"
  register: ci_robot
  no_log: true

- name: A system robot that pulls from every project, for the docker hosts
  mooring.ops.harbor_robot:
    harbor_url: https://harbor.example.com
    name: docker-hosts
    level: system
    permissions:
      - project: "*"
        access: [repository:pull]
    duration: 365
    username: admin
    password: "{{ vault_harbor_admin_password }}"
  register: pull_robot
  no_log: true
"""

RETURN = r"""
robot:
  description: The robot after the run (before it, for O(state=absent)); empty when it does not exist.
  returned: always
  type: dict
  sample:
    id: 3
    name: robot$platform+ci-push
    level: project
    duration: -1
    disable: false
    description: ""
    expires_at: -1
    permissions: [{"project": "platform", "access": ["repository:pull", "repository:push"]}]
secret:
  description: The robot's secret, only when Harbor made one in this run (creation or O(refresh_secret)).
  returned: when created or refreshed, not in check mode
  type: str
  sample: 5fGk2...
diff:
  description: The managed properties before and after.
  returned: always
  type: dict
  sample: {"before": {"exists": true, "disable": false}, "after": {"exists": true, "disable": true}}
"""

import re

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.mooring.ops.plugins.module_utils.harbor import (
    REQUESTS_IMPORT_ERROR,
    HarborApiClient,
    RegistryError,
    check_harbor_url,
    harbor_api_argument_spec,
)
from ansible_collections.mooring.ops.plugins.module_utils.python_floor import require_python

NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
ACCESS = re.compile(r"^[a-z-]+:[a-z-]+$")
MANAGED = ("description", "duration", "disable", "permissions")


def _permissions_from_harbor(permissions):
    """Harbor's [{kind, namespace, access: [{resource, action}]}] as [{project, access: ["resource:action"]}]."""
    return sorted(
        (
            {
                "project": entry["namespace"],
                "access": sorted(f"{item['resource']}:{item['action']}" for item in entry.get("access", [])),
            }
            for entry in permissions or []
            if entry.get("kind") == "project"
        ),
        key=lambda entry: entry["project"],
    )


def _permissions_for_harbor(permissions):
    return [
        {
            "kind": "project",
            "namespace": entry["project"],
            "access": [
                {"resource": resource, "action": action}
                for resource, action in (item.split(":", 1) for item in entry["access"])
            ],
        }
        for entry in permissions
    ]


class HarborRobot:
    def __init__(self, module):
        self.module = module
        params = module.params
        self.level = params["level"]
        self.project = params["project"]
        short = params["name"] if self.level == "system" else f"{self.project}+{params['name']}"
        self.full_name = params["robot_name_prefix"] + short
        permissions = params["permissions"]
        if permissions is None:
            permissions = [{"project": self.project, "access": ["repository:pull"]}] if self.project else []
        self.wanted = {
            "description": params["description"],
            "duration": params["duration"],
            "disable": params["disable"],
            "permissions": sorted(
                ({"project": p["project"], "access": sorted(set(p["access"]))} for p in permissions),
                key=lambda entry: entry["project"],
            ),
        }
        self.api = HarborApiClient.from_params(params)

    def _read(self):
        page = 1
        while True:
            _status, robots = self.api.call("GET", "/robots", (200,), params={"page": page, "page_size": 100})
            for robot in robots or []:
                if robot.get("name") == self.full_name:
                    return self._state(robot)
            if len(robots or []) < 100:
                return None
            page += 1

    @staticmethod
    def _state(robot):
        return {
            "id": robot["id"],
            "name": robot["name"],
            "level": robot.get("level"),
            "description": robot.get("description") or "",
            "duration": robot.get("duration"),
            "disable": bool(robot.get("disable")),
            "expires_at": robot.get("expires_at"),
            "permissions": _permissions_from_harbor(robot.get("permissions")),
        }

    def _body(self, short_name):
        return {
            "name": short_name,
            "level": self.level,
            "description": self.wanted["description"],
            "duration": self.wanted["duration"],
            "disable": self.wanted["disable"],
            "permissions": _permissions_for_harbor(self.wanted["permissions"]),
        }

    @staticmethod
    def _view(state):
        view = {"exists": state is not None}
        if state:
            view.update({key: state[key] for key in MANAGED})
        return view

    def present(self):
        before = self._read()
        if before is not None and before["level"] != self.level:
            self.module.fail_json(
                msg=f"robot {self.full_name} exists at level {before['level']}, not {self.level}: "
                "a robot's level cannot change; delete it first (state=absent)"
            )
        changes = (
            dict(self.wanted, exists=True)
            if before is None
            else {key: value for key, value in self.wanted.items() if before[key] != value}
        )
        refresh = self.module.params["refresh_secret"] and before is not None
        result = {"changed": bool(changes) or refresh}
        after = before
        if not self.module.check_mode:
            if before is None:
                short = self.module.params["name"]
                _status, created = self.api.call("POST", "/robots", (201,), body=self._body(short))
                result["secret"] = created.get("secret")
                after = self._read()
            elif changes:
                body = dict(self._body(before["name"]), id=before["id"], name=before["name"])
                self.api.call("PUT", f"/robots/{before['id']}", (200,), body=body)
                after = self._read()
            if refresh:
                _status, answer = self.api.call("PATCH", f"/robots/{before['id']}", (200,), body={})
                result["secret"] = answer.get("secret")
        result["robot"] = after or {}
        result["diff"] = {
            "before": self._view(before),
            "after": dict(self._view(before), **changes) if before else dict(self.wanted, exists=True),
        }
        return result

    def absent(self):
        before = self._read()
        if before is not None and not self.module.check_mode:
            self.api.call("DELETE", f"/robots/{before['id']}", (200, 404))
        return {
            "changed": before is not None,
            "robot": before or {},
            "diff": {"before": self._view(before), "after": {"exists": False}},
        }

    def run(self):
        try:
            return self.present() if self.module.params["state"] == "present" else self.absent()
        except RegistryError as exc:
            self.module.fail_json(msg=str(exc))


def _check(module):
    params = module.params
    problems = []
    if not NAME.match(params["name"] or ""):
        problems.append(f"name: expected lower case letters, digits, '.', '_' or '-', got {params['name']!r}")
    if params["level"] == "project" and not params["project"]:
        problems.append("project: required with level=project (the robot's project)")
    for entry in params["permissions"] or []:
        bad = [item for item in entry["access"] if not ACCESS.match(item)]
        if bad:
            problems.append(f"permissions: access items must look like resource:action, got {bad}")
        if params["level"] == "project" and entry["project"] != params["project"]:
            problems.append(
                f"permissions: a project-level robot works in project {params['project']} only, "
                f"got {entry['project']!r}"
            )
    if params["duration"] == 0 or params["duration"] < -1:
        problems.append(f"duration: expected days (>= 1) or -1 for never, got {params['duration']}")
    if problems:
        module.fail_json(msg="; ".join(problems))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            harbor_api_argument_spec(),
            name={"type": "str", "required": True},
            level={"type": "str", "choices": ["project", "system"], "default": "project"},
            project={"type": "str"},
            permissions={
                "type": "list",
                "elements": "dict",
                "options": {
                    "project": {"type": "str", "required": True},
                    "access": {"type": "list", "elements": "str", "required": True},
                },
            },
            description={"type": "str", "default": ""},
            duration={"type": "int", "default": -1},
            disable={"type": "bool", "default": False},
            refresh_secret={"type": "bool", "default": False, "no_log": False},
            robot_name_prefix={"type": "str", "default": "robot$"},
            state={"type": "str", "choices": ["present", "absent"], "default": "present"},
        ),
        required_together=[("username", "password")],
        supports_check_mode=True,
    )
    require_python(module, "mooring.ops.harbor_robot")
    if REQUESTS_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("requests"), exception=REQUESTS_IMPORT_ERROR)
    check_harbor_url(module)
    _check(module)
    module.exit_json(**HarborRobot(module).run())


if __name__ == "__main__":
    main()
