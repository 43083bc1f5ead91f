#!/usr/bin/python
# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: harbor_project
short_description: Create, update and delete Harbor projects through Harbor's REST API v2.0
description:
  - Makes sure a Harbor project exists with the given visibility and storage quota, or does not exist.
  - Reads the project first (C(HEAD /api/v2.0/projects?project_name=), C(GET /api/v2.0/projects/{name})) and
    changes only what differs, so a second run reports no change and check mode needs no write access.
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
    description: The project's name (lower case letters, digits, C(.), C(_) and C(-)).
    type: str
    required: true
  public:
    description:
      - Whether anyone may pull from the project without logging in. Not managed when omitted (Harbor creates
        projects private).
    type: bool
  storage_limit:
    description: The project's storage quota in bytes; C(-1) for no limit. Not managed when omitted.
    type: int
  state:
    description: Whether the project exists.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    description: Reads the project and reports what would change; writes nothing.
    support: full
  diff_mode:
    description: Shows the project's visibility and quota before and after.
    support: full
  idempotent:
    description: A second run with the same options changes nothing.
    support: full
notes:
  - Harbor refuses to delete a project that still holds repositories; the module says so and changes nothing.
"""

EXAMPLES = r"""
- name: A private project for the platform's images, with a 20 GiB quota
  mooring.ops.harbor_project:
    harbor_url: https://harbor.example.com
    name: platform
    public: false
    storage_limit: "{{ 20 * 1024 ** 3 }}"
    username: admin
    password: "{{ vault_harbor_admin_password }}"

- name: Remove a project
  mooring.ops.harbor_project:
    harbor_url: https://harbor.example.com
    name: scratch
    state: absent
    username: admin
    password: "{{ vault_harbor_admin_password }}"
"""

RETURN = r"""
project:
  description: The project after the run (before it, for O(state=absent)); empty when it does not exist.
  returned: always
  type: dict
  sample: {"name": "platform", "project_id": 7, "public": false, "storage_limit": 21474836480}
diff:
  description: The managed properties before and after.
  returned: always
  type: dict
  sample: {"before": {"exists": true, "public": true}, "after": {"exists": true, "public": false}}
"""


from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.mooring.ops.plugins.module_utils.harbor import (
    REQUESTS_IMPORT_ERROR,
    HarborApiClient,
    RegistryError,
    check_harbor_url,
    harbor_api_argument_spec,
)
from ansible_collections.mooring.ops.plugins.module_utils.python_floor import require_python


class HarborProject:
    def __init__(self, module):
        self.module = module
        params = module.params
        self.name = params["name"]
        self.public = params["public"]
        self.storage_limit = params["storage_limit"]
        self.api = HarborApiClient.from_params(params)

    def _quota(self, project_id):
        _status, quotas = self.api.call(
            "GET", "/quotas", (200,), params={"reference": "project", "reference_id": str(project_id)}
        )
        return (quotas or [{}])[0]

    def _read(self):
        status, _body = self.api.call("HEAD", "/projects", (200, 404), params={"project_name": self.name})
        if status == 404:
            return None
        _status, project = self.api.call("GET", f"/projects/{self.name}", (200,), by_name=True)
        state = {
            "name": project["name"],
            "project_id": project["project_id"],
            "public": project.get("metadata", {}).get("public") == "true",
        }
        if self.storage_limit is not None:
            quota = self._quota(project["project_id"])
            state["storage_limit"] = quota.get("hard", {}).get("storage")
            state["quota_id"] = quota.get("id")
        return state

    @staticmethod
    def _view(state, keys):
        view = {"exists": state is not None}
        if state:
            view.update({key: state[key] for key in keys if key in state})
        return view

    def _wanted(self):
        wanted = {}
        if self.public is not None:
            wanted["public"] = self.public
        if self.storage_limit is not None:
            wanted["storage_limit"] = self.storage_limit
        return wanted

    def _create(self):
        body = {"project_name": self.name, "metadata": {}}
        if self.public is not None:
            # Harbor's project metadata values are strings.
            body["metadata"]["public"] = "true" if self.public else "false"
        if self.storage_limit is not None:
            body["storage_limit"] = self.storage_limit
        status, _body = self.api.call("POST", "/projects", (201, 409), body=body)
        return status == 201

    def _update(self, current, changes):
        if "public" in changes:
            body = {"metadata": {"public": "true" if self.public else "false"}}
            self.api.call("PUT", f"/projects/{self.name}", (200,), body=body, by_name=True)
        if "storage_limit" in changes:
            self.api.call(
                "PUT", f"/quotas/{current['quota_id']}", (200,), body={"hard": {"storage": self.storage_limit}}
            )

    def present(self):
        before = self._read()
        wanted = self._wanted()
        if before is None:
            changes = dict(wanted, exists=True)
        else:
            changes = {key: value for key, value in wanted.items() if before.get(key) != value}
        if changes and not self.module.check_mode:
            if before is None and not self._create():
                # Created by someone else between our read and our write: converge it like an existing one.
                current = self._read()
                self._update(current, {k: v for k, v in wanted.items() if current.get(k) != v})
            elif before is not None:
                self._update(before, changes)
        after = self._read() if changes and not self.module.check_mode else before
        expected_after = dict(self._view(before, wanted), **changes) if changes else self._view(before, wanted)
        return {
            "changed": bool(changes),
            "project": self._public(after),
            "diff": {"before": self._view(before, wanted), "after": expected_after},
        }

    def absent(self):
        before = self._read()
        if before is not None and not self.module.check_mode:
            status, _body = self.api.call("DELETE", f"/projects/{self.name}", (200, 404, 412), by_name=True)
            if status == 412:
                self.module.fail_json(
                    msg=f"Harbor will not delete project {self.name}: it still holds repositories; delete them first",
                    project=self._public(before),
                )
        return {
            "changed": before is not None,
            "project": self._public(before),
            "diff": {"before": self._view(before, ()), "after": {"exists": False}},
        }

    @staticmethod
    def _public(state):
        return {key: value for key, value in (state or {}).items() if key != "quota_id"}

    def run(self):
        try:
            return self.present() if self.module.params["state"] == "present" else self.absent()
        except RegistryError as exc:
            self.module.fail_json(msg=str(exc))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            harbor_api_argument_spec(),
            name={"type": "str", "required": True},
            public={"type": "bool"},
            storage_limit={"type": "int"},
            state={"type": "str", "choices": ["present", "absent"], "default": "present"},
        ),
        required_together=[("username", "password")],
        supports_check_mode=True,
    )
    require_python(module, "mooring.ops.harbor_project")
    if REQUESTS_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("requests"), exception=REQUESTS_IMPORT_ERROR)
    name = module.params["name"]
    if not name or name != name.lower() or not all(char.isalnum() or char in "._-" for char in name):
        module.fail_json(msg=f"name: expected a Harbor project name (lower case, digits, '.', '_', '-'), got {name!r}")
    check_harbor_url(module)
    if module.params["storage_limit"] is not None and module.params["storage_limit"] < -1:
        module.fail_json(msg="storage_limit: expected a number of bytes, or -1 for no limit")
    module.exit_json(**HarborProject(module).run())


if __name__ == "__main__":
    main()
