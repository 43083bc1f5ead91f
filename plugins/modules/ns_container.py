#!/usr/bin/python
# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ns_container
short_description: Run containers with mooring's daemonless runtime - Linux namespaces, cgroups and overlayfs
description:
  - Creates, starts, stops, pauses and removes containers directly on the kernel, without dockerd or runc, from
    images that M(mooring.ops.ns_image) put in the runtime's store. Option names follow
    M(community.docker.docker_container).
  - Each container gets an overlay root over the image's layers, new mount, UTS, IPC, PID and (bridge) network
    namespaces, C(pivot_root), C(/proc) with runc's masked and read-only paths (C(/proc/sys) among them), a
    minimal C(/dev) behind a default-deny device cgroup, a read-only C(/sys), Docker's default capabilities (the
    inheritable and ambient sets empty), a seccomp filter with the semantics of Docker's default profile,
    C(no_new_privs), C(nofile) 1024, a cgroup (v1 or v2, detected) with its limits, and a shim process that
    supervises it, keeps its log and applies the restart policy.
  - The container's settings are written as an OCI runtime-spec document (C(config.json) in its directory under
    O(root), mode 0600), and that document is what the runtime applies.
  - A container whose configuration differs from the task is recreated, and C(--diff) shows what differs.
  - Every failure, and O(state=absent), leaves no mount, cgroup, veth, network namespace, iptables rule, lease or
    process behind.
version_added: 0.1.0
author:
  - mooring developers (@mooring)
requirements:
  - Python 3.9 or later on the host that runs the module (EL9 and Debian 11 have it as C(/usr/bin/python3)).
  - root, C(ip) (iproute2) and C(iptables) on the host.
options:
  name:
    description: The container's name (letters, digits, C(_), C(.) and C(-)).
    type: str
    required: true
  image:
    description:
      - An image in the runtime's store (pull it with M(mooring.ops.ns_image)). Required unless O(state=absent).
    type: str
  command:
    description: The command (the image's C(Cmd) when omitted).
    type: raw
  entrypoint:
    description: The entrypoint (the image's C(Entrypoint) when omitted).
    type: list
    elements: str
  env:
    description: Environment variables, added to the image's.
    type: dict
    default: {}
  working_dir:
    description: The working directory (the image's when omitted).
    type: str
  user:
    description: C(uid) or C(uid:gid) (numeric; the image's when omitted).
    type: str
  hostname:
    description: The hostname (the container's name when omitted).
    type: str
  state:
    description: What the container should be.
    type: str
    choices: [present, started, stopped, paused, absent]
    default: started
  memory:
    description: Memory limit, e.g. C(512m).
    type: str
  memory_swap:
    description: Memory plus swap limit, e.g. C(1g); C(-1) for unlimited swap.
    type: str
  cpus:
    description: CPU quota in cores, e.g. C(0.5).
    type: float
  cpu_shares:
    description: Relative CPU weight (v1 shares; mapped to a v2 weight).
    type: int
  cpuset_cpus:
    description: CPUs the container may use, e.g. C(0-1).
    type: str
  pids_limit:
    description: Maximum number of processes.
    type: int
  network:
    description: C(bridge) (a veth on the runtime's bridge, NAT), C(host), or C(none) (loopback only).
    type: str
    choices: [bridge, host, none]
    default: bridge
  published_ports:
    description: C(host_port:container_port[/tcp|udp]) (bridge network only).
    type: list
    elements: str
    default: []
  volumes:
    description: C(host_path:container_path[:ro]); the host path must exist.
    type: list
    elements: str
    default: []
  read_only:
    description: Mount the root file system read-only.
    type: bool
    default: false
  tmpfs:
    description: Paths to mount a tmpfs on.
    type: list
    elements: str
    default: []
  restart_policy:
    description: C(no), C(on-failure), C(on-failure:N) or C(always).
    type: str
    default: "no"
  stop_timeout:
    description: Seconds between SIGTERM and SIGKILL when stopping.
    type: int
    default: 10
  capabilities:
    description: Capabilities added to Docker's default set (C(ALL) for every one the host can hand on).
    type: list
    elements: str
    default: []
  cap_drop:
    description: Capabilities removed from it (C(ALL) for all).
    type: list
    elements: str
    default: []
  privileged:
    description:
      - Every capability this host can hand on, no seccomp filter, no masked or read-only paths, a writable
        C(/sys) and every device allowed - the container is then as powerful as root on the host.
    type: bool
    default: false
  security_opts:
    description:
      - C(seccomp=unconfined), C(seccomp=/path/profile.json) (Docker's profile format), and
        C(no-new-privileges=false) to let set-id programs gain privileges (on by default).
      - There are no AppArmor or SELinux labels.
    type: list
    elements: str
    default: []
  devices:
    description: Host devices to make and allow in the container, C(host_path[:container_path[:rwm]]).
    type: list
    elements: str
    default: []
  sysctls:
    description:
      - Namespaced kernel parameters only (C(net.*) unless O(network=host), C(kernel.msg*), C(kernel.sem),
        C(kernel.shm*), C(fs.mqueue.*)); others would change the whole host and are refused.
    type: dict
    default: {}
  oom_score_adj:
    description: The container's OOM score adjustment, from C(-1000) (never killed first) to C(1000).
    type: int
  ulimits:
    description:
      - Resource limits, C(name:soft[:hard]), e.g. C(nofile:4096:8192). The default is C(nofile:1024:1024), as
        with C(runc spec). A hard limit above the host's own is refused (it needs CAP_SYS_RESOURCE).
    type: list
    elements: str
    default: []
  root:
    description: The runtime's store of images and containers' writable layers.
    type: path
    default: /var/lib/mooring
  run_dir:
    description: The runtime's state (containers' state.json, leases).
    type: path
    default: /run/mooring
  bridge:
    description: The bridge of the bridge network.
    type: str
    default: mooring0
  subnet:
    description: The bridge network's subnet.
    type: str
    default: 10.88.0.0/16
attributes:
  check_mode:
    description: Reports what would be created, recreated, started, stopped or removed; changes nothing.
    support: full
  diff_mode:
    description: Shows the options that differ (recreate) and the state before and after.
    support: full
  idempotent:
    description: A container that matches the task is left alone.
    support: full
"""

EXAMPLES = r"""
- name: nginx from the runtime's store, limited, on port 8080
  mooring.ops.ns_container:
    name: web
    image: harbor.example.com/mooring/nginx:1.22
    memory: 256m
    cpus: 0.5
    pids_limit: 200
    published_ports: ["8080:80"]
    volumes: ["/srv/web/html:/usr/share/nginx/html:ro"]
    restart_policy: on-failure:3

- name: Remove it, without a trace
  mooring.ops.ns_container:
    name: web
    state: absent
"""

RETURN = r"""
container:
  description: The container after the run.
  returned: unless O(state=absent)
  type: dict
  sample: {"id": "web", "state": "running", "pid": 4242, "ip": "10.88.0.2",
           "cgroup": "/sys/fs/cgroup/memory/mooring/web", "rootfs": "/var/lib/mooring/containers/web/merged",
           "exit_code": null, "restart_count": 0}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import cgroups, spec
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.container import (
    ContainerError,
    Runtime,
    check_name,
    parse_ports,
    parse_restart_policy,
    parse_volumes,
)
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.network import NetworkError
from ansible_collections.mooring.ops.plugins.module_utils.python_floor import require_python

RUNNING = ("running", "starting")


class NsContainer:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.name = self.params["name"]
        self.runtime = Runtime(
            self.params["root"], self.params["run_dir"], self.params["bridge"], self.params["subnet"]
        )

    def wanted(self):
        """The task as the runtime's config (the same shape the runtime stores, so they compare)."""
        params = self.params
        record = self.runtime.store.image(params["image"])
        if record is None:
            raise ValueError(
                f"image {params['image']} is not in the runtime's store; pull it with mooring.ops.ns_image"
            )
        image = record.get("config") or {}
        command = params["command"]
        if isinstance(command, str):
            command = ["/bin/sh", "-c", command]
        argv = list(params["entrypoint"] if params["entrypoint"] is not None else image.get("Entrypoint") or [])
        argv += list(command if command is not None else image.get("Cmd") or [])
        if not argv:
            raise ValueError("command: the image has no Cmd or Entrypoint; give command")
        env = dict(item.split("=", 1) for item in image.get("Env") or [] if "=" in item)
        env.update({key: str(value) for key, value in params["env"].items()})
        # As Docker: a PATH when the image has none, HOME for the user, HOSTNAME.
        user = params["user"] or image.get("User") or None
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.setdefault("HOME", "/root" if str(user or "0").split(":", maxsplit=1)[0] in ("0", "root") else "/")
        env.setdefault("HOSTNAME", params["hostname"] or self.name)
        memory = cgroups.parse_size(params["memory"], "memory") if params["memory"] else None
        swap = None
        if params["memory_swap"]:
            swap = (
                -1 if str(params["memory_swap"]) == "-1" else cgroups.parse_size(params["memory_swap"], "memory_swap")
            )
        if params["cpus"] is not None and not 0 < params["cpus"] <= os.cpu_count():
            raise ValueError(f"cpus must be more than 0 and at most {os.cpu_count()}, got {params['cpus']}")
        if params["network"] != "bridge" and params["published_ports"]:
            raise ValueError("published_ports needs network: bridge")
        security = spec.options_config(params)
        return {
            "image": params["image"],
            "image_digest": record["manifest_digest"],
            "argv": argv,
            "env": env,
            "working_dir": params["working_dir"] or image.get("WorkingDir") or "/",
            "user": user,
            "hostname": params["hostname"] or self.name,
            "limits": {
                "memory": memory,
                "memory_swap": swap,
                "cpus": params["cpus"],
                "cpu_shares": params["cpu_shares"],
                "cpuset_cpus": params["cpuset_cpus"],
                "pids_limit": params["pids_limit"],
            },
            "network": params["network"],
            "published_ports": parse_ports(params["published_ports"]),
            "volumes": parse_volumes(params["volumes"]),
            "read_only": params["read_only"],
            "tmpfs": list(params["tmpfs"]),
            "restart_policy": parse_restart_policy(params["restart_policy"]),
            **security,
        }

    def _view(self):
        state = self.runtime.state(self.name)
        if not state:
            return {}
        config = self.runtime.config(self.name) or {}
        return {
            "id": self.name,
            "state": state.get("status"),
            "pid": state.get("pid") if state.get("status") in ("running", "paused") else None,
            "ip": state.get("ip"),
            "cgroup": state.get("cgroup"),
            "rootfs": state.get("rootfs"),
            "exit_code": state.get("exit_code"),
            "oom_killed": state.get("oom_killed", False),
            "restart_count": state.get("restart_count", 0),
            "image": config.get("image"),
            "error": state.get("error"),
        }

    @staticmethod
    def _transitions(target, current):
        """The steps from the container's status to the task's state (after any create)."""
        running = current in RUNNING
        if target == "started" and (not running or current == "paused"):
            return ["unpause" if current == "paused" else "start"]
        if target == "paused" and current != "paused":
            return ([] if running else ["start"]) + ["pause"]
        if target == "stopped" and current in ("running", "paused", "starting"):
            return ["stop"]
        return []

    def run(self):
        target = self.params["state"]
        state = self.runtime.state(self.name)
        current = state.get("status") if state else "absent"
        changes, actions = [], []
        if target == "absent":
            if current != "absent":
                actions.append("remove")
        else:
            if self.module.check_mode and self.runtime.store.image(self.params["image"]) is None:
                # ns_image in the same play would pull it; check mode can only say that the container would come.
                return {"changed": True, "actions": ["create", "start"], "container": self._view()}
            wanted = self.wanted()
            existing = self.runtime.config(self.name) if current != "absent" else None
            if existing is not None and existing != wanted:
                changes = sorted(key for key in wanted if wanted.get(key) != existing.get(key))
                actions += ["remove", "create"]
                current = "absent"
            elif existing is None:
                actions.append("create")
            actions += self._transitions(target, current)
        before = self._view()
        shown = {"started": "running", "stopped": "exited"}.get(target, target)
        diff = {"before": {"state": before.get("state", "absent")}, "after": {"state": shown}}
        if changes:
            existing = self.runtime.config(self.name) or {}
            diff["before"].update({key: existing.get(key) for key in changes})
            diff["after"].update({key: wanted[key] for key in changes})
            if "env" in changes:
                diff["before"]["env"], diff["after"]["env"] = _hidden_env(existing.get("env") or {}, wanted["env"])
        if not actions or self.module.check_mode:
            return {"changed": bool(actions), "actions": actions, "container": before, "diff": diff}
        for action in actions:
            self._act(action, wanted if target != "absent" else None)
        after = self._view()
        if target == "started" and after.get("state") != "running":
            raise ContainerError(
                f"{self.name} did not keep running: exit code {after.get('exit_code')}"
                + (f", {after['error']}" if after.get("error") else "")
                + (", killed for memory (OOM)" if after.get("oom_killed") else "")
            )
        return {"changed": True, "actions": actions, "container": after, "diff": diff}

    def _act(self, action, wanted):
        timeout = self.params["stop_timeout"]
        if action == "remove":
            self.runtime.remove(self.name, timeout)
        elif action == "create":
            if wanted["network"] == "bridge":
                self.runtime.network.check_ports(wanted["published_ports"])
            self.runtime.create(self.name, wanted)
        elif action == "start":
            try:
                self.runtime.start(self.name)
            except ContainerError:
                self.runtime.remove(self.name, timeout)
                raise
        elif action == "stop":
            self.runtime.stop(self.name, timeout)
        elif action == "pause":
            self.runtime.pause(self.name, True)
        elif action == "unpause":
            self.runtime.pause(self.name, False)


def _hidden_env(before, after):
    """Environment values often carry secrets: a diff shows the keys, and which of them changed, never a value."""
    hidden = "********"
    return (
        {key: hidden for key in before},
        {key: hidden if before.get(key) == value else f"{hidden} (changed)" for key, value in after.items()},
    )


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "image": {"type": "str"},
            "command": {"type": "raw"},
            "entrypoint": {"type": "list", "elements": "str"},
            "env": {"type": "dict", "default": {}},
            "working_dir": {"type": "str"},
            "user": {"type": "str"},
            "hostname": {"type": "str"},
            "state": {
                "type": "str",
                "choices": ["present", "started", "stopped", "paused", "absent"],
                "default": "started",
            },
            "memory": {"type": "str"},
            "memory_swap": {"type": "str"},
            "cpus": {"type": "float"},
            "cpu_shares": {"type": "int"},
            "cpuset_cpus": {"type": "str"},
            "pids_limit": {"type": "int"},
            "network": {"type": "str", "choices": ["bridge", "host", "none"], "default": "bridge"},
            "published_ports": {"type": "list", "elements": "str", "default": []},
            "volumes": {"type": "list", "elements": "str", "default": []},
            "read_only": {"type": "bool", "default": False},
            "tmpfs": {"type": "list", "elements": "str", "default": []},
            "restart_policy": {"type": "str", "default": "no"},
            "stop_timeout": {"type": "int", "default": 10},
            "capabilities": {"type": "list", "elements": "str", "default": []},
            "cap_drop": {"type": "list", "elements": "str", "default": []},
            "privileged": {"type": "bool", "default": False},
            "security_opts": {"type": "list", "elements": "str", "default": []},
            "devices": {"type": "list", "elements": "str", "default": []},
            "sysctls": {"type": "dict", "default": {}},
            "ulimits": {"type": "list", "elements": "str", "default": []},
            "oom_score_adj": {"type": "int"},
            "root": {"type": "path", "default": "/var/lib/mooring"},
            "run_dir": {"type": "path", "default": "/run/mooring"},
            "bridge": {"type": "str", "default": "mooring0"},
            "subnet": {"type": "str", "default": "10.88.0.0/16"},
        },
        required_if=[
            ("state", "present", ("image",)),
            ("state", "started", ("image",)),
            ("state", "stopped", ("image",)),
            ("state", "paused", ("image",)),
        ],
        supports_check_mode=True,
    )
    require_python(module, "mooring.ops.ns_container")
    container = NsContainer(module)
    try:
        check_name(module.params["name"])
        with container.runtime.lock(module.params["name"]):
            result = container.run()
    except (ValueError, ContainerError, NetworkError, cgroups.CgroupError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
