# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An OCI bundle's config.json checked before anything is made (runtime-spec "Configuration"): each refusal names
the field and what was expected. Imported by create and exec only, so that state, start, kill and delete stay
light."""

from __future__ import annotations

import os

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import cgroups, fastjson, namespaces, spec
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.oci import HOOK_KINDS, OciError

NAMESPACE_NAMES = ("pid", "network", "mount", "ipc", "uts", "cgroup", "user", "time")
SUPPORTED_NAMESPACES = ("pid", "network", "mount", "ipc", "uts", "cgroup", "user")


def _field(document, path, kind, required=False, within=""):
    """document's value at the dotted path, checked to be of kind; `within` names where document sits."""
    value = document
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            if required:
                raise OciError(f"config.json: {within}{path} is required")
            return None
        value = value[key]
    if value is not None and not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise OciError(f"config.json: {within}{path} must be a {expected}, got {type(value).__name__}")
    return value


def check_process(process):
    args = _field(process, "args", list, required=True, within="process.")
    if not args or not all(isinstance(arg, str) for arg in args):
        raise OciError("config.json: process.args must be a non-empty list of strings")
    cwd = _field(process, "cwd", str, required=True, within="process.")
    if not cwd.startswith("/"):
        raise OciError(f"config.json: process.cwd must be an absolute path, got {cwd!r}")
    for item in _field(process, "env", list, within="process.") or []:
        if not isinstance(item, str) or "=" not in item:
            raise OciError(f"config.json: process.env entries must be KEY=VALUE strings, got {item!r}")
    user = _field(process, "user", dict, within="process.") or {}
    for key in ("uid", "gid"):
        if not isinstance(user.get(key, 0), int) or user.get(key, 0) < 0:
            raise OciError(f"config.json: process.user.{key} must be a number of 0 or more")
    _check_limits(process)
    _field(process, "terminal", bool, within="process.")


def _check_limits(process):
    """process.capabilities and process.rlimits: every name known (a capability the kernel has no number for is
    an error, not a silent no-op)."""
    for kind, names in (_field(process, "capabilities", dict, within="process.") or {}).items():
        if kind not in ("bounding", "effective", "inheritable", "permitted", "ambient"):
            raise OciError(f"config.json: process.capabilities.{kind} is not a capability set")
        for name in names or []:
            if not isinstance(name, str) or name.removeprefix("CAP_") not in spec.CAPABILITIES:
                raise OciError(f"config.json: process.capabilities.{kind}: unknown capability {name!r}")
    for limit in _field(process, "rlimits", list, within="process.") or []:
        if not isinstance(limit, dict) or limit.get("type") not in {f"RLIMIT_{v.upper()}" for v in spec.ULIMITS}:
            raise OciError(f"config.json: process.rlimits: unknown type {limit.get('type')!r}")
        for key in ("soft", "hard"):
            if not isinstance(limit.get(key), int):
                raise OciError(f"config.json: process.rlimits {limit['type']}.{key} must be a number")


def load_bundle(bundle):
    """The bundle's config.json, checked: the document, with root.path made absolute."""
    bundle = os.path.abspath(bundle)
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as handle:
            document = fastjson.load(handle)
    except FileNotFoundError:
        raise OciError(f"bundle {bundle} has no config.json") from None
    except (OSError, ValueError) as exc:
        raise OciError(f"{path}: {exc}") from None
    if not isinstance(document, dict):
        raise OciError(f"{path}: the document must be an object")
    version = _field(document, "ociVersion", str, required=True)
    if version.split(".")[0] != "1":
        raise OciError(f"config.json: ociVersion {version!r} is not a 1.x version of the runtime spec")
    root = _field(document, "root.path", str, required=True)
    absolute = os.path.normpath(os.path.join(bundle, root))
    if not os.path.isdir(absolute):
        raise OciError(f"config.json: root.path {root!r} is not a directory ({absolute})")
    document["root"]["path"] = absolute
    _field(document, "root.readonly", bool)
    process = _field(document, "process", dict)
    if process is not None:
        check_process(process)
    _check_mounts_and_hooks(document)
    _check_linux(document)
    return document


def _check_mounts_and_hooks(document):
    for index, entry in enumerate(_field(document, "mounts", list) or []):
        destination = entry.get("destination") if isinstance(entry, dict) else None
        if not isinstance(destination, str) or not destination.startswith("/"):
            raise OciError(f"config.json: mounts[{index}].destination must be an absolute path")
    for kind, hooks in (_field(document, "hooks", dict) or {}).items():
        if kind not in HOOK_KINDS:
            raise OciError(f"config.json: hooks.{kind} is not a hook of the runtime spec")
        for index, hook in enumerate(hooks or []):
            if not isinstance(hook, dict) or not str(hook.get("path", "")).startswith("/"):
                raise OciError(f"config.json: hooks.{kind}[{index}].path must be an absolute path")


def _check_linux(document):
    linux = _field(document, "linux", dict)
    if linux is None:
        raise OciError("config.json: linux is required on this runtime (a Linux container)")
    seen = set()
    for index, namespace in enumerate(_field(document, "linux.namespaces", list) or []):
        kind = namespace.get("type") if isinstance(namespace, dict) else None
        if kind not in NAMESPACE_NAMES:
            raise OciError(f"config.json: linux.namespaces[{index}].type {kind!r} is not a namespace type")
        if kind in seen:
            raise OciError(f"config.json: linux.namespaces: {kind} is given twice")
        seen.add(kind)
        if kind not in SUPPORTED_NAMESPACES:
            raise OciError(f"config.json: linux.namespaces: the {kind} namespace is not supported yet")
        if namespace.get("path") and not os.path.exists(namespace["path"]):
            raise OciError(f"config.json: linux.namespaces[{index}].path {namespace['path']} does not exist")
    _check_linux_fields(document, linux, seen)


def _check_sysctl_namespace(key, seen):
    """A sysctl is written in the container's namespaces: only keys of a namespace that linux.namespaces lists (the
    runtime's own otherwise, which is the host's), as runc checks them."""
    if key in spec.IPC_SYSCTLS or key.startswith("fs.mqueue."):
        needed = "ipc"
    elif key.startswith("net."):
        needed = "network"
    elif key in ("kernel.hostname", "kernel.domainname"):
        needed = "uts"
    else:
        raise OciError(f"config.json: linux.sysctl {key!r} is not namespaced: it would change the whole host")
    if needed not in seen:
        raise OciError(
            f"config.json: linux.sysctl {key!r} needs a {needed} namespace in linux.namespaces (else it changes "
            "the runtime's, the host's)"
        )


def _check_linux_fields(document, linux, seen):
    if document.get("hostname") and "uts" not in seen:
        raise OciError("config.json: hostname is set but linux.namespaces has no uts namespace to set it in")
    _check_id_mappings(document, seen)
    if "sysctl" in linux:
        _field(document, "linux.sysctl", dict)
        for key in linux["sysctl"] or {}:
            if "/" in key or ".." in key:
                raise OciError(f"config.json: linux.sysctl key {key!r} is not a sysctl name")
            _check_sysctl_namespace(key, seen)
    propagation = _field(document, "linux.rootfsPropagation", str)
    if propagation and propagation not in namespaces._PROPAGATION:
        raise OciError(f"config.json: linux.rootfsPropagation {propagation!r} is not a propagation type")
    check_resources(document)
    cgroups_path = _field(document, "linux.cgroupsPath", str)
    if cgroups_path and (":" in cgroups_path or ".." in cgroups_path.split("/")):
        raise OciError(
            f"config.json: linux.cgroupsPath {cgroups_path!r} must be a path (systemd's slice:prefix:name form "
            "needs --systemd-cgroup, which this runtime does not offer)"
        )


_RESOURCE_FIELDS = {
    "memory": {"limit": int, "reservation": int, "swap": int, "kernel": int, "kernelTCP": int, "swappiness": int,
               "disableOOMKiller": bool, "useHierarchy": bool, "checkBeforeUpdate": bool},
    "cpu": {"shares": int, "quota": int, "burst": int, "period": int, "realtimeRuntime": int, "realtimePeriod": int,
            "cpus": str, "mems": str, "idle": int},
    "pids": {"limit": int},
}  # fmt: skip


def check_resources(document, within="config.json: "):
    """linux.resources: each known field of the type the spec gives it (bools are not numbers), block I/O and huge
    page entries complete; network and rdma limits refused (not supported)."""
    resources = _field(document, "linux.resources", dict) or {}
    for key in ("network", "rdma"):
        if resources.get(key):
            raise OciError(f"{within}linux.resources.{key} is not supported on this runtime yet")
    for group, fields in _RESOURCE_FIELDS.items():
        for name, kind in fields.items():
            value = _field(document, f"linux.resources.{group}.{name}", kind)
            if kind is int and isinstance(value, bool):
                raise OciError(f"{within}linux.resources.{group}.{name} must be a number, got {value!r}")
    _check_block_io(document)
    for index, entry in enumerate(_field(document, "linux.resources.hugepageLimits", list) or []):
        size = entry.get("pageSize") if isinstance(entry, dict) else None
        if not isinstance(size, str) or not size[:-2].isdigit() or size[-2:] not in ("KB", "MB", "GB"):
            raise OciError(f"{within}linux.resources.hugepageLimits[{index}].pageSize must be a size such as 2MB")
        if not _is_count(entry.get("limit")):
            raise OciError(f"{within}linux.resources.hugepageLimits[{index}].limit must be a number of bytes")


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_block_io(document):
    """linux.resources.blockIO: weights within 10..1000 (blkio's range; 0 is unset, as for runc), each device entry
    with its numbers."""
    block_io = _field(document, "linux.resources.blockIO", dict) or {}
    for field in ("weight", "leafWeight"):
        if block_io.get(field) and (not _is_count(block_io[field]) or not 10 <= block_io[field] <= 1000):
            raise OciError(f"config.json: linux.resources.blockIO.{field} must be a number from 10 to 1000")
    for field in ("weightDevice", *cgroups.THROTTLES):
        value_key = "weight" if field == "weightDevice" else "rate"
        for index, device in enumerate(_field(document, f"linux.resources.blockIO.{field}", list) or []):
            numbers = [device.get(key) if isinstance(device, dict) else None for key in ("major", "minor", value_key)]
            if not all(_is_count(number) for number in numbers):
                raise OciError(
                    f"config.json: linux.resources.blockIO.{field}[{index}] must have major, minor and {value_key} "
                    "(numbers)"
                )


def check_terminal(process, console_socket):
    if process.get("terminal") and not console_socket:
        raise OciError("process.terminal is true: a --console-socket to send the terminal's master to is needed")
    if console_socket and not process.get("terminal"):
        raise OciError("--console-socket is given but process.terminal is false (no terminal to send)")


def resources(document):
    """linux.resources with the device rules every container gets after the bundle's own, as runc adds them: mknod
    of any node, the standard nodes in /dev, the pty master and slaves, and each node of linux.devices."""
    resources = dict(document["linux"].get("resources") or {})
    always = [rule for rule in spec.DEVICE_ALLOWLIST if (rule.get("major"), rule.get("minor")) != (10, 200)]
    own = [
        {"allow": True, "type": device["type"], "major": device.get("major"), "minor": device.get("minor"),
         "access": "rwm"}
        for device in document["linux"].get("devices") or [] if device.get("type") in ("c", "b", "u")
    ]  # fmt: skip
    resources["devices"] = list(resources.get("devices") or []) + always + own
    return resources


def _check_id_mappings(document, seen):
    """uidMappings/gidMappings: only with a user namespace the runtime makes (one joined by path has its own),
    and then both, each entry three numbers with a size of 1 or more."""
    mappings = {key: _field(document, f"linux.{key}", list) or [] for key in ("uidMappings", "gidMappings")}
    joined = any(ns.get("type") == "user" and ns.get("path") for ns in document["linux"].get("namespaces") or [])
    if any(mappings.values()) and ("user" not in seen or joined):
        raise OciError("config.json: linux.uidMappings/gidMappings need a user namespace that the runtime makes")
    if "user" in seen and not joined and not all(mappings.values()):
        raise OciError("config.json: a new user namespace needs both linux.uidMappings and linux.gidMappings")
    for key, entries in mappings.items():
        for index, entry in enumerate(entries):
            values = [
                entry.get(name) if isinstance(entry, dict) else None for name in ("containerID", "hostID", "size")
            ]
            if not all(isinstance(value, int) and value >= 0 for value in values) or values[2] < 1:
                raise OciError(f"config.json: linux.{key}[{index}] must have containerID, hostID and size (1 or more)")


def root_ids(document):
    """The host's uid and gid of the container's root: 0, 0 unless the runtime makes a user namespace that maps
    them elsewhere."""

    def host_id(key):
        for entry in document["linux"].get(key) or []:
            if entry["containerID"] <= 0 < entry["containerID"] + entry["size"]:
                return entry["hostID"] - entry["containerID"]
        return 0

    return host_id("uidMappings"), host_id("gidMappings")
