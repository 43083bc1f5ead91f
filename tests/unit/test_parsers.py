"""The parsers between an operator's input and the runtime, the registry and daemon.json: sizes, published ports,
restart policies, image references, WWW-Authenticate challenges, the daemon.json merge and the capability sets.
Each bad value must fail with a message that names the option."""

import re
import sys

import pytest

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.harbor import _parse_challenge, registry_host
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import ctr_cli
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.cgroups import CgroupError, parse_size
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.container import (
    parse_ports,
    parse_restart_policy,
)
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.layers import ImageError, parse_reference
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.spec import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    SpecError,
    bounding_set,
    capability_set,
)
from ansible_collections.mooring.ops.plugins.modules.docker_daemon_config import merge_config
from ansible_collections.mooring.ops.plugins.modules.harbor_image import _split_reference


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512m", 512 << 20),
        ("512M", 512 << 20),
        ("512mb", 512 << 20),
        ("1g", 1 << 30),
        ("1.5g", 3 << 29),
        ("64k", 64 << 10),
        ("1024", 1024),
        (1024, 1024),
        ("2t", 2 << 40),
        (" 8m ", 8 << 20),
    ],
)
def test_sizes_read_as_docker_reads_them(value, expected):
    assert parse_size(value, "memory") == expected


@pytest.mark.parametrize("value", ["", "m", "lots", "1x", "1..5g", "--1"])
def test_a_size_that_is_not_one_names_the_option(value):
    with pytest.raises(CgroupError, match=r"^memory_swap must be a size such as 512m"):
        parse_size(value, "memory_swap")


@pytest.mark.parametrize("value", ["0", "-1g", "0m"])
def test_a_size_of_zero_or_less_is_refused(value):
    with pytest.raises(CgroupError, match=r"^memory must be more than 0"):
        parse_size(value, "memory")


def test_ports_read_host_then_container_then_protocol():
    assert parse_ports(["8080:80", "5353:53/udp"]) == [
        {"host_port": 8080, "container_port": 80, "protocol": "tcp"},
        {"host_port": 5353, "container_port": 53, "protocol": "udp"},
    ]
    assert parse_ports(["1:65535/tcp"]) == [{"host_port": 1, "container_port": 65535, "protocol": "tcp"}]


@pytest.mark.parametrize("value", ["9000", "80", "a:80", "8080:http", "8080:80/sctp", "0.0.0.0:8080:80", ":80"])
def test_a_port_that_is_not_host_colon_container_names_published_ports(value):
    with pytest.raises(ValueError, match=r"^published_ports: .* is not host_port:container_port\[/tcp\|udp\]$"):
        parse_ports([value])


@pytest.mark.parametrize("value", ["0:80", "8080:0", "65536:80", "80:70000"])
def test_a_port_out_of_range_is_refused(value):
    with pytest.raises(ValueError, match=r"^published_ports: .* has a port outside 1-65535$"):
        parse_ports([value])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("no", {"name": "no", "maximum_retry_count": 0}),
        ("always", {"name": "always", "maximum_retry_count": 0}),
        ("on-failure", {"name": "on-failure", "maximum_retry_count": 0}),
        ("on-failure:5", {"name": "on-failure", "maximum_retry_count": 5}),
    ],
)
def test_restart_policies(value, expected):
    assert parse_restart_policy(value) == expected


@pytest.mark.parametrize("value", ["always:3", "on-failure:x", "unless-stopped", "", "on-failure:-1"])
def test_a_restart_policy_docker_would_not_take_names_the_option(value):
    with pytest.raises(ValueError, match=r"^restart_policy must be no, on-failure, on-failure:N or always"):
        parse_restart_policy(value)


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("harbor.lab/mooring/nginx:1.22", ("harbor.lab", "mooring/nginx", "1.22")),
        ("harbor.lab/mooring/nginx", ("harbor.lab", "mooring/nginx", "latest")),
        ("registry:5000/a/b/c:tag", ("registry:5000", "a/b/c", "tag")),
        ("registry:5000/a/b", ("registry:5000", "a/b", "latest")),
        ("localhost/probe:1", ("localhost", "probe", "1")),
        (f"harbor.lab/mooring/nginx@{DIGEST}", ("harbor.lab", "mooring/nginx", DIGEST)),
        (f"harbor.lab/mooring/nginx:1.22@{DIGEST}", ("harbor.lab", "mooring/nginx", DIGEST)),
    ],
)
def test_references_split_into_registry_repository_and_tag(reference, expected):
    assert parse_reference(reference) == expected


@pytest.mark.parametrize("reference", ["nginx", "nginx:1.22", "library/nginx:1.22", "mooring/nginx", "harbor.lab"])
def test_a_reference_without_its_registry_is_refused(reference):
    """Docker would silently go to Docker Hub; the runtime has no default registry to go to."""
    with pytest.raises(ImageError, match=r"must name its registry, e\.g\. harbor\.example\.com/project/name:tag"):
        parse_reference(reference)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("nginx:1.22", ("nginx", "1.22")),
        ("nginx", ("nginx", None)),
        ("host:5000/a/b:tag", ("host:5000/a/b", "tag")),
        ("host:5000/a/b", ("host:5000/a/b", None)),
        (f"host:5000/a/b@{DIGEST}", ("host:5000/a/b", None)),
        ("sha256:" + "cd" * 32, (None, None)),
        ("cd" * 32, (None, None)),
        ("0123456789ab", (None, None)),
        ("registry:5000/0123456789ab", ("registry:5000/0123456789ab", None)),
    ],
)
def test_harbor_image_splits_its_source(reference, expected):
    assert _split_reference(reference) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("harbor.lab", "harbor.lab"),
        ("https://harbor.lab", "harbor.lab"),
        ("https://harbor.lab/", "harbor.lab"),
        ("http://harbor.lab:8080", "harbor.lab:8080"),
    ],
)
def test_a_harbor_url_or_host_gives_the_registry_host(value, expected):
    assert registry_host(value) == expected


def test_a_bearer_challenge_gives_realm_service_and_scope():
    header = (
        'Bearer realm="https://harbor.lab/service/token",service="harbor-registry",'
        'scope="repository:mooring/nginx:pull,push"'
    )
    assert _parse_challenge(header) == (
        "bearer",
        {
            "realm": "https://harbor.lab/service/token",
            "service": "harbor-registry",
            "scope": "repository:mooring/nginx:pull,push",
        },
    )


def test_a_basic_challenge_and_odd_spacing():
    assert _parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    assert _parse_challenge('BEARER realm="r", service="s"') == ("bearer", {"realm": "r", "service": "s"})
    assert _parse_challenge("Negotiate") == ("negotiate", {})


def test_daemon_json_keeps_what_nobody_manages_and_merges_objects_deep():
    existing = {"log-driver": "journald", "log-opts": {"max-size": "10m", "tag": "x"}, "debug": True}
    overlay = {"log-opts": {"max-size": "50m"}, "registry-mirrors": ["https://mirror.example"]}
    merged, dropped = merge_config(existing, overlay)
    assert merged == {
        "log-driver": "journald",
        "log-opts": {"max-size": "50m", "tag": "x"},
        "debug": True,
        "registry-mirrors": ["https://mirror.example"],
    }
    assert dropped == []
    assert existing["log-opts"] == {"max-size": "10m", "tag": "x"}, "the merge must not change its input"


def test_daemon_json_lists_are_replaced_not_appended():
    """An inventory that drops a mirror must see it gone: lists are the inventory's, whole."""
    merged, _dropped = merge_config({"insecure-registries": ["a", "b"]}, {"insecure-registries": ["b"]})
    assert merged == {"insecure-registries": ["b"]}


def test_daemon_json_drops_a_recorded_key_the_inventory_no_longer_sets():
    existing = {"registry-mirrors": ["https://m"], "insecure-registries": ["r"], "debug": True}
    merged, dropped = merge_config(
        existing, {"insecure-registries": ["r"]}, recorded=["registry-mirrors", "insecure-registries", "live"]
    )
    assert merged == {"insecure-registries": ["r"], "debug": True}
    assert dropped == ["registry-mirrors"], "a recorded key absent from the file is not reported as removed"


def test_daemon_json_without_a_record_removes_nothing():
    merged, dropped = merge_config({"registry-mirrors": ["https://m"]}, {}, recorded=None)
    assert (merged, dropped) == ({"registry-mirrors": ["https://m"]}, [])


def test_the_default_capabilities_are_dockers_fourteen():
    assert capability_set() == set(DEFAULT_CAPABILITIES)
    assert len(DEFAULT_CAPABILITIES) == 14
    assert {"SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "SYS_MODULE", "DAC_READ_SEARCH"}.isdisjoint(capability_set())


def test_cap_add_and_cap_drop_as_docker_run_takes_them():
    assert capability_set(add=["net_admin", "CAP_SYS_PTRACE"]) == {*DEFAULT_CAPABILITIES, "NET_ADMIN", "SYS_PTRACE"}
    assert capability_set(drop=["NET_RAW", "cap_mknod"]) == set(DEFAULT_CAPABILITIES) - {"NET_RAW", "MKNOD"}
    assert capability_set(add=["NET_BIND_SERVICE"], drop=["ALL"]) == set()
    assert capability_set(add=["ALL"], drop=["SYS_ADMIN"]) == bounding_set() - {"SYS_ADMIN"}
    missing = sorted(set(CAPABILITIES) - bounding_set())
    if missing:  # this machine's own bounding set lacks SYS_RESOURCE: naming it must fail, not vanish
        with pytest.raises(SpecError, match=rf"^capabilities: this host cannot hand on {missing[0]}"):
            capability_set(add=[missing[0]])


def test_privileged_gets_what_the_host_can_hand_on_and_no_more():
    assert capability_set(privileged=True) == bounding_set()
    assert capability_set(privileged=True, drop=["SYS_ADMIN"]) == bounding_set() - {"SYS_ADMIN"}


def test_an_unknown_capability_names_the_option_it_came_from():
    with pytest.raises(SpecError, match=r"^capabilities: unknown capabilities NET_ADMIM \(e\.g\."):
        capability_set(add=["NET_ADMIM"])
    with pytest.raises(SpecError, match=r"^cap_drop: unknown capabilities CAP_CHWON"):
        capability_set(drop=["CAP_CHWON"])


def parsed(*argv):
    return vars(ctr_cli.parse(list(argv)))


def test_the_command_line_parses_as_argparse_did():
    options = parsed(
        "--root", "/x", "--run-dir=/y", "run", "--rm", "-e", "A=1", "-eB=2", "--env=C=3", "--network=none", "-m",
        "64m", "--cpus", "0.5", "--pids-limit", "20", "--oom-score-adj", "-500", "-p", "8080:80", "--sysctl",
        "net.ipv4.ip_forward=1", "img", "sh", "-c", "echo $A", "--rm",
    )  # fmt: skip
    assert options == {
        **options, "root": "/x", "run_dir": "/y", "action": "run", "rm": True, "env": ["A=1", "B=2", "C=3"],
        "network": "none", "memory": "64m", "cpus": 0.5, "pids_limit": 20, "oom_score_adj": -500,
        "publish": ["8080:80"], "sysctl": ["net.ipv4.ip_forward=1"], "image": "img",
        "command": ["sh", "-c", "echo $A", "--rm"],  # the container's own options stay its own
        "detach": False, "name": None, "restart": "no", "volume": [],
    }  # fmt: skip
    assert parsed("run", "img")["command"] == []
    assert parsed("run", "--", "img", "--", "true")["command"] == ["true"]
    assert parsed("--bridge", "run", "images") == {**parsed("images"), "bridge": "run"}  # a value, not a command
    assert parsed("rm", "c1", "-f") == {**parsed("rm", "c1"), "force": True}  # options after an argument
    assert parsed("stop", "-t", "3", "c1")["time"] == 3
    assert parsed("exec", "c1", "ls", "-l")["command"] == ["ls", "-l"]
    assert parsed("load", "-i", "a.tar")["input"] == "a.tar"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "a command is needed"),
        (["bogus"], "unknown command 'bogus'"),
        (["--bogus", "images"], "unknown option --bogus"),
        (["run", "--cpus", "half", "img"], "--cpus takes a number, got 'half'"),
        (["run", "--pids-limit", "1.5", "img"], "--pids-limit takes an integer, got '1.5'"),
        (["run", "--network", "overlay", "img"], "--network must be one of bridge, host, none, got 'overlay'"),
        (["run", "--sysctl", "net.ipv4.ip_forward", "img"], "--sysctl takes KEY=VALUE"),
        (["run", "--rm=yes", "img"], "--rm takes no value"),
        (["run", "--name"], "--name needs a value"),
        (["run", "--rm"], "expected IMAGE, got none"),
        (["rm", "a", "b"], "expected NAME, got a b"),
        (["images", "extra"], "expected no argument, got extra"),
        (["load"], "--input is required"),
    ],
)
def test_a_bad_command_line_is_refused_naming_what_is_wrong(argv, message):
    with pytest.raises(ctr_cli.UsageError, match=re.escape(message)):
        ctr_cli.parse(argv)


def test_help_and_usage_name_every_option():
    with pytest.raises(ctr_cli.UsageError) as asked:
        ctr_cli.parse(["run", "--help"])
    assert asked.value.args[0] is None and asked.value.command == "run"
    usage = ctr_cli.usage("run")
    for names, _kind, _default in ctr_cli._SUBCOMMANDS["run"][0]:
        assert "|".join(names) in usage
    assert usage.endswith("IMAGE [COMMAND...]")
