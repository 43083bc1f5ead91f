# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The system call filter of a container: a default profile with the semantics of Docker's (an allowlist, every
other call failing with EPERM, some calls allowed only with the capability that makes them safe, some only with
harmless arguments), Docker's profile file format for `security_opts: seccomp=FILE`, its translation into the OCI
runtime-spec's `linux.seccomp` for one container's capabilities, and the loading of that through libseccomp.

Calls the list does not name are refused, so a syscall newer than the list is refused too, as under Docker.
"""

from __future__ import annotations

import ctypes
import os

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import fastjson
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.state import name_digest

EPERM = 1
ENOSYS = 38
CLONE_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
AF_VSOCK = 40

# Calls any process may make: memory, files, sockets, signals, time reading, scheduling, its own
# credentials, ipc in its own namespace.
_ALLOWED = """
accept accept4 access adjtimex alarm arch_prctl bind brk cachestat capget capset chdir chmod chown clock_getres
clock_gettime clock_nanosleep close close_range connect copy_file_range creat dup dup2 dup3 epoll_create
epoll_create1 epoll_ctl epoll_pwait epoll_pwait2 epoll_wait eventfd eventfd2 execve execveat exit exit_group
faccessat faccessat2 fadvise64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchownat fcntl
fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstatfs fsync ftruncate futex futex_requeue
futex_wait futex_waitv futex_wake futimesat get_robust_list get_thread_area getcpu getcwd getdents getdents64
getegid geteuid getgid getgroups getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom
getresgid getresuid getrlimit getrusage getsid getsockname getsockopt gettid gettimeofday getuid getxattr
inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents
io_setup io_submit ioctl ioprio_get ioprio_set kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lgetxattr link linkat listen listxattr llistxattr lremovexattr lseek lsetxattr lstat
madvise map_shadow_stack membarrier memfd_create mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap
mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink mremap msgctl msgget msgrcv msgsnd
msync munlock munlockall munmap nanosleep newfstatat open openat openat2 pause pidfd_open pidfd_send_signal pipe
pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll prctl pread64 preadv preadv2 prlimit64 process_mrelease
pselect6 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recvfrom recvmmsg recvmsg
remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_tgsigqueueinfo sched_get_priority_max
sched_get_priority_min sched_getaffinity sched_getattr sched_getparam sched_getscheduler sched_rr_get_interval
sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop
semtimedop sendfile sendmmsg sendmsg sendto set_robust_list set_thread_area set_tid_address setfsgid setfsuid
setgid setgroups setitimer setpgid setpriority setregid setresgid setresuid setreuid setrlimit setsid setsockopt
setuid setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 socketpair splice stat statfs
statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
timer_getoverrun timer_gettime timer_settime timerfd_create timerfd_gettime timerfd_settime times tkill truncate
umask uname unlink unlinkat utime utimensat utimes vfork vmsplice wait4 waitid write writev
"""

# Calls that a capability makes safe to allow: without it the container cannot use them (or they would reach the
# host: keyrings, modules, the clock, other namespaces' mounts).
_BY_CAPABILITY = {
    "CAP_SYS_ADMIN": """bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount
        mount_setattr move_mount name_to_handle_at open_tree perf_event_open pivot_root quotactl quotactl_fd
        setdomainname sethostname setns swapoff swapon umount2 unshare""",
    "CAP_SYS_BOOT": "kexec_file_load kexec_load reboot",
    "CAP_SYS_CHROOT": "chroot",
    "CAP_SYS_MODULE": "delete_module finit_module init_module",
    "CAP_SYS_PACCT": "acct",
    "CAP_SYS_PTRACE": "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace userfaultfd",
    "CAP_SYS_RAWIO": "ioperm iopl",
    "CAP_SYS_TIME": "clock_adjtime clock_settime settimeofday",
    "CAP_SYS_TTY_CONFIG": "vhangup",
    "CAP_SYS_NICE": "get_mempolicy mbind migrate_pages move_pages set_mempolicy set_mempolicy_home_node",
    "CAP_SYSLOG": "syslog",
    "CAP_DAC_READ_SEARCH": "open_by_handle_at",
    "CAP_BPF": "bpf",
    "CAP_PERFMON": "perf_event_open",
}


def default_profile():
    """mooring's default profile, in Docker's file format (what `security_opts: seccomp=FILE` also reads)."""
    allow = "SCMP_ACT_ALLOW"
    syscalls = [{"names": _ALLOWED.split(), "action": allow}]
    # Threads and processes, but no new namespaces without CAP_SYS_ADMIN; clone3 hides its flags in a struct
    # that a filter cannot read, so it says ENOSYS and the C library falls back to clone.
    syscalls.append({
        "names": ["clone"], "action": allow, "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
    })  # fmt: skip
    syscalls.append(
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS, "excludes": {"caps": ["CAP_SYS_ADMIN"]}}
    )
    # Every socket family but vsock (which reaches the hypervisor, not the container's network namespace).
    syscalls.append(
        {"names": ["socket"], "action": allow, "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}]}
    )
    # personality: only the personas that programs ask for (linux, with and without address randomisation).
    for persona in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF):
        syscalls.append(
            {"names": ["personality"], "action": allow, "args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}]}
        )
    for capability, names in _BY_CAPABILITY.items():
        syscalls.append({"names": names.split(), "action": allow, "includes": {"caps": [capability]}})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        # The native architecture only: a 32-bit call (int 0x80) is then killed, not checked against names
        # that differ between the two tables.
        "architectures": [
            {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}.get(os.uname().machine, "SCMP_ARCH_NATIVE")
        ],
        "syscalls": syscalls,
    }


def read_profile(path):
    """A profile file in Docker's format (or already in the OCI spec's); ValueError naming security_opts."""
    try:
        with open(path) as handle:
            profile = fastjson.load(handle)
    except (OSError, ValueError) as exc:
        raise ValueError(f"security_opts: seccomp={path} is not a readable JSON profile: {exc}") from None
    if not isinstance(profile, dict) or not isinstance(profile.get("defaultAction"), str):
        raise ValueError(f"security_opts: seccomp={path} has no defaultAction; it is not a seccomp profile")
    if "archMap" in profile and not profile.get("architectures"):
        machine = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}.get(os.uname().machine)
        for entry in profile["archMap"]:
            if entry.get("architecture") == machine:
                profile["architectures"] = [machine, *entry.get("subArchitectures", [])]
    for index, rule in enumerate(profile.get("syscalls") or []):
        if not isinstance(rule, dict) or not isinstance(rule.get("action"), str):
            raise ValueError(f"security_opts: seccomp={path}: syscalls[{index}] has no action")
        if not rule.get("names") and not rule.get("name"):
            raise ValueError(f"security_opts: seccomp={path}: syscalls[{index}] names no syscall")
        _action(rule["action"], rule.get("errnoRet"), f"security_opts: seccomp={path}: syscalls[{index}]")
    _action(profile["defaultAction"], profile.get("defaultErrnoRet"), f"security_opts: seccomp={path}")
    return profile


def _kernel_at_least(version):
    mine = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    return mine >= tuple(int(part) for part in str(version).split(".")[:2])


def for_container(profile, capabilities):
    """Docker's format -> the OCI spec's linux.seccomp for a container with these (bounding) capabilities:
    a rule applies when the container has every capability it includes and none it excludes."""
    machine = os.uname().machine
    arches = {"x86_64": ("amd64", "x86", "x32"), "aarch64": ("arm64", "arm")}.get(machine, (machine,))
    rules = []
    for rule in profile.get("syscalls") or []:
        includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
        if not set(includes.get("caps") or []) <= set(capabilities):
            continue
        if set(excludes.get("caps") or []) & set(capabilities):
            continue
        if includes.get("arches") and not set(includes["arches"]) & set(arches):
            continue
        if set(excludes.get("arches") or []) & set(arches):
            continue
        if includes.get("minKernel") and not _kernel_at_least(includes["minKernel"]):
            continue
        entry = {"names": list(rule.get("names") or [rule["name"]]), "action": rule["action"]}
        for key in ("args", "errnoRet"):
            if rule.get(key) is not None:
                entry[key] = rule[key]
        rules.append(entry)
    spec = {"defaultAction": profile["defaultAction"], "architectures": list(profile.get("architectures") or [])}
    if profile.get("defaultErrnoRet") is not None:
        spec["defaultErrnoRet"] = profile["defaultErrnoRet"]
    spec["syscalls"] = rules
    return spec


# -- loading, through libseccomp ------------------------------------------------------------------------------
_OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
              "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}  # fmt: skip


def _action(name, errno_ret=None, what="seccomp"):
    fixed = {"SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000, "SCMP_ACT_KILL_PROCESS": 0x80000000,
             "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": 0x7FFF0000}  # fmt: skip
    if name in fixed:
        return fixed[name]
    if name == "SCMP_ACT_ERRNO":
        return 0x00050000 | ((EPERM if errno_ret is None else int(errno_ret)) & 0xFFFF)
    if name == "SCMP_ACT_TRACE":
        return 0x7FF00000 | ((EPERM if errno_ret is None else int(errno_ret)) & 0xFFFF)
    raise ValueError(f"{what}: unknown seccomp action {name!r}")


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]  # fmt: skip


def _library():
    library = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    library.seccomp_init.restype = ctypes.c_void_p
    library.seccomp_init.argtypes = [ctypes.c_uint32]
    library.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    library.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    library.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    library.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    library.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    library.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    library.seccomp_release.argtypes = [ctypes.c_void_p]
    return library


def available():
    try:
        _library()
    except OSError:
        return False
    return True


def _add_rule(library, context, rule, default):
    action = _action(rule["action"], rule.get("errnoRet"))
    if action == default:
        return
    arguments = rule.get("args") or []
    compares = (_ArgCmp * max(len(arguments), 1))()
    for slot, argument in enumerate(arguments):
        compares[slot] = _ArgCmp(
            argument["index"], _OPERATORS[argument["op"]], argument.get("value", 0), argument.get("valueTwo", 0)
        )
    for name in rule["names"]:
        number = library.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            continue  # unknown to this libseccomp: refused by the default action, as Docker does
        result = library.seccomp_rule_add_array(context, action, number, len(arguments), compares)
        if result != 0:
            raise OSError(-result, f"seccomp: cannot add the rule for {name}: {os.strerror(-result)}")


def compile_filter(spec):
    """The OCI linux.seccomp filter as the kernel's BPF program (bytes of struct sock_filter), built by
    libseccomp. Done by the runtime before the container's process exists, so that PID 1 only installs it."""
    try:
        library = _library()
    except OSError as exc:
        raise OSError(f"seccomp: libseccomp (libseccomp.so.2) is needed to build the filter: {exc}") from None
    default = _action(spec["defaultAction"], spec.get("defaultErrnoRet"))
    context = library.seccomp_init(default)
    if not context:
        raise OSError("seccomp: seccomp_init failed")
    try:
        for arch in spec.get("architectures") or []:
            token = library.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower().encode())
            if token:
                result = library.seccomp_arch_add(context, token)
                # -EEXIST: the native arch is already in the filter.
                if result not in (0, -17):
                    raise OSError(-result, f"seccomp: cannot add the architecture {arch}")
        for rule in spec.get("syscalls") or []:
            _add_rule(library, context, rule, default)
        exported = os.memfd_create("seccomp", os.MFD_CLOEXEC)
        try:
            result = library.seccomp_export_bpf(context, exported)
            if result != 0:
                raise OSError(-result, f"seccomp: cannot export the filter: {os.strerror(-result)}")
            os.lseek(exported, 0, os.SEEK_SET)
            program = b""
            while chunk := os.read(exported, 65536):
                program += chunk
        finally:
            os.close(exported)
    finally:
        library.seccomp_release(context)
    return program


def cached_filter(spec, cache_dir):
    """compile_filter, kept under cache_dir by the spec's digest: a container's start then costs a file read, not
    libseccomp's hundreds of rule additions."""
    key = name_digest(fastjson.dumps(spec, sort_keys=True))
    path = os.path.join(cache_dir, f"{key}.bpf")
    try:
        with open(path, "rb") as cached:
            return cached.read()
    except FileNotFoundError:
        pass
    program = compile_filter(spec)
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    temporary = f"{path}.{os.getpid()}"
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as output:
        output.write(program)
    os.replace(temporary, path)
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(program):
    """Install a BPF filter from compile_filter on this thread (and what it execs). Needs no_new_privs or
    CAP_SYS_ADMIN, as the kernel does."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"seccomp: cannot install the filter: {os.strerror(number)}")
