"""The Redis Cluster on the lab, as `make lab` deployed it with site.yml: six nodes (8001 and 8002 on node1-3) from
the image_factory image in harbor.lab. Real Redis; every check asks the nodes."""

import contextlib
import json
import re
import time
import uuid
from collections import Counter

import pytest
import redis
from lab_clients import RedisWriter, longest_refusal
from redis.cluster import ClusterNode, RedisCluster

from conftest import LAB_DIR, changes, failures, lab_node, report, run, run_module

NODES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}
HOST_OF = {address: node for node, address in NODES.items()}
PORTS = (8001, 8002)
# How long the drill waits for the cluster to act at all: a liveness bound, far above the node timeout (5 s).
# How fast a promotion is is bench/middleware.py's measurement, not a test's assertion.
PROMOTION_DEADLINE = 120


def password():
    return (LAB_DIR / "redis-password").read_text().strip()


def node_client(address, port):
    return redis.Redis(host=address, port=port, password=password(), decode_responses=True, socket_timeout=10)


def cluster_nodes(address="172.30.0.11", port=8001):
    """CLUSTER NODES as dicts: address, host (lab node), role, master id, slot count, failed."""
    entries = []
    for line in node_client(address, port).execute_command("CLUSTER", "NODES").splitlines():
        parts = line.split()
        flags = parts[2].split(",")
        slots = 0
        for item in parts[8:]:
            if not item.startswith("["):
                first, _dash, last = item.partition("-")
                slots += int(last or first) - int(first) + 1
        node_address = parts[1].split("@")[0]
        entries.append(
            {
                "id": parts[0],
                "address": node_address,
                "host": HOST_OF[node_address.split(":")[0]],
                "role": "master" if "master" in flags else "replica",
                "master": parts[3],
                "slots": slots,
                "failed": "fail" in flags or "fail?" in flags,
                "connected": parts[7] == "connected",
            }
        )
    return entries


def masters_per_host(entries):
    return Counter(entry["host"] for entry in entries if entry["role"] == "master" and entry["slots"] > 0)


def assert_shape(masters_expected=3, spread=True):
    """Every slot served, each master with a replica on another host; spread: no host holds two masters (the lab
    has as many hosts as masters)."""
    entries = cluster_nodes()
    by_id = {entry["id"]: entry for entry in entries}
    masters = [entry for entry in entries if entry["role"] == "master" and entry["slots"] > 0]
    assert len(masters) == masters_expected, entries
    assert sum(master["slots"] for master in masters) == 16384
    for master in masters:
        replicas = [entry for entry in entries if entry["master"] == master["id"] and not entry["failed"]]
        assert replicas, f"{master['address']} has no replica: {entries}"
        hosts = [master["host"]] + [replica["host"] for replica in replicas]
        assert len(set(hosts)) == len(hosts), f"{master['address']} shares a host with its replica: {hosts}"
    if spread:
        assert max(masters_per_host(entries).values()) == 1, masters_per_host(entries)
    return entries, by_id


def cluster_play(*args):
    return run(["ansible-playbook", "-i", "inventory/lab", *args, "playbooks/redis_cluster.yml"])


def client():
    return RedisCluster(
        startup_nodes=[ClusterNode(address, port) for address in NODES.values() for port in PORTS],
        password=password(),
        decode_responses=True,
        socket_timeout=5,
    )


def started_at(node, container):
    return json.loads(lab_node(node, "docker", "inspect", container).stdout)[0]["State"]["StartedAt"]


def test_every_node_reports_cluster_state_ok_with_all_slots(lab):
    for address in NODES.values():
        for port in PORTS:
            info = node_client(address, port).execute_command("CLUSTER", "INFO")
            assert "cluster_state:ok" in info
            assert "cluster_slots_ok:16384" in info
            assert "cluster_known_nodes:6" in info


def test_three_masters_each_with_a_replica_on_another_host(lab):
    assert_shape()


def test_the_password_is_required_and_never_on_a_command_line(lab):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="172.30.0.11", port=8001, socket_timeout=5).ping()
    processes = lab_node("node1", "ps", "-eo", "args").stdout
    assert password() not in processes
    inspected = lab_node("node1", "docker", "inspect", "redis-8001").stdout
    assert password() not in inspected
    mode = lab_node("node1", "stat", "-c", "%a", "/srv/mooring/redis/8001/conf/secrets.conf").stdout.strip()
    assert mode == "600"


def wait_until_rejoined(victim, replica, timeout=60):
    """The old master, started again, is a connected replica of the one that took over."""
    deadline = time.monotonic() + timeout
    while True:
        view = {entry["address"]: entry for entry in cluster_nodes(*replica["address"].split(":"))}
        old = view[victim["address"]]
        if old["role"] == "replica" and old["master"] == replica["id"] and old["connected"] and not old["failed"]:
            return
        assert time.monotonic() < deadline, f"old master did not rejoin as a replica: {old}"
        time.sleep(0.5)


def test_a_stopped_master_fails_over_keeps_every_key_and_rejoins_and_the_next_run_spreads_the_masters(lab):
    """The drill leaves the promoted replica on a host that already runs a master; the next run hands one of the
    two over (CLUSTER FAILOVER) to a replica on the host without one: check mode says so first."""
    prefix = f"drill-{uuid.uuid4().hex[:8]}"
    cluster = client()
    for index in range(1000):
        cluster.set(f"{prefix}:{index}", index)
    # Writes are acknowledged by the master; WAIT for the replica so that the drill tests failover, not loss of
    # asynchronous writes in flight.
    entries = assert_shape()[0]
    for entry in entries:
        if entry["role"] == "master":
            node_client(*entry["address"].split(":")).execute_command("WAIT", 1, 5000)
    masters = [entry for entry in entries if entry["role"] == "master"]
    victim = next((entry for entry in masters if entry["host"] == "node1"), masters[0])
    replica = next(entry for entry in entries if entry["master"] == victim["id"])
    container = f"redis-{victim['address'].split(':')[1]}"
    watcher = node_client(*replica["address"].split(":"))

    stopped = time.monotonic()
    assert lab_node(victim["host"], "docker", "stop", "-t", "1", container).returncode == 0
    try:
        while watcher.info("replication")["role"] != "master":
            assert time.monotonic() - stopped < PROMOTION_DEADLINE, "the replica was never promoted"
            time.sleep(0.2)
        promoted = {entry["address"]: entry for entry in cluster_nodes(*replica["address"].split(":"))}
        assert promoted[replica["address"]]["role"] == "master"
        assert promoted[replica["address"]]["slots"] == victim["slots"], "the promoted replica took other slots"
        assert promoted[victim["address"]]["failed"], "the stopped master is not marked failed"
        deadline = time.monotonic() + 30
        while "cluster_state:ok" not in watcher.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        survivors = RedisCluster(
            startup_nodes=[ClusterNode(*replica["address"].split(":"))],
            password=password(),
            decode_responses=True,
        )
        values = [survivors.get(f"{prefix}:{index}") for index in range(1000)]
        assert values == [str(index) for index in range(1000)]
    finally:
        assert lab_node(victim["host"], "docker", "start", container).returncode == 0

    wait_until_rejoined(victim, replica)
    crowded = masters_per_host(assert_shape(spread=False)[0])
    assert crowded[victim["host"]] == 0 and crowded[replica["host"]] == 2, crowded

    checked = cluster_play("--check", "--diff")
    assert checked.returncode == 0, failures(checked)
    assert any(changes(checked).values()), checked.stdout[-3000:]
    # The diff: a master moves to the victim's host, which has none now.
    assert f"+master {NODES[victim['host']]}:" in checked.stdout, checked.stdout[-3000:]
    assert masters_per_host(cluster_nodes()) == crowded

    spread = cluster_play()
    assert spread.returncode == 0, failures(spread)
    assert any(changes(spread).values()), spread.stdout[-3000:]
    assert_shape()
    for index in range(0, 1000, 97):
        assert client().get(f"{prefix}:{index}") == str(index)

    # Also the promise of check mode on a converged lab: nothing to report.
    again = cluster_play("--check")
    assert again.returncode == 0, failures(again)
    assert not any(changes(again).values()), again.stdout[-3000:]


def test_a_changed_setting_rolls_host_by_host_masters_handed_over_first_and_no_write_is_lost(lab):
    """A redis.conf change restarts every node, one host at a time; each host's masters hand over first (CLUSTER
    FAILOVER), so a writer through the cluster client loses no acknowledged key; the refused-write window is
    reported; the masters end spread, and a re-run changes nothing."""
    prefix = f"roll-{uuid.uuid4().hex[:8]}"
    setting = {"redis_cluster_config_extra": {"hz": 11}}
    before = {(node, port): started_at(node, f"redis-{port}") for node in NODES for port in PORTS}
    writer = RedisWriter(prefix)
    rolled = writer.during(lambda: cluster_play("-e", json.dumps(setting)))
    report(
        f"redis roll: {len(writer.acknowledged)} writes acknowledged, {len(writer.refused)} refused, "
        f"longest refusal {longest_refusal(writer.refused):.2f} s"
    )
    try:
        assert rolled.returncode == 0, failures(rolled)
        assert writer.limit > len(writer.acknowledged) + len(writer.refused), "the writer ended before the roll"
        assert all(started_at(node, f"redis-{port}") != before[(node, port)] for node, port in before)
        reader = client()
        lost = [index for index in writer.acknowledged if reader.get(f"{prefix}:{index}") != str(index)]
        assert lost == [], f"{len(lost)} acknowledged keys lost, first {lost[:10]}"
        assert_shape()
        again = cluster_play("-e", json.dumps(setting))
        assert again.returncode == 0, failures(again)
        assert not any(changes(again).values()), again.stdout[-3000:]
    finally:
        restored = cluster_play()
        assert restored.returncode == 0, failures(restored)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"redis_cluster_ports": [8001], "redis_cluster_replicas": 1},
            "a Redis Cluster needs at least 3 masters: 3 nodes (redis_cluster_ports over the hosts of redis_cluster) "
            "with redis_cluster_replicas=1 give 1",
        ),
        (
            {"redis_cluster_ports": [8001, 8002, 8003, 8004], "redis_cluster_replicas": 3},
            "redis_cluster_replicas=3 is more than 3 hosts can hold with anti-affinity",
        ),
        ({"redis_cluster_password": ""}, "redis_cluster_password must not be empty"),
        ({"redis_cluster_ports": [70000]}, "redis_cluster_ports of node1 must be distinct port numbers"),
    ],
)
def test_bad_input_fails_before_any_change_and_names_the_variable(lab, extra, message):
    before = {node: started_at(node, "redis-8001") for node in NODES}
    config_before = lab_node("node1", "cat", "/srv/mooring/redis/8001/conf/redis.conf").stdout
    failed = cluster_play("-e", json.dumps(extra))
    assert failed.returncode != 0
    assert message in failed.stdout, failed.stdout[-3000:]
    assert not any(changes(failed).values())
    assert {node: started_at(node, "redis-8001") for node in NODES} == before
    assert lab_node("node1", "cat", "/srv/mooring/redis/8001/conf/redis.conf").stdout == config_before
    for node in NODES:
        assert "redis-8003" not in lab_node(node, "docker", "ps", "-a", "--format", "{{.Names}}").stdout


@pytest.fixture
def scale_cluster(lab):
    """A second cluster on other ports (7001...), removed afterwards, so that growing it leaves the lab's alone."""
    settings = {
        "redis_cluster_container_prefix": "redis-scale",
        "redis_cluster_base_dir": "/srv/mooring/redis-scale",
    }
    yield settings
    for node in NODES:
        names = lab_node(node, "docker", "ps", "-a", "--filter", "name=redis-scale", "--format", "{{.Names}}").stdout
        for name in names.split():
            lab_node(node, "docker", "rm", "-f", name)
        lab_node(node, "rm", "-rf", "/srv/mooring/redis-scale")


def test_scale_out_adds_nodes_moves_slots_to_the_new_master_and_keeps_keys(scale_cluster):
    first = cluster_play("-e", json.dumps({**scale_cluster, "redis_cluster_ports": [7001, 7002]}))
    assert first.returncode == 0, failures(first)
    cluster = RedisCluster(host="172.30.0.11", port=7001, password=password(), decode_responses=True)
    for index in range(2000):
        cluster.set(f"scale:{index}", index)

    grown = cluster_play("-e", json.dumps({**scale_cluster, "redis_cluster_ports": [7001, 7002, 7003]}))
    assert grown.returncode == 0, failures(grown)

    entries = cluster_nodes("172.30.0.11", 7001)
    assert len(entries) == 9
    masters = [entry for entry in entries if entry["role"] == "master" and entry["slots"] > 0]
    assert len(masters) == 4
    assert sum(master["slots"] for master in masters) == 16384
    assert min(master["slots"] for master in masters) >= 4096
    for master in masters:
        replicas = [entry for entry in entries if entry["master"] == master["id"]]
        assert replicas, f"{master['address']} has no replica"
        assert master["host"] not in {replica["host"] for replica in replicas}
    reader = RedisCluster(host="172.30.0.13", port=7003, password=password(), decode_responses=True)
    assert [reader.get(f"scale:{index}") for index in range(2000)] == [str(index) for index in range(2000)]

    again = cluster_play("-e", json.dumps({**scale_cluster, "redis_cluster_ports": [7001, 7002, 7003]}))
    assert again.returncode == 0, failures(again)
    assert not any(changes(again).values()), again.stdout[-3000:]


def unreachable_nodes(count=6, **changes):
    """Node entries on TEST-NET-1 (RFC 5737, never routed): a check that passes by mistake would try to connect
    and fail with "cannot reach", not with the expected message."""
    nodes = [{"host": "192.0.2.1", "port": 7001 + index} for index in range(count)]
    for index, change in changes.items():
        nodes[int(index.removeprefix("n"))].update(change)
    return nodes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"nodes": unreachable_nodes(n2={"port": 7001})}, "nodes lists 192.0.2.1:7001 more than once"),
        ({"nodes": unreachable_nodes(), "replicas": -1}, "replicas must be 0 or more, got -1"),
        (
            {"nodes": unreachable_nodes(5)},
            "a Redis Cluster needs at least 3 masters: 5 nodes (option nodes) with 1 replica(s) each (option "
            "replicas) make 2",
        ),
        (
            {"nodes": unreachable_nodes(n0={"port": 70000})},
            "nodes[0] (192.0.2.1): port 70000 and cluster bus port 80000 (bus_port, default port + 10000) must be "
            "within 1-65535",
        ),
        (
            {"nodes": unreachable_nodes(n3={"port": 60000})},
            "nodes[3] (192.0.2.1): port 60000 and cluster bus port 70000",
        ),
        ({"nodes": unreachable_nodes(), "password": ""}, "password must not be empty"),
        ({"nodes": unreachable_nodes(), "timeout": 0}, "timeout must be 1 second or more, got 0"),
    ],
)
def test_the_module_checks_its_own_input_before_connecting(args, message):
    """The role's checks pre-empt these in site.yml; the module is also a public API, so it checks by itself."""
    result = run_module("mooring.ops.redis_cluster", {"password": "x" * 16, **args})
    assert result.get("failed") is True, result["_output"]
    assert result["msg"].startswith(message), result["msg"]


def newest_backup(node, directory):
    listed = lab_node(node, "ls", "-1", directory).stdout.split()
    return f"{directory}/{sorted(listed)[-1]}" if listed else None


def test_a_backup_snapshots_every_master_privately_checked_and_with_every_key(lab):
    """playbooks/redis_backup.yml: each host keeps its masters' snapshots (three in all), 0700/0600, with sums
    that check; together they hold every key written before; a retention below 1 fails naming the variable."""
    prefix = f"backup-{uuid.uuid4().hex[:8]}"
    cluster = client()
    for index in range(300):
        cluster.set(f"{prefix}:{index}", index)
    keys = cluster.dbsize()  # summed over the masters
    made = run(["ansible-playbook", "-i", "inventory/lab", "playbooks/redis_backup.yml"], timeout=600)
    assert made.returncode == 0, failures(made)
    snapshots, read = [], 0
    for node in NODES:
        newest = newest_backup(node, "/srv/mooring/redis-backups")
        assert newest, f"no backup on {node}"
        files = lab_node(node, "ls", "-1", newest).stdout.split()
        mine = [name for name in files if name.endswith(".rdb")]
        snapshots += mine
        assert "SHA256SUMS" in files and f"cluster-nodes-{node}.txt" in files
        modes = lab_node(node, "sh", "-c", f"stat -c '%a' {newest} {newest}/*").stdout.split()
        assert modes[0] == "700" and set(modes[1:]) == {"600"}, modes
        assert lab_node(node, "sh", "-c", f"cd {newest} && sha256sum --check --strict SHA256SUMS").returncode == 0
        for name in mine:
            checked = lab_node(node, "docker", "run", "--rm", "--network", "none", "--user", "root", "--entrypoint",
                               "redis-check-rdb", "-v", f"{newest}/{name}:/s.rdb:ro", "harbor.lab/mooring/redis:7.0",
                               "/s.rdb")  # fmt: skip
            read += int(re.search(r"(\d+) keys read", checked.stdout + checked.stderr).group(1))
    assert len(snapshots) == 3, snapshots
    assert read >= keys >= 300
    refused = run(["ansible-playbook", "-i", "inventory/lab", "-e", "redis_cluster_backup_keep=0",
                   "playbooks/redis_backup.yml"])  # fmt: skip
    assert refused.returncode != 0
    assert "redis_cluster_backup_keep must be a whole number of 1 or more, got" in refused.stdout


def test_a_node_in_fail_state_stops_the_play_naming_it_and_the_recovery(lab):
    """A seventh node (a throwaway container on node3, not in the inventory) meets the cluster and is killed, so
    the others flag it failed. The play stops after its grace, naming the node and the recovery by hand, before
    any node changes; the documented recovery (CLUSTER FORGET on every node) lets the next run pass."""
    stray, stray_port = "redis-stray", 8009
    nodes = [redis.Redis(host=address, port=port, password=password(), decode_responses=True, socket_timeout=5)
             for address in NODES.values() for port in PORTS]  # fmt: skip
    before = {(node, port): started_at(node, f"redis-{port}") for node in NODES for port in PORTS}
    started = lab_node(
        "node3", "docker", "run", "-d", "--name", stray, "-p", f"{stray_port}:{stray_port}",
        "-p", f"{stray_port + 10000}:{stray_port + 10000}", "harbor.lab/mooring/redis:7.0", "--port", str(stray_port),
        "--cluster-enabled", "yes", "--cluster-announce-ip", NODES["node3"], "--cluster-announce-port",
        str(stray_port), "--cluster-announce-bus-port", str(stray_port + 10000),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    stray_id = None
    try:
        nodes[0].execute_command("CLUSTER", "MEET", NODES["node3"], stray_port, stray_port + 10000)
        deadline = time.monotonic() + 60
        while not all(f"{NODES['node3']}:{stray_port}" in node.execute_command("CLUSTER", "NODES") for node in nodes):
            assert time.monotonic() < deadline, "the stray node never joined"
            time.sleep(0.5)
        stray_id = next(
            line.split()[0]
            for line in nodes[0].execute_command("CLUSTER", "NODES").splitlines()
            if f"{NODES['node3']}:{stray_port}@" in line
        )
        assert lab_node("node3", "docker", "rm", "-f", stray).returncode == 0
        deadline = time.monotonic() + 60
        while not any(f"{stray_id} " in line and ",fail" in line
                      for line in nodes[0].execute_command("CLUSTER", "NODES").splitlines()):  # fmt: skip
            assert time.monotonic() < deadline, "the killed node was never flagged failed"
            time.sleep(0.5)
        failed = cluster_play()
        assert failed.returncode != 0
        said = " ".join(failed.stdout.split())  # the YAML callback folds long messages
        assert f"node(s) in fail state: {NODES['node3']}:{stray_port} (id {stray_id})" in said, failures(failed)
        assert "run CLUSTER FORGET <id> on every remaining node" in said
        assert {(node, port): started_at(node, f"redis-{port}") for node, port in before} == before
    finally:
        lab_node("node3", "docker", "rm", "-f", stray)
        if stray_id:
            for node in nodes:
                with contextlib.suppress(redis.RedisError):
                    node.execute_command("CLUSTER", "FORGET", stray_id)
    again = cluster_play()
    assert again.returncode == 0, failures(again)


def test_redis_rolls_to_debian_13s_8_0_under_a_writer_and_refuses_to_go_back(lab):
    """The upgrade drill: redis_cluster_image names the 8.0 line (Debian 13, built on demand); the six nodes roll
    host by host, masters handed over first, while the writer runs: no acknowledged key lost, every node on 8.0,
    a re-run changes nothing. Going back to 7.0 is refused before any node changes (7.0 cannot read what 8.0
    wrote), naming the variable. The lab then gets its 7.0 cluster back the way the message says: anew."""
    prefix = f"upgrade-{uuid.uuid4().hex[:8]}"
    newer = {"redis_cluster_image": "harbor.lab/mooring/redis:8.0"}
    writer = RedisWriter(prefix)
    rolled = writer.during(lambda: cluster_play("-e", json.dumps(newer)))
    report(
        f"redis upgrade: {len(writer.acknowledged)} writes acknowledged, {len(writer.refused)} refused, "
        f"longest refusal {longest_refusal(writer.refused):.2f} s"
    )
    try:
        assert rolled.returncode == 0, failures(rolled)
        reader = client()
        lost = [index for index in writer.acknowledged if reader.get(f"{prefix}:{index}") != str(index)]
        assert lost == [], f"{len(lost)} acknowledged keys lost, first {lost[:10]}"
        for address in NODES.values():
            for port in PORTS:
                node = redis.Redis(host=address, port=port, password=password(), decode_responses=True)
                assert node.info("server")["redis_version"].startswith("8.0."), (address, port)
        assert_shape()
        again = cluster_play("-e", json.dumps(newer))
        assert not any(changes(again).values()), again.stdout[-3000:]
        before = {(node, port): started_at(node, f"redis-{port}") for node in NODES for port in PORTS}
        back = cluster_play()
        assert back.returncode != 0
        said = " ".join(back.stdout.split())  # the YAML callback folds long messages
        assert "redis_cluster_image: 8.0." in said and "cannot go back to 7.0." in said, failures(back)
        assert {(node, port): started_at(node, f"redis-{port}") for node, port in before} == before
    finally:
        for node in NODES:
            for port in PORTS:
                lab_node(node, "docker", "rm", "-f", f"redis-{port}")
                lab_node(
                    node, "sh", "-c", f"rm -rf /srv/mooring/redis/{port}/data/* /srv/mooring/redis/{port}/data/.??*"
                )
        anew = cluster_play()
        assert anew.returncode == 0, failures(anew)
    assert_shape()
