"""The runtime's OCI spec builder (plugins/module_utils/nsruntime/spec.py) against the peer's defaults: `runc spec`
(runc is a Debian package, installed with docker.io) - no masked or read-only path, device rule or capability of
runc's default may be missing from mooring's."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import seccomp, spec


@pytest.fixture(scope="module")
def runc_default(tmp_path_factory):
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed (it comes with docker.io, which `make lab` installs)")
    bundle = tmp_path_factory.mktemp("runc")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    return json.loads((bundle / "config.json").read_text())


@pytest.fixture(scope="module")
def mooring_default():
    config = {"image": "debian", "argv": ["/bin/true"], "env": {"PATH": spec.DEFAULT_PATH}, "hostname": "c",
              "network": "bridge", **spec.options_config({})}  # fmt: skip
    return spec.build(config, "/rootfs", "/run/netns/x")


def test_every_masked_and_read_only_path_of_runc_is_in_mooring(runc_default, mooring_default):
    assert set(runc_default["linux"]["maskedPaths"]) <= set(mooring_default["linux"]["maskedPaths"])
    assert set(runc_default["linux"]["readonlyPaths"]) <= set(mooring_default["linux"]["readonlyPaths"])


def test_every_device_rule_of_runc_is_in_mooring_and_the_default_denies(runc_default, mooring_default):
    rules = mooring_default["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    for rule in runc_default["linux"]["resources"]["devices"]:
        assert rule in rules, rule


def test_every_capability_of_runc_is_in_mooring_and_the_inheritable_and_ambient_sets_are_empty(
    runc_default, mooring_default
):
    ours = mooring_default["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert set(runc_default["process"]["capabilities"].get(kind, [])) <= set(ours[kind]), kind
    assert ours["inheritable"] == [] and ours["ambient"] == []


def test_the_other_defaults_are_runcs_and_dockers(runc_default, mooring_default):
    assert mooring_default["process"]["noNewPrivileges"] is True
    assert {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024} in mooring_default["process"]["rlimits"]
    ours = {mount["destination"]: mount for mount in mooring_default["mounts"]}
    for mount in runc_default["mounts"]:
        if mount["destination"] == "/sys/fs/cgroup":
            continue  # mooring gives the container no view of the host's cgroups
        assert mount["destination"] in ours, mount
        assert set(mount.get("options", [])) - {"relatime"} <= set(ours[mount["destination"]]["options"]), mount
    assert {ns["type"] for ns in runc_default["linux"]["namespaces"]} <= {
        ns["type"] for ns in mooring_default["linux"]["namespaces"]
    }
    assert mooring_default["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"


def test_the_seccomp_profile_is_an_allowlist_that_names_none_of_the_calls_docker_blocks(mooring_default):
    allowed = {name for rule in mooring_default["linux"]["seccomp"]["syscalls"] for name in rule["names"]
               if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")}  # fmt: skip
    blocked = {"keyctl", "add_key", "request_key", "mount", "umount2", "unshare", "setns", "pivot_root", "bpf",
               "kexec_load", "init_module", "finit_module", "delete_module", "reboot", "swapon", "ptrace",
               "open_by_handle_at", "perf_event_open", "clock_settime", "settimeofday", "userfaultfd", "acct",
               "iopl", "ioperm", "io_uring_setup", "syslog", "process_vm_writev"}  # fmt: skip
    assert not allowed & blocked, allowed & blocked
    with_admin = seccomp.for_container(seccomp.default_profile(), ["CAP_SYS_ADMIN"])
    admin_allowed = {name for rule in with_admin["syscalls"] for name in rule["names"]}
    assert {"mount", "unshare", "setns"} <= admin_allowed
