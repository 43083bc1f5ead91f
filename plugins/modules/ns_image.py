#!/usr/bin/python
# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ns_image
short_description: Pull images into mooring's daemonless runtime store, import docker save archives, remove them
description:
  - Keeps an image in the content-addressed store of mooring's daemonless runtime (no dockerd, no containerd),
    under O(root). Blobs are stored once by digest and only after their sha256 matched; each layer is unpacked
    once (by its uncompressed digest, also checked) with OCI whiteouts turned into overlayfs whiteouts.
  - Pulls from any registry v2 (Harbor, the distribution registry) with basic or bearer-token auth, picking
    linux/amd64 from a manifest list or an OCI index; or imports a C(docker save) archive (O(archive)).
  - O(state=absent) removes the image and the blobs and layers that no other image uses.
version_added: 0.1.0
author:
  - mooring developers (@mooring)
requirements:
  - Python 3.9 or later on the host that runs the module (EL9 and Debian 11 have it as C(/usr/bin/python3)).
  - C(requests) on the host that runs the module (for pulls).
  - root (layers hold files of every owner, and whiteouts are device nodes).
options:
  name:
    description:
      - The image, with its registry, e.g. C(harbor.example.com/library/nginx:1.25) or C(...@sha256:...).
      - With O(archive), the name to record the imported image under; by default the archive's own tags.
    type: str
  archive:
    description: A C(docker save) archive on the host to import instead of pulling.
    type: path
  state:
    description: Whether the image is in the store.
    type: str
    choices: [present, absent]
    default: present
  force_pull:
    description: Ask the registry again even when the image is present, and update it when the tag moved.
    type: bool
    default: false
  root:
    description: The runtime's store.
    type: path
    default: /var/lib/mooring
  username:
    description: Registry user.
    type: str
  password:
    description: Registry password or robot secret.
    type: str
  ca_cert:
    description: The CA that signed the registry's certificate.
    type: path
  validate_certs:
    description:
      - Verify the registry's TLS certificate.
      - V(false) treats the registry as docker's C(insecure-registries) does - https without verification, and
        plain http when the registry does not speak TLS (credentials then travel unencrypted).
    type: bool
    default: true
attributes:
  check_mode:
    description: Reports whether the image would be pulled, imported or removed; writes nothing.
    support: full
  diff_mode:
    description: Shows the image's digest before and after.
    support: full
  idempotent:
    description: An image already present by name is left alone (changed=false) unless O(force_pull) finds it moved.
    support: full
"""

EXAMPLES = r"""
- name: Pull nginx into the runtime's store
  mooring.ops.ns_image:
    name: harbor.example.com/mooring/nginx:1.22
    username: robot$runtime
    password: "{{ vault_robot_secret }}"
    ca_cert: /etc/docker/certs.d/harbor.example.com/ca.crt

- name: Import an image carried offline (docker save -o nginx.tar ...)
  mooring.ops.ns_image:
    archive: /srv/images/nginx.tar

- name: Remove it, and the layers no other image uses
  mooring.ops.ns_image:
    name: harbor.example.com/mooring/nginx:1.22
    state: absent
"""

RETURN = r"""
image:
  description:
    - The image's record in the store (after the run; before it for O(state=absent)).
    - C(manifest_digest) is the linux/amd64 image's manifest; when the tag names a manifest list or an image
      index, C(index_digest) is that list's digest.
  returned: when the image exists
  type: dict
  sample: {"name": "harbor.lab/mooring/nginx:1.22", "manifest_digest": "sha256:1f0e...", "config_digest":
           "sha256:9c4b...", "layers": [{"blob": "sha256:5d2a...", "diff_id": "sha256:7e01..."}], "config": {}}
images:
  description: The names recorded by an O(archive) import.
  returned: with O(archive)
  type: list
  elements: str
  sample: ["harbor.lab/mooring/nginx:1.22"]
removed:
  description: Blobs and layers removed by garbage collection.
  returned: with O(state=absent)
  type: list
  elements: str
  sample: ["sha256:5d2a...", "layer sha256:7e01..."]
"""

import hashlib
import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.mooring.ops.plugins.module_utils.harbor import (
    REQUESTS_IMPORT_ERROR,
    RegistryClient,
    RegistryError,
)
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.layers import (
    ImageError,
    Store,
    import_archive,
    parse_reference,
    pull,
)
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.state import locked
from ansible_collections.mooring.ops.plugins.module_utils.python_floor import require_python


class NsImage:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.store = Store(self.params["root"])

    def _client(self):
        if REQUESTS_IMPORT_ERROR:
            self.module.fail_json(msg=missing_required_lib("requests"), exception=REQUESTS_IMPORT_ERROR)
        registry = parse_reference(self.params["name"])[0]
        return RegistryClient(
            registry,
            username=self.params["username"],
            password=self.params["password"],
            ca_cert=self.params["ca_cert"],
            validate_certs=self.params["validate_certs"],
        )

    def present(self):
        name = self.params["name"]
        before = self.store.image(name)
        if before and not self.params["force_pull"]:
            return {"changed": False, "image": before}
        # One client for the question and the pull: one TLS session, one login or token.
        client = self._client()
        if self.params["force_pull"] and before:
            _registry, repository, tag = parse_reference(name)
            found = client.manifest_raw(repository, tag)
            named = "sha256:" + _sha(found[0]) if found is not None else None
            if named in (before["manifest_digest"], before.get("index_digest")):
                return {"changed": False, "image": before}
        result = {"changed": True, "diff": {"before": _view(before), "after": {"name": name, "pulled": True}}}
        if self.module.check_mode:
            return result
        self.store.ensure()
        record = pull(self.store, client, name)
        self.store.save_image(record)
        if before and before["manifest_digest"] != record["manifest_digest"]:
            self.store.collect_garbage()
        result.update(image=record, diff={"before": _view(before), "after": _view(record)})
        result["changed"] = not before or before["manifest_digest"] != record["manifest_digest"]
        return result

    def imported(self):
        path = self.params["archive"]
        if not os.path.isfile(path):
            self.module.fail_json(msg=f"archive {path} does not exist or is not a file")
        if self.params["name"] and self.store.image(self.params["name"]) and not self.params["force_pull"]:
            return {"changed": False, "image": self.store.image(self.params["name"]), "images": [self.params["name"]]}
        if self.module.check_mode:
            return {"changed": True, "images": [self.params["name"]] if self.params["name"] else []}
        self.store.ensure()
        records = import_archive(self.store, path, self.params["name"])
        if not records:
            self.module.fail_json(msg=f"archive {path} has no tagged image; give name")
        changed = False
        for record in records:
            before = self.store.image(record["name"])
            if not before or before["manifest_digest"] != record["manifest_digest"]:
                self.store.save_image(record)
                changed = True
        self.store.collect_garbage()
        return {"changed": changed, "images": [record["name"] for record in records], "image": records[0]}

    def absent(self):
        name = self.params["name"]
        before = self.store.image(name)
        if not before:
            return {"changed": False}
        result = {"changed": True, "image": before, "diff": {"before": _view(before), "after": {}}}
        if self.module.check_mode:
            return result
        self.store.remove_image(name)
        result["removed"] = self.store.collect_garbage()
        return result

    def run(self):
        if self.params["state"] == "absent":
            return self.absent()
        if self.params["archive"]:
            return self.imported()
        return self.present()


def _sha(raw):
    return hashlib.sha256(raw).hexdigest()


def _view(record):
    return {"name": record["name"], "digest": record["manifest_digest"]} if record else {}


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str"},
            "archive": {"type": "path"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "force_pull": {"type": "bool", "default": False},
            "root": {"type": "path", "default": "/var/lib/mooring"},
            "username": {"type": "str"},
            "password": {"type": "str", "no_log": True},
            "ca_cert": {"type": "path"},
            "validate_certs": {"type": "bool", "default": True},
        },
        required_one_of=[("name", "archive")],
        required_if=[("state", "absent", ("name",))],
        supports_check_mode=True,
    )
    require_python(module, "mooring.ops.ns_image")
    if module.params["archive"] is not None and not module.params["archive"].strip():
        module.fail_json(msg="archive must be the path of a docker save archive, got an empty string")
    if module.params["name"] is not None and not module.params["name"].strip():
        module.fail_json(msg="name must be an image reference such as harbor.example.com/project/name:tag, got ''")
    image = NsImage(module)
    try:
        if module.params["state"] == "present" and not module.params["archive"]:
            parse_reference(module.params["name"])
        with locked(os.path.join(module.params["root"], "store.lock"), create=not module.check_mode):
            result = image.run()
    except (ImageError, RegistryError) as exc:
        module.fail_json(msg=f"name {module.params['name'] or module.params['archive']}: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
