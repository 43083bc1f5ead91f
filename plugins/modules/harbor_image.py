#!/usr/bin/python
# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: harbor_image
short_description: Tag a local image and push it to Harbor (or any registry v2), idempotent by digest
description:
  - Tags a local Docker image as C(<registry>/<project>/<repository>:<tag>) and pushes it with the Docker SDK for
    Python, as C(docker tag) and C(docker push) do by hand.
  - Before pushing, asks the registry (C(GET /v2/<name>/manifests/<tag>), with basic or bearer-token auth as the
    registry asks) which image it holds under that tag. When that is the local image (same image ID), nothing
    is pushed and RV(ignore:changed) is false. Check mode answers from that question alone.
  - O(state=absent) deletes the tag's manifest from the registry (registry v2 C(DELETE)), where the registry
    allows it.
version_added: 0.1.0
author:
  - mooring developers (@mooring)
requirements:
  - Python 3.9 or later on the host that runs the module (EL9 and Debian 11 have it as C(/usr/bin/python3)).
  - Docker SDK for Python (C(docker)) and C(requests) on the host that holds the image.
options:
  source:
    description: The local image, by name[:tag] or ID. Required with O(state=present).
    type: str
  registry:
    description:
      - The registry, C(host[:port]) as the Docker daemon names it, or Harbor's URL C(https://host[:port]) (the
        scheme is dropped), so that one O(harbor_url) in C(module_defaults) for C(group/mooring.ops.harbor) serves
        this module and the Harbor API modules alike.
      - If not set, the environment variable C(HARBOR_URL).
    type: str
    required: true
    aliases: [harbor_url]
  project:
    description: The Harbor project (for a plain registry, the first path component), for example C(library).
    type: str
    required: true
  repository:
    description: The repository inside the project. Defaults to the last path component of the source's name.
    type: str
  tag:
    description: The tag in the registry. Defaults to the source's tag, or C(latest).
    type: str
  username:
    description:
      - User name for the registry (a Harbor user or robot account).
      - If not set, the environment variable C(HARBOR_USERNAME).
    type: str
  password:
    description:
      - Password or robot secret. Never logged.
      - If not set, the environment variable C(HARBOR_PASSWORD).
    type: str
  validate_certs:
    description:
      - Verify the registry's TLS certificate for the module's own API calls.
      - V(false) treats the registry as docker's C(insecure-registries) does - https without verification, and
        plain http when the registry does not speak TLS. The daemon, which pushes, needs the registry in its own
        C(insecure-registries) (docker_host's C(docker_host_insecure_registries)).
    type: bool
    default: true
  ca_cert:
    description:
      - CA file that signed the registry's certificate, for the module's own API calls. The Docker daemon, which
        pushes, trusts the registry through C(/etc/docker/certs.d/<registry>/ca.crt) (see the docker_host role).
    type: path
  state:
    description: C(present) pushes the image; C(absent) deletes the tag's manifest.
    type: str
    choices: [present, absent]
    default: present
  timeout:
    description: Seconds for each registry API call and for the Docker daemon's answers.
    type: int
    default: 120
attributes:
  check_mode:
    description: Asks the registry which image the tag holds, and pushes or deletes nothing.
    support: full
  diff_mode:
    description: Shows the tag's digest before and after.
    support: full
  idempotent:
    description: A second run pushes nothing when the registry already holds the image under the tag.
    support: full
"""

EXAMPLES = r"""
- name: Push the locally built nginx image to Harbor
  mooring.ops.harbor_image:
    source: mooring/nginx:1.22
    registry: harbor.example.com
    project: library
    username: robot$ci
    password: "{{ vault_harbor_robot_secret }}"
    ca_cert: /etc/docker/certs.d/harbor.example.com/ca.crt
  register: pushed

- name: Push centos as library/centos:v1 (the course notes' docker tag + docker push)
  mooring.ops.harbor_image:
    source: centos:latest
    registry: harbor.example.com
    project: library
    tag: v1
    username: admin
    password: "{{ vault_harbor_admin_password }}"

- name: Remove a tag from the registry
  mooring.ops.harbor_image:
    registry: harbor.example.com
    project: library
    repository: centos
    tag: v1
    username: admin
    password: "{{ vault_harbor_admin_password }}"
    state: absent
"""

RETURN = r"""
image:
  description: The full reference in the registry.
  returned: always
  type: str
  sample: harbor.example.com/library/nginx:1.22
digest:
  description: The digest of the manifest that the registry holds under the tag (after the run; before, for absent).
  returned: when the registry holds the tag
  type: str
  sample: sha256:7d0e1e6e6f7d2c1a5f3b8a8c1d3e5f7a9b0c2d4e6f8a0b1c3d5e7f9a1b3c5d7e
diff:
  description: The tag's digest before and after.
  returned: always
  type: dict
  sample: {"before": {"digest": null}, "after": {"digest": "sha256:7d0e..."}}
"""

import re
import traceback

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib
from ansible_collections.mooring.ops.plugins.module_utils.harbor import (
    REQUESTS_IMPORT_ERROR,
    RegistryClient,
    RegistryError,
    registry_credentials_spec,
    registry_host,
)
from ansible_collections.mooring.ops.plugins.module_utils.python_floor import require_python

try:
    import docker
    from docker.errors import APIError, DockerException, ImageNotFound
except ImportError:
    docker = None
    DOCKER_IMPORT_ERROR = traceback.format_exc()
else:
    DOCKER_IMPORT_ERROR = None


IMAGE_ID = re.compile(r"(sha256:[0-9a-f]{64}|[0-9a-f]{12,64})")


def _split_reference(reference):
    """name and tag of a reference such as host:5000/a/b:tag (a digest reference keeps its name only); an image
    ID (sha256:..., or 12 to 64 hex digits as docker prints them) has neither."""
    if IMAGE_ID.fullmatch(reference):
        return None, None
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        return name, tag
    return name, None


class HarborImage:
    def __init__(self, module):
        self.module = module
        params = module.params
        self.registry = registry_host(params["registry"])
        self.source = params["source"]
        source_name, source_tag = _split_reference(self.source or "")
        if not (params["repository"] or source_name):
            module.fail_json(msg=f"repository: source {self.source} is an image ID, which names no repository; set one")
        self.repository_path = "/".join([params["project"], params["repository"] or source_name.rsplit("/", 1)[-1]])
        self.repository_path = self.repository_path.strip("/")
        self.tag = params["tag"] or source_tag or "latest"
        self.target_repo = f"{self.registry}/{self.repository_path}"
        self.image = f"{self.target_repo}:{self.tag}"
        self.client = RegistryClient(
            self.registry,
            username=params["username"],
            password=params["password"],
            ca_cert=params["ca_cert"],
            validate_certs=params["validate_certs"],
            timeout=params["timeout"],
        )

    def _result(self, changed, before, after):
        diff = {"before": {"digest": before}, "after": {"digest": after}}
        result = {"changed": changed, "image": self.image, "diff": diff}
        if after or before:
            result["digest"] = after if after else before
        return result

    def _docker(self):
        try:
            return docker.from_env(timeout=self.module.params["timeout"])
        except DockerException as exc:
            self.module.fail_json(msg=f"cannot talk to the Docker daemon: {exc}")

    def _push(self, engine, local):
        local.tag(self.target_repo, tag=self.tag)
        auth = None
        if self.module.params["username"]:
            auth = {"username": self.module.params["username"], "password": self.module.params["password"]}
        try:
            for line in engine.api.push(self.target_repo, tag=self.tag, auth_config=auth, stream=True, decode=True):
                if "errorDetail" in line or "error" in line:
                    detail = line.get("errorDetail", {}).get("message") or line.get("error")
                    self.module.fail_json(msg=self._explain_push_error(detail), image=self.image)
        except APIError as exc:
            self.module.fail_json(msg=self._explain_push_error(str(exc)), image=self.image)

    def _explain_push_error(self, detail):
        project = self.repository_path.split("/", 1)[0]
        lowered = detail.lower()
        if "unauthorized" in lowered or "authentication required" in lowered:
            return f"the registry {self.registry} rejected the push by user {self.module.params['username']}: {detail}"
        if "denied" in lowered or "not found" in lowered:
            return (
                f"the registry {self.registry} refused the push to {self.repository_path}: does project {project} "
                f"exist, and may user {self.module.params['username']} push to it? See mooring.ops.harbor_project. "
                f"({detail})"
            )
        if "x509" in lowered or "certificate" in lowered:
            return (
                f"the Docker daemon does not trust the certificate of {self.registry}: put its CA in "
                f"/etc/docker/certs.d/{self.registry}/ca.crt (docker_host_registry_ca_certs) ({detail})"
            )
        return f"pushing {self.image} failed: {detail}"

    def present(self):
        if not self.source:
            self.module.fail_json(msg="source is required with state=present: the local image to push")
        engine = self._docker()
        try:
            local = engine.images.get(self.source)
        except ImageNotFound:
            self.module.fail_json(msg=f"the image {self.source} is not present locally; build or pull it first")
        except DockerException as exc:
            self.module.fail_json(msg=f"cannot inspect the image {self.source}: {exc}")
        before, config_digest = self.client.tag_digests(self.repository_path, self.tag)
        if before and config_digest == local.id:
            return self._result(False, before, before)
        if self.module.check_mode:
            return self._result(True, before, None)
        self._push(engine, local)
        after = self.client.manifest_digest(self.repository_path, self.tag)
        return self._result(after != before, before, after)

    def absent(self):
        before = self.client.manifest_digest(self.repository_path, self.tag)
        if not before:
            return self._result(False, None, None)
        if not self.module.check_mode:
            self.client.delete_manifest(self.repository_path, before)
        return self._result(True, before, None)

    def run(self):
        try:
            return self.present() if self.module.params["state"] == "present" else self.absent()
        except RegistryError as exc:
            self.module.fail_json(msg=str(exc), image=self.image)


def main():
    module = AnsibleModule(
        argument_spec={
            "source": {"type": "str"},
            **registry_credentials_spec(),
            "registry": {
                "type": "str",
                "required": True,
                "aliases": ["harbor_url"],
                "fallback": (env_fallback, ["HARBOR_URL"]),
            },
            "project": {"type": "str", "required": True},
            "repository": {"type": "str"},
            "tag": {"type": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "timeout": {"type": "int", "default": 120},
        },
        required_if=[("state", "present", ["source"]), ("state", "absent", ["repository"])],
        required_together=[("username", "password")],
        supports_check_mode=True,
    )
    require_python(module, "mooring.ops.harbor_image")
    try:
        registry_host(module.params["registry"])
    except ValueError as exc:
        module.fail_json(msg=f"registry: {exc}")
    if DOCKER_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("docker"), exception=DOCKER_IMPORT_ERROR)
    if REQUESTS_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("requests"), exception=REQUESTS_IMPORT_ERROR)
    module.exit_json(**HarborImage(module).run())


if __name__ == "__main__":
    main()
