# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: ns_container
short_description: Run Ansible tasks inside containers of mooring's daemonless runtime
description:
  - Runs commands inside a running container of M(mooring.ops.ns_container) by joining its namespaces, root,
    cgroup, capability set and seccomp filter with C(setns) (the runtime's exec), and copies files as the
    container's user from inside its mount namespace and root (a link in the container never leads to a host
    path), so the container needs no SSH and no agent - only a Python for modules.
  - Runs on the host of the containers, as root.
author:
  - mooring developers (@mooring)
version_added: 0.1.0
options:
  remote_addr:
    description: The container's name.
    default: inventory_hostname
    type: str
    vars:
      - name: inventory_hostname
      - name: ansible_host
  root:
    description: The runtime's store (as given to M(mooring.ops.ns_container)).
    default: /var/lib/mooring
    type: str
    vars:
      - name: ansible_ns_container_root
  run_dir:
    description: The runtime's state directory (as given to M(mooring.ops.ns_container)).
    default: /run/mooring
    type: str
    vars:
      - name: ansible_ns_container_run_dir
"""

import os

from ansible.errors import AnsibleConnectionFailure, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.container import ContainerError, Runtime


class Connection(ConnectionBase):
    """Tasks inside a runtime container, by setns."""

    transport = "mooring.ops.ns_container"
    has_pipelining = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._runtime = None
        self._name = None

    def _connect(self):
        if not self._connected:
            self._name = self.get_option("remote_addr")
            self._runtime = Runtime(self.get_option("root"), self.get_option("run_dir"))
            state = self._runtime.state(self._name)
            if not state or state.get("status") != "running":
                raise AnsibleConnectionFailure(f"ns_container {self._name} is not running")
            self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=False):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._connect()
        try:
            return self._runtime.exec(self._name, ["/bin/sh", "-c", to_text(cmd)], stdin=in_data or b"")
        except ContainerError as exc:
            raise AnsibleConnectionFailure(str(exc)) from exc

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        self._connect()
        if not os.path.exists(to_bytes(in_path)):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        with open(to_bytes(in_path), "rb") as source:
            try:
                # Written by the container's user inside its own mount namespace and root (as exec runs), so
                # the file is the user's and a link in the container never leads to a host path.
                self._runtime.copy(self._name, source.fileno(), to_text(out_path), into=True)
            except (OSError, ContainerError) as exc:
                raise AnsibleConnectionFailure(f"cannot copy {in_path} into {self._name}:{out_path}: {exc}") from exc

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        self._connect()
        with open(to_bytes(out_path), "wb") as target:
            try:
                self._runtime.copy(self._name, target.fileno(), to_text(in_path), into=False)
            except (OSError, ContainerError) as exc:
                raise AnsibleConnectionFailure(f"cannot fetch {self._name}:{in_path}: {exc}") from exc

    def close(self):
        self._connected = False
