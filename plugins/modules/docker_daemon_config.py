#!/usr/bin/python
# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: docker_daemon_config
short_description: Merge settings into the Docker daemon's daemon.json, validated before it replaces the file
description:
  - Reads the existing C(daemon.json), deep-merges O(config) into it and writes the result only when the
    effective configuration (the parsed JSON, not its formatting) changes.
  - Keys that O(config) does not name are kept as they are, so settings made by other tools or by hand survive.
  - Objects are merged key by key; any other value (a list, a string, a number) given in O(config) replaces
    the existing one, so that a list such as C(registry-mirrors) says exactly what the daemon gets.
  - The merged file is validated before it replaces the old one, with C(dockerd --validate) where the installed
    dockerd supports it (Docker 23 and later), and as a JSON object always.
  - An existing file that is not valid JSON makes the module fail, naming the file, and nothing is changed.
  - It does not restart the daemon; use the module's RV(ignore:changed) to notify a handler.
  - A C(hosts) list with a C(tcp://) socket and without C(tlsverify) makes the module warn, as that socket gives
    root on the host to anyone who reaches it.
version_added: 0.1.0
author:
  - mooring developers (@mooring)
requirements:
  - Python 3.9 or later on the host that runs the module (EL9 and Debian 11 have it as C(/usr/bin/python3)).
options:
  path:
    description: Path of the daemon configuration file.
    type: path
    default: /etc/docker/daemon.json
  config:
    description:
      - Settings to merge into the file, with the key names of C(daemon.json), for example
        C(registry-mirrors) or C(insecure-registries).
    type: dict
    required: true
  validate:
    description:
      - Run C(dockerd --validate --config-file) on the merged file before it replaces the existing one,
        where the installed dockerd supports that flag.
    type: bool
    default: true
  dockerd_path:
    description:
      - The dockerd binary used for validation. Looked up on E(PATH) when not given.
    type: path
  record:
    description:
      - A file where the module keeps the top-level keys it set (a JSON list, mode 0600). On the next run, a key in
        that record and no longer in O(config) is removed from the daemon configuration, so that a setting taken
        out of the inventory leaves the file too (and C(--diff) shows it go). Keys the module never set are kept.
      - Without it, the module only adds and changes keys.
    type: path
  backup:
    description: Keep a timestamped copy of the previous file beside it before replacing it.
    type: bool
    default: true
  mode:
    description: Permissions of the written file.
    type: raw
    default: "0644"
attributes:
  check_mode:
    description: Reports what would change, from the file alone, and writes nothing.
    support: full
  diff_mode:
    description: Shows the file before and after the merge.
    support: full
  idempotent:
    description: A second run with the same O(config) changes nothing.
    support: full
notes:
  - Formatting of the written file is C(json) with two-space indentation and sorted keys.
"""

EXAMPLES = r"""
- name: Configure registry mirrors and an insecure registry
  mooring.ops.docker_daemon_config:
    config:
      registry-mirrors:
        - https://mirror.example.com
      insecure-registries:
        - harbor.example.com:5000
      log-driver: json-file
      log-opts:
        max-size: 50m
  notify: Restart docker

- name: Remove every registry mirror while keeping the rest of the file
  mooring.ops.docker_daemon_config:
    config:
      registry-mirrors: []

- name: Manage keys with a record, so that a key dropped from config is removed from the file on the next run
  mooring.ops.docker_daemon_config:
    config:
      log-driver: json-file
    record: /etc/docker/mooring-managed-keys.json
"""

RETURN = r"""
config:
  description: The effective configuration after the merge.
  returned: success
  type: dict
  sample: {"insecure-registries": ["harbor.lab"], "registry-mirrors": ["https://mirror.example.com"]}
backup_file:
  description: Path of the copy of the previous file, when one was made.
  returned: changed and a previous file existed and O(backup=true)
  type: str
  sample: /etc/docker/daemon.json.12345.2026-11-23@10:11:12~
removed_keys:
  description: Keys removed because the O(record) holds them and O(config) no longer does.
  returned: success
  type: list
  elements: str
  sample: ["registry-mirrors"]
record_before:
  description: The keys the O(record) held before this run changed it (null when there was no record).
  returned: the record changed
  type: list
  elements: str
  sample: ["insecure-registries", "live-restore"]
validated_with:
  description: How the merged file was validated before it was written.
  returned: changed
  type: str
  sample: dockerd --validate
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mooring.ops.plugins.module_utils.python_floor import require_python


def _deep_merge(base, overlay):
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge_config(existing, overlay, recorded=None):
    """daemon.json as it should be: ``overlay`` merged deep into ``existing``, less the keys that were managed
    once (``recorded``) and are no longer in ``overlay``. Keys nobody manages stay. Returns (merged, dropped)."""
    dropped = sorted(key for key in recorded or [] if key not in overlay and key in existing)
    merged = _deep_merge({key: value for key, value in existing.items() if key not in dropped}, overlay)
    return merged, dropped


def _render(config):
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


class DaemonConfig:
    def __init__(self, module):
        self.module = module
        self.path = module.params["path"]
        self.overlay = module.params["config"]

    def _read_existing(self):
        if not os.path.exists(self.path):
            return "", {}
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            self.module.fail_json(msg=f"Cannot read {self.path}: {exc}")
        if not text.strip():
            return text, {}
        try:
            existing = json.loads(text)
        except ValueError as exc:
            self.module.fail_json(
                msg=f"{self.path} is not valid JSON ({exc}); fix or remove it by hand, nothing was changed"
            )
        if not isinstance(existing, dict):
            self.module.fail_json(
                msg=f"{self.path} must hold a JSON object, found {type(existing).__name__}; nothing was changed"
            )
        return text, existing

    def _dockerd_validate_command(self, candidate):
        if not self.module.params["validate"]:
            return None
        dockerd = self.module.params["dockerd_path"] or self.module.get_bin_path("dockerd")
        if not dockerd:
            return None
        rc, out, err = self.module.run_command([dockerd, "--help"])
        if rc != 0 or "--validate" not in out + err:
            return None
        return [dockerd, "--validate", "--config-file", candidate]

    def _write(self, text):
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755)
        fd, candidate = tempfile.mkstemp(prefix=".daemon.json.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            validated_with = "json"
            command = self._dockerd_validate_command(candidate)
            if command:
                rc, out, err = self.module.run_command(command)
                if rc != 0:
                    self.module.fail_json(
                        msg=f"dockerd refused the merged configuration for {self.path}; nothing was changed: "
                        f"{(err or out).strip()}",
                        config=json.loads(text),
                    )
                validated_with = "dockerd --validate"
            backup_file = None
            if self.module.params["backup"] and os.path.exists(self.path):
                backup_file = self.module.backup_local(self.path)
            self.module.atomic_move(candidate, self.path)
            candidate = None
        finally:
            if candidate and os.path.exists(candidate):
                os.unlink(candidate)
        self.module.set_mode_if_different(self.path, self.module.params["mode"], False)
        return validated_with, backup_file

    def _recorded_keys(self):
        """The keys of the record, or None when there is no record (yet)."""
        record = self.module.params["record"]
        if not record or not os.path.exists(record):
            return None
        try:
            with open(record, encoding="utf-8") as handle:
                keys = json.load(handle)
        except (OSError, ValueError) as exc:
            self.module.fail_json(msg=f"record: {record} is not the JSON list of keys this module writes ({exc})")
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            self.module.fail_json(msg=f"record: {record} must hold a JSON list of key names")
        return keys

    def _write_record(self, keys, recorded, result):
        """Write the record when it differs from ``recorded`` (its keys as read, None when there was no record);
        return whether it did. ``record_before`` in the result lets a caller that rolls the file back roll the
        record back too."""
        keys = sorted(keys)
        if recorded == keys:
            return False
        result["record_before"] = recorded
        if self.module.check_mode:
            return True
        record = self.module.params["record"]
        fd, candidate = tempfile.mkstemp(prefix=".mooring-keys.", dir=os.path.dirname(record) or ".")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(keys) + "\n")
        self.module.atomic_move(candidate, record)
        os.chmod(record, 0o600)
        return True

    def run(self):
        before_text, existing = self._read_existing()
        recorded = self._recorded_keys()
        merged, dropped = merge_config(existing, self.overlay, recorded)
        plain = [host for host in merged.get("hosts") or [] if str(host).startswith("tcp://")]
        if plain and merged.get("tlsverify") is not True:
            self.module.warn(
                f"{self.path} makes dockerd listen on {', '.join(plain)} without tlsverify: anyone who reaches "
                "the port controls the engine and is root on this host"
            )
        result = {"changed": False, "config": merged, "removed_keys": dropped}
        if merged == existing and os.path.exists(self.path):
            result["changed"] = self.module.set_mode_if_different(self.path, self.module.params["mode"], False)
            if self.module.params["record"]:
                result["changed"] = self._write_record(self.overlay, recorded, result) or result["changed"]
            return result
        after_text = _render(merged)
        result["changed"] = True
        if self.module._diff:
            result["diff"] = {
                "before": before_text,
                "after": after_text,
                "before_header": self.path,
                "after_header": self.path,
            }
        if self.module.check_mode:
            return result
        validated_with, backup_file = self._write(after_text)
        if self.module.params["record"]:
            self._write_record(self.overlay, recorded, result)
        result["validated_with"] = validated_with
        if backup_file:
            result["backup_file"] = backup_file
        return result


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "default": "/etc/docker/daemon.json"},
            "config": {"type": "dict", "required": True},
            "validate": {"type": "bool", "default": True},
            "dockerd_path": {"type": "path"},
            "record": {"type": "path"},
            "backup": {"type": "bool", "default": True},
            "mode": {"type": "raw", "default": "0644"},
        },
        supports_check_mode=True,
    )
    require_python(module, "mooring.ops.docker_daemon_config")
    module.exit_json(**DaemonConfig(module).run())


if __name__ == "__main__":
    main()
