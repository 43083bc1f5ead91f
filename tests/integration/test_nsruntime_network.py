"""The runtime's networking on this kernel, as root: a bridge, a veth and a network namespace a container, leases,
NAT and a published port, with containers born by the runtime itself (nsruntime.oci) on the lab's Debian
image. Everything is torn down and checked for residue."""

import contextlib
import os
import socket
import sys
import time
import urllib.request
import uuid

import pytest

from conftest import REPO_DIR, free_port, oci_started, run, runtime_residue

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import network, overlay, spec


@pytest.fixture
def net(tmp_path):
    return network.Network(state_dir=str(tmp_path / "network"), bridge="mooringt0", subnet="10.89.0.0/24")


def residue(net, name):
    return runtime_residue(name, os.path.dirname(net.state_dir))


@contextlib.contextmanager
def container(image, net, tmp_path, argv, published_ports=(), name=None):
    store, record = image
    name = name or f"t{uuid.uuid4().hex[:8]}"
    directory = tmp_path / name
    with contextlib.ExitStack() as stack:
        stack.callback(net.teardown, name)
        info = net.setup(name, list(published_ports), name, stack)
        directory.mkdir()
        etc = network.write_etc(str(directory), name, info["ip"])
        merged = overlay.mount_rootfs(store, record, str(directory))
        stack.callback(overlay.unmount_rootfs, str(directory))
        settings = {"image": "debian", "argv": argv, "env": {"PATH": spec.DEFAULT_PATH}, "hostname": name,
                    "network": "bridge", **spec.options_config({})}  # fmt: skip
        stack.enter_context(
            oci_started(spec.build(settings, merged, info["netns"], sorted(etc.items())), directory, name)
        )
        yield {"name": name, **info}
    assert residue(net, name) == []


def wait_for(url, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - the test's own containers
                return answer.read().decode()
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not answer"
            time.sleep(0.2)


SERVE = ["python3", "-c", "import http.server as s; s.test(s.SimpleHTTPRequestHandler, port=8000, bind='0.0.0.0')"]


def test_two_containers_on_the_bridge_reach_each_other(debian_image, net, tmp_path):
    with container(debian_image, net, tmp_path, SERVE) as server:
        wait_for(f"http://{server['ip']}:8000/etc/hostname")
        fetch = (
            f"import urllib.request as u; print(u.urlopen('http://{server['ip']}:8000/etc/hostname').read().decode())"
        )
        with container(debian_image, net, tmp_path, ["sleep", "60"]) as client:
            assert client["ip"] != server["ip"]
            # From the client's network namespace, over the bridge, to the server's.
            deadline = time.monotonic() + 15
            while True:
                probe = run(["ip", "netns", "exec", network.netns_name(client["name"]), "python3", "-c", fetch])
                if probe.returncode == 0:
                    break
                assert time.monotonic() < deadline, probe.stderr
                time.sleep(0.2)
            assert probe.stdout.strip() == server["name"]


def test_a_published_port_answers_from_the_host(debian_image, net, tmp_path):
    port = free_port()
    with container(debian_image, net, tmp_path, SERVE, [{"host_port": port, "container_port": 8000}]) as server:
        assert wait_for(f"http://{net.gateway}:{port}/etc/hostname").strip() == server["name"]
        outside = run(["ip", "-4", "route", "get", "1.1.1.1"]).stdout.split("src ")[1].split()[0]
        assert wait_for(f"http://{outside}:{port}/etc/hostname").strip() == server["name"]


def test_what_a_dead_container_left_is_cleared_before_its_name_runs_again(debian_image, net, tmp_path):
    """A shim killed before it cleaned up leaves a namespace, a veth and a lease; a reboot with saved iptables
    rules (iptables-persistent) leaves a DNAT rule alone. The next start of the name clears both first: the stale
    rule for the same port would otherwise win over the new one."""
    port = free_port()
    name = f"t{uuid.uuid4().hex[:8]}"
    stale = ["-p", "tcp", "--dport", str(port), "-m", "comment", "--comment", f"mooring:{name}",
             "-j", "DNAT", "--to-destination", "10.89.0.250:8000"]  # fmt: skip
    with contextlib.ExitStack() as stack:
        net.setup(name, [], name, stack)
        stack.pop_all()
    assert {"lease", "netns", "veth"} <= set(residue(net, name))
    assert run(["iptables", "-w", "-t", "nat", "-A", network.NAT_CHAIN, *stale]).returncode == 0

    published = [{"host_port": port, "container_port": 8000}]
    with container(debian_image, net, tmp_path, SERVE, published, name=name) as server:
        assert wait_for(f"http://{net.gateway}:{port}/etc/hostname").strip() == name
        rules = [rule for rule in run(["iptables", "-w", "-t", "nat", "-S"]).stdout.splitlines() if name in rule]
        assert len(rules) == 1 and f"{server['ip']}:8000" in rules[0], rules


def test_a_taken_port_fails_first_naming_the_option_and_leaves_nothing(debian_image, net, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", 0))  # noqa: S104
        squatter.listen()
        port = squatter.getsockname()[1]
        name = "taken"
        taken = f"published_ports: host port {port} is taken"
        with pytest.raises(network.NetworkError, match=taken), contextlib.ExitStack() as stack:
            net.setup(name, [{"host_port": port, "container_port": 80}], name, stack)
        assert residue(net, name) == []


def test_leases_are_unique_and_released(net):
    first, second = net.lease("a"), net.lease("b")
    assert first != second and first != str(net.gateway)
    assert net.lease("a") == first
    net.release("a")
    net.release("b")
    assert net.leases() == {}


@pytest.fixture(autouse=True, scope="module")
def remove_test_bridge():
    yield
    network.Network(bridge="mooringt0", subnet="10.89.0.0/24").remove_bridge()
    assert run(["ip", "link", "show", "mooringt0"]).returncode != 0
    assert "mooringt0" not in run(["iptables", "-S", "FORWARD"]).stdout
