# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a container may do, in one place: the container's options (from ns_container or mooring-ctr, already
checked) become an OCI runtime-spec document (config.json, runtime-spec 1.x), and the executor (namespaces.py,
cgroups.py) applies exactly what it says.

The defaults are those of `runc spec` and Docker: Docker's capability set in the bounding, effective and permitted
sets with the inheritable and ambient sets empty; runc's masked and read-only paths (so /proc/sys, and with it
kernel.core_pattern, is read-only); a default-deny device cgroup with the standard allowlist; a seccomp profile
with Docker's semantics (seccomp.py); RLIMIT_NOFILE 1024; no_new_privs; /dev/shm and /dev/mqueue with their
options. The `docker run` options that loosen them (privileged, security_opts, devices, sysctls, ulimits,
cap_add) are checked here, so bad input fails before anything is created.
"""

from __future__ import annotations

import os
import resource
import stat

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import seccomp

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Linux capability numbers, and Docker's default set (moby's oci/caps/defaults.go).
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11,
    "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17,
    "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23,
    "SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}  # fmt: skip
DEFAULT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP", "SETPCAP",
    "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)  # fmt: skip

# runc's defaults (`runc spec`, libcontainer's default device rules).
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# The nodes every container gets in its /dev (path, type, major, minor).
DEFAULT_DEVICES = (
    ("/dev/null", "c", 1, 3), ("/dev/zero", "c", 1, 5), ("/dev/full", "c", 1, 7), ("/dev/random", "c", 1, 8),
    ("/dev/urandom", "c", 1, 9), ("/dev/tty", "c", 5, 0),
)  # fmt: skip
DEVICE_ALLOWLIST = (
    {"allow": True, "type": "c", "access": "m"},  # mknod of any device, but no open without a rule below
    {"allow": True, "type": "b", "access": "m"},
    *({"allow": True, "type": kind, "major": major, "minor": minor, "access": "rwm"}
      for _path, kind, major, minor in DEFAULT_DEVICES),
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},  # /dev/console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # /dev/ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # /dev/pts/*
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},  # /dev/net/tun
)  # fmt: skip
DEFAULT_RLIMITS = {"RLIMIT_NOFILE": (1024, 1024)}
ULIMITS = {
    "as": "RLIMIT_AS", "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA", "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE", "nice": "RLIMIT_NICE",
    "nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK",
}  # fmt: skip
# Sysctls that belong to a namespace the container has of its own (Docker's list); any other key would change
# the whole host.
IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax",
               "kernel.shmmni", "kernel.shm_rmid_forced")  # fmt: skip


class SpecError(ValueError):
    """An option cannot become a spec; the message names the option and what was expected."""


# -- options, checked -------------------------------------------------------------------------------------------
def bounding_set():
    """The capabilities this process may hand on (a container cannot get what its launcher lacks); read once."""
    if not _BOUNDING:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapBnd:"):
                    mask = int(line.split()[1], 16)
        _BOUNDING.append(frozenset(name for name, number in CAPABILITIES.items() if mask >> number & 1))
    return _BOUNDING[0]


_BOUNDING = []


def capability_set(add=(), drop=(), privileged=False):
    """Docker's default set with cap_add / cap_drop applied ('ALL' works in both, as in docker run); privileged
    and cap_add ALL: every capability this host can hand on (a named one it lacks is an error)."""
    names = set(bounding_set()) if privileged else set(DEFAULT_CAPABILITIES)
    for option, values in (("capabilities", add), ("cap_drop", drop)):
        unknown = sorted(value for value in values if value.upper().removeprefix("CAP_") not in {*CAPABILITIES, "ALL"})
        if unknown:
            raise SpecError(f"{option}: unknown capabilities {', '.join(unknown)} (e.g. NET_ADMIN, SYS_PTRACE, ALL)")
    for name in (value.upper().removeprefix("CAP_") for value in add):
        names |= set(bounding_set()) if name == "ALL" else {name}
    for name in (value.upper().removeprefix("CAP_") for value in drop):
        names = set() if name == "ALL" else names - {name}
    missing = sorted(names - bounding_set())
    if missing and not privileged:
        raise SpecError(f"capabilities: this host cannot hand on {', '.join(missing)} (its bounding set lacks them)")
    return names & bounding_set() if privileged else names


def parse_devices(values):
    """['/dev/fuse', '/dev/sdb:/dev/xvdb:r'] -> linux.devices entries; the host path must be a device."""
    devices = []
    for value in values:
        parts = str(value).split(":")
        if not 1 <= len(parts) <= 3 or not parts[0].startswith("/"):
            raise SpecError(f"devices: {value!r} is not host_path[:container_path[:permissions]]")
        host = parts[0]
        target = parts[1] if len(parts) > 1 and parts[1] else host
        access = parts[2] if len(parts) > 2 else "rwm"
        if not target.startswith("/") or not access or set(access) - set("rwm"):
            raise SpecError(f"devices: {value!r}: the container path must be absolute, the permissions of r, w, m")
        try:
            info = os.stat(host)
        except OSError:
            raise SpecError(f"devices: the host device {host} does not exist") from None
        if not (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)):
            raise SpecError(f"devices: {host} is not a character or block device")
        kind = "c" if stat.S_ISCHR(info.st_mode) else "b"
        devices.append({"path": target, "type": kind, "major": os.major(info.st_rdev), "minor": os.minor(info.st_rdev),
                        "fileMode": stat.S_IMODE(info.st_mode), "uid": 0, "gid": 0, "access": access})  # fmt: skip
    return devices


def check_sysctls(values, network):
    """Only keys of a namespace the container owns: IPC keys, fs.mqueue.*, and net.* unless network is host."""
    checked = {}
    for name, value in (values or {}).items():
        key = str(name)
        namespaced = (
            key in IPC_SYSCTLS or key.startswith("fs.mqueue.") or (key.startswith("net.") and network != "host")
        )
        if not namespaced:
            raise SpecError(
                f"sysctls: {key} is not namespaced, so it would change the whole host; allowed are "
                f"{', '.join(IPC_SYSCTLS)}, fs.mqueue.* and net.* (not with network: host)"
            )
        if "/" in key or ".." in key:
            raise SpecError(f"sysctls: {key!r} is not a sysctl name")
        checked[key] = str(value)
    return checked


def parse_ulimits(values):
    """['nofile:1024:2048', 'nproc:512'] -> {RLIMIT_NOFILE: (soft, hard)}; a hard limit above this host's own
    needs CAP_SYS_RESOURCE, so it is refused here rather than at the start."""
    limits = {}
    for value in values:
        name, _sep, numbers = str(value).partition(":")
        soft, _sep, hard = numbers.partition(":")
        hard = hard or soft
        if name not in ULIMITS or not soft.lstrip("-").isdigit() or not hard.lstrip("-").isdigit():
            raise SpecError(f"ulimits: {value!r} is not name:soft[:hard] with a name of {', '.join(sorted(ULIMITS))}")
        soft, hard = int(soft), int(hard)
        if soft > hard and hard != -1:
            raise SpecError(f"ulimits: {value!r}: the soft limit is above the hard limit")
        kind = ULIMITS[name]
        _mine_soft, mine_hard = resource.getrlimit(getattr(resource, kind))
        if (
            mine_hard != resource.RLIM_INFINITY
            and (hard == -1 or hard > mine_hard)
            and "SYS_RESOURCE" not in (bounding_set())
        ):
            raise SpecError(f"ulimits: {value!r}: the hard limit is above this host's {mine_hard} for {name}")
        limits[kind] = (soft, hard)
    return limits


def parse_security_opts(values):
    """['seccomp=unconfined' | 'seccomp=FILE', 'no-new-privileges[=true|false]'] -> (profile or None, nnp)."""
    profile, no_new_privileges = seccomp.default_profile(), True
    for value in values:
        key, _sep, setting = str(value).replace(":", "=", 1).partition("=")
        if key == "seccomp" and setting == "unconfined":
            profile = None
        elif key == "seccomp" and setting:
            profile = seccomp.read_profile(setting)
        elif key == "no-new-privileges" and setting in ("", "true", "false"):
            no_new_privileges = setting != "false"
        else:
            raise SpecError(
                f"security_opts: {value!r} is not supported (seccomp=unconfined, seccomp=PROFILE.json, "
                "no-new-privileges[=true|false]; this runtime has no AppArmor or SELinux labels)"
            )
    if profile is not None and not seccomp.available():
        raise SpecError("security_opts: the seccomp profile needs libseccomp (libseccomp.so.2) on the host")
    return profile, no_new_privileges


def options_config(options):
    """The security options of ns_container / mooring-ctr as stored in the container's config: checked, in
    plain values, so that a changed option shows as a changed config."""
    privileged = bool(options.get("privileged"))
    capabilities = sorted(capability_set(options.get("capabilities") or [], options.get("cap_drop") or [], privileged))
    profile_options = list(options.get("security_opts") or [])
    parse_security_opts(profile_options)
    oom_score_adj = options.get("oom_score_adj")
    if oom_score_adj is not None and not -1000 <= int(oom_score_adj) <= 1000:
        raise SpecError(f"oom_score_adj must be from -1000 to 1000, got {oom_score_adj}")
    return {
        "oom_score_adj": oom_score_adj,
        "privileged": privileged,
        "capabilities": capabilities,
        "security_opts": profile_options,
        "devices": parse_devices(options.get("devices") or []),
        "sysctls": check_sysctls(options.get("sysctls"), options.get("network", "bridge")),
        "ulimits": {kind: list(pair) for kind, pair in parse_ulimits(options.get("ulimits") or []).items()},
    }


def _entries(rootfs_fd, path):
    """The records of the container's /etc/passwd or /etc/group, read inside its root (parsed here: the C
    library's lookup would follow the image's nsswitch.conf and load its modules into this privileged process)."""
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import paths  # noqa: PLC0415

    try:
        handle = paths.open_in_root(rootfs_fd, path, flags=os.O_RDONLY)
    except OSError:
        return []
    with os.fdopen(handle, errors="replace") as records:
        return [line.rstrip("\n").split(":") for line in records.read(1 << 20).splitlines() if line.count(":") >= 3]


def resolve_user(rootfs, user):
    """'uid[:gid]' or 'name[:group]' -> (uid, gid), names looked up in the container's own files."""
    name, _sep, group = str(user or "0").partition(":")
    rootfs_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if name.isdigit():
            uid = int(name)
            found = [entry for entry in _entries(rootfs_fd, "/etc/passwd") if entry[2] == name]
            default_gid = int(found[0][3]) if found and found[0][3].isdigit() else uid
        else:
            found = [entry for entry in _entries(rootfs_fd, "/etc/passwd") if entry[0] == name]
            if not found or not found[0][2].isdigit() or not found[0][3].isdigit():
                raise SpecError(f"user: {name} is not in the image's /etc/passwd")
            uid, default_gid = int(found[0][2]), int(found[0][3])
        if not group:
            return uid, default_gid
        if group.isdigit():
            return uid, int(group)
        groups = [entry for entry in _entries(rootfs_fd, "/etc/group") if entry[0] == group and entry[2].isdigit()]
        if not groups:
            raise SpecError(f"user: the group {group} is not in the image's /etc/group")
        return uid, int(groups[0][2])
    finally:
        os.close(rootfs_fd)


# -- the document -----------------------------------------------------------------------------------------------
def _mount(destination, kind, source, options):
    return {"destination": destination, "type": kind, "source": source, "options": list(options)}


def _process(config, user):
    capabilities = ["CAP_" + name for name in sorted(config.get("capabilities") or DEFAULT_CAPABILITIES)]
    # As Docker: a non-root user runs with no effective or permitted capabilities (the bounding set stays).
    effective = [] if user[0] != 0 else capabilities
    rlimits = dict(DEFAULT_RLIMITS)
    rlimits.update({kind: tuple(pair) for kind, pair in (config.get("ulimits") or {}).items()})
    process = {
        "terminal": False,
        "user": {"uid": user[0], "gid": user[1]},
        "args": list(config["argv"]),
        "env": [f"{key}={value}" for key, value in config["env"].items()],
        "cwd": config.get("working_dir") or "/",
        "capabilities": {
            "bounding": capabilities,
            "effective": effective,
            "permitted": effective,
            "inheritable": [],
            "ambient": [],
        },
        "rlimits": [{"type": kind, "soft": soft, "hard": hard} for kind, (soft, hard) in sorted(rlimits.items())],
        "noNewPrivileges": parse_security_opts(config.get("security_opts") or [])[1],
    }
    if config.get("oom_score_adj") is not None:
        process["oomScoreAdj"] = config["oom_score_adj"]
    return process


def _mounts(config, extra_binds):
    sys_options = ["nosuid", "noexec", "nodev"] + ([] if config.get("privileged") else ["ro"])
    devpts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]
    mounts = [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount("/dev/pts", "devpts", "devpts", devpts),
        _mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),  # noqa: S108
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/sys", "sysfs", "sysfs", sys_options),
    ]
    for volume in config.get("volumes") or []:
        options = ["rbind", "rprivate"] + (["ro"] if volume.get("read_only") else [])
        mounts.append(_mount(volume["target"], "bind", volume["source"], options))
    for path in config.get("tmpfs") or []:
        mounts.append(_mount(path, "tmpfs", "tmpfs", ["nosuid", "nodev", "mode=1777"]))
    for target, source in extra_binds:
        mounts.append(_mount(target, "bind", source, ["bind", "rprivate"]))
    return mounts


def _resources(config):
    devices = config.get("devices") or []
    if config.get("privileged"):
        rules = [{"allow": True, "access": "rwm"}]
    else:
        rules = [{"allow": False, "access": "rwm"}, *DEVICE_ALLOWLIST]
        rules += [
            {"allow": True, "type": device["type"], "major": device["major"], "minor": device["minor"],
             "access": device["access"]}
            for device in devices
        ]  # fmt: skip
    limits = config.get("limits") or {}
    resources = {"devices": rules}
    if limits.get("memory"):
        resources["memory"] = {"limit": limits["memory"]}
        if limits.get("memory_swap"):
            resources["memory"]["swap"] = limits["memory_swap"]
    cpu = {}
    if limits.get("cpus"):
        cpu.update(quota=int(limits["cpus"] * 100000), period=100000)
    if limits.get("cpu_shares"):
        cpu["shares"] = limits["cpu_shares"]
    if limits.get("cpuset_cpus"):
        cpu["cpus"] = limits["cpuset_cpus"]
    if cpu:
        resources["cpu"] = cpu
    if limits.get("pids_limit"):
        resources["pids"] = {"limit": limits["pids_limit"]}
    return resources


def build(config, rootfs="merged", netns=None, extra_binds=(), user=(0, 0)):
    """The OCI runtime-spec document for a container's config (ns_container's wanted(), mooring-ctr's run).
    netns: the path of a prepared network namespace to join; extra_binds: (container path, host file) pairs that
    the runtime provides (/etc/hosts, /etc/hostname, /etc/resolv.conf); user: (uid, gid) from resolve_user."""
    privileged = bool(config.get("privileged"))
    process = _process(config, user)
    sysctl = dict(config.get("sysctls") or {})
    namespaces = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    if config.get("network", "none") != "host":
        # As Docker: in the container's own network namespace any user may bind ports below 1024.
        sysctl.setdefault("net.ipv4.ip_unprivileged_port_start", "0")
        namespaces.insert(1, {"type": "network", **({"path": netns} if netns else {})})
    device_keys = ("path", "type", "major", "minor", "fileMode", "uid", "gid")
    linux = {
        "namespaces": namespaces,
        "resources": _resources(config),
        "devices": [{key: device[key] for key in device_keys} for device in config.get("devices") or []],
        "sysctl": sysctl,
        "maskedPaths": [] if privileged else list(MASKED_PATHS),
        "readonlyPaths": [] if privileged else list(READONLY_PATHS),
    }
    profile = parse_security_opts(config.get("security_opts") or [])[0]
    if profile is not None and not privileged:
        linux["seccomp"] = seccomp.for_container(profile, process["capabilities"]["bounding"])
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": bool(config.get("read_only"))},
        "hostname": config.get("hostname") or "",
        "mounts": _mounts(config, extra_binds),
        "linux": linux,
        "annotations": {"org.mooring.image": config["image"]},
    }
