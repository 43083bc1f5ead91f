"""The OCI runtime's command line and bundle checks, without root: which calls are OCI ones (containerd's shim
puts global options first), the options of each command, signals by name or number, and config.json fields that
must be refused, each naming the field."""

import json
import sys

import pytest

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.oci import OciError, parse_signal
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.oci_bundle import load_bundle
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.oci_cli import (
    UsageError,
    _exec_process,
    _parse,
    _parse_exec,
    split_globals,
)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["state", "c1"], ({}, ["state", "c1"])),
        (
            ["--root", "/run/x", "--log", "/l.json", "--log-format", "json", "create", "--bundle", "/b", "c1"],
            ({"--root": "/run/x", "--log": "/l.json", "--log-format": "json"}, ["create", "--bundle", "/b", "c1"]),
        ),
        (
            ["--root=/run/x", "--systemd-cgroup", "delete", "c1"],
            ({"--root": "/run/x", "--systemd-cgroup": True}, ["delete", "c1"]),
        ),
        (["features"], ({}, ["features"])),
        (["--root", "/var/lib/x", "run", "img"], None),
        (["ps", "-a"], None),
        (["exec", "web", "ls"], None),
        (["ps", "--format", "json", "c1"], ({}, ["ps", "--format", "json", "c1"])),
        (["exec", "--process", "/p.json", "c1"], ({}, ["exec", "--process", "/p.json", "c1"])),
        (["--root", "/r", "--log", "/l", "exec", "c1", "ls"], ({"--root": "/r", "--log": "/l"}, ["exec", "c1", "ls"])),
        (["rm", "-f", "c1"], None),
        (["--root"], None),
        ([], None),
    ],
)
def test_only_oci_calls_go_to_the_oci_command_line(argv, expected):
    assert split_globals(argv) == expected


def test_command_options_take_both_forms_and_refuse_the_unknown():
    options, rest = _parse(["--bundle=/b", "--pid-file", "/p", "c1"], values=(("--bundle", "-b"), ("--pid-file",)))
    assert options == {"--bundle": "/b", "--pid-file": "/p"} and rest == ["c1"]
    options, rest = _parse(["-b", "/b", "c1"], values=(("--bundle", "-b"),))
    assert options == {"--bundle": "/b"}
    with pytest.raises(UsageError, match="unknown option --bogus"):
        _parse(["--bogus", "c1"])
    with pytest.raises(UsageError, match="--bundle needs a value"):
        _parse(["c1", "--bundle"], values=(("--bundle",),))
    with pytest.raises(UsageError, match="expected ID"):
        _parse([])
    _options, words = _parse(["c1", "-9"], positional=(1, 2))
    assert words == ["c1", "-9"], "a negative-looking signal number is an argument, not an option"


@pytest.mark.parametrize(("value", "number"), [("KILL", 9), ("SIGTERM", 15), ("term", 15), ("9", 9), ("SIGUSR1", 10)])
def test_signals_by_name_or_number(value, number):
    assert parse_signal(value) == number


@pytest.mark.parametrize("value", ["SIGBOGUS", "0", "99", "", "-1"])
def test_a_bad_signal_is_refused_naming_it(value):
    with pytest.raises(OciError, match="signal"):
        parse_signal(value)


def _bundle(tmp_path, **changes):
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    document = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["sh"], "cwd": "/"},
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]},
    }
    document.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(document))
    return str(tmp_path)


def test_a_good_bundle_is_read_with_its_root_made_absolute(tmp_path):
    document = load_bundle(_bundle(tmp_path))
    assert document["root"]["path"] == str(tmp_path / "rootfs")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ociVersion": "2.0.0"}, "ociVersion '2.0.0'"),
        ({"ociVersion": 1}, "ociVersion must be a str"),
        ({"root": {"path": "missing"}}, "root.path 'missing' is not a directory"),
        ({"root": {}}, "root.path is required"),
        ({"process": {"args": "sh", "cwd": "/"}}, "process.args must be a list"),
        ({"process": {"args": ["sh"], "cwd": "/", "env": ["NOEQUALS"]}}, "process.env entries"),
        ({"process": {"args": ["sh"], "cwd": "/", "user": {"uid": -1}}}, "process.user.uid"),
        (
            {"process": {"args": ["sh"], "cwd": "/", "rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]}},
            "process.rlimits: unknown type 'RLIMIT_BOGUS'",
        ),
        ({"process": {"args": ["sh"], "cwd": "/", "terminal": "yes"}}, "process.terminal"),
        ({"mounts": [{"destination": "relative"}]}, "mounts[0].destination must be an absolute path"),
        ({"hooks": {"preStart": []}}, "hooks.preStart is not a hook"),
        ({"linux": {"namespaces": [{"type": "mount"}, {"type": "mount"}]}}, "mount is given twice"),
        ({"linux": {"namespaces": [{"type": "mount"}, {"type": "user"}]}}, "needs both linux.uidMappings"),
        ({"linux": {"namespaces": [{"type": "mount"}, {"type": "time"}]}}, "the time namespace is not supported"),
        (
            {
                "linux": {
                    "namespaces": [{"type": "mount"}, {"type": "user"}],
                    "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 0}],
                    "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
                }
            },
            "linux.uidMappings[0] must have containerID, hostID and size",
        ),
        ({"linux": {"namespaces": [{"type": "mount", "path": "/nonexistent/ns"}]}}, "does not exist"),
        ({"linux": {"namespaces": [{"type": "mount"}], "sysctl": {"../x": "1"}}}, "linux.sysctl key '../x'"),
        ({"linux": {"namespaces": [{"type": "mount"}], "rootfsPropagation": "sideways"}}, "rootfsPropagation"),
        ({"linux": {"namespaces": [{"type": "mount"}], "cgroupsPath": "/a/../../b"}}, "linux.cgroupsPath"),
        (
            {"linux": {"namespaces": [{"type": "mount"}], "resources": {"hugepageLimits": [{"pageSize": "2MB"}]}}},
            "linux.resources.hugepageLimits",
        ),
        ({"linux": {"namespaces": [{"type": "mount"}], "uidMappings": [{"containerID": 0}]}}, "uidMappings"),
        ({"hostname": "h"}, "hostname is set but linux.namespaces has no uts namespace"),
        ({"linux": None}, "linux is required"),
    ],
)
def test_a_bad_config_is_refused_naming_the_field(tmp_path, changes, message):
    with pytest.raises(OciError, match=r"config\.json") as refused:
        load_bundle(_bundle(tmp_path, **changes))
    assert message in str(refused.value)


def test_a_bundle_without_config_or_with_broken_json_is_refused(tmp_path):
    with pytest.raises(OciError, match=r"has no config\.json"):
        load_bundle(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(OciError, match=r"config\.json"):
        load_bundle(str(tmp_path))


def test_exec_takes_its_options_before_the_id_and_the_command_after_it():
    options, container_id, command = _parse_exec(
        ["--detach", "--pid-file=/p", "-e", "A=1", "--env", "B=2", "--user", "5:6", "c1", "sh", "-c", "ls -l"]
    )
    assert container_id == "c1" and command == ["sh", "-c", "ls -l"]
    assert options["--detach"] is True and options["--pid-file"] == "/p" and options["--env"] == ["A=1", "B=2"]
    _options, _id, command = _parse_exec(["c1", "--", "ls", "-a"])
    assert command == ["ls", "-a"]
    for argv, message in ((["--bogus", "c1"], "unknown option --bogus"), (["--detach"], "expected ID"),
                          (["--cwd"], "--cwd needs a value")):  # fmt: skip
        with pytest.raises(UsageError, match=message):
            _parse_exec(argv)


def test_exec_builds_its_process_from_the_containers_with_the_options_over_it(tmp_path):
    document = {"process": {"args": ["init"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0},
                            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]}}}  # fmt: skip
    options, _id, command = _parse_exec(["--cwd", "/srv", "-e", "X=1", "-u", "33:33", "--cap", "CAP_CHOWN", "c1", "id"])
    process = _exec_process(options, command, document)
    assert process["args"] == ["id"] and process["cwd"] == "/srv" and process["env"] == ["PATH=/bin", "X=1"]
    assert process["user"] == {"uid": 33, "gid": 33} and process["terminal"] is False
    assert process["capabilities"]["bounding"] == ["CAP_CHOWN", "CAP_KILL"]
    assert document["process"]["args"] == ["init"], "the container's own process is not changed"
    (tmp_path / "p.json").write_text(json.dumps({"args": ["true"], "cwd": "/"}))
    options, _id, command = _parse_exec(["--process", str(tmp_path / "p.json"), "c1"])
    assert _exec_process(options, command, document) == {"args": ["true"], "cwd": "/"}
    with pytest.raises(UsageError, match="not both"):
        _exec_process(options, ["ls"], document)
    options, _id, command = _parse_exec(["-u", "root", "c1", "id"])
    with pytest.raises(UsageError, match="--user takes UID"):
        _exec_process(options, command, document)
