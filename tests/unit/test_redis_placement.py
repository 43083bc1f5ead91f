"""The redis_cluster module's arithmetic: how 16384 slots are split, how CLUSTER NODES is read, and where masters
and replicas go so that no master shares a failure domain with its own replica (the anti-affinity that makes a
host's loss survivable)."""

import sys
import types

import pytest

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.modules.redis_cluster import (
    SLOTS,
    ClusterProblem,
    RedisCluster,
    _parse_nodes,
    _slot_ranges,
)


def planner(layout, replicas=1):
    """A RedisCluster for nodes given as {failure domain: number of nodes}, without any connection."""
    nodes = [
        {"host": f"10.0.0.{index}", "port": 7000 + slot, "bus_port": None, "failure_domain": domain}
        for index, (domain, count) in enumerate(layout.items(), start=1)
        for slot in range(count)
    ]
    params = {"nodes": nodes, "replicas": replicas, "password": None, "timeout": 5}
    return RedisCluster(types.SimpleNamespace(params=params, check_mode=True))


def placement(cluster):
    masters_count = len(cluster.nodes) // (cluster.replicas + 1)
    masters = cluster._pick_spread(cluster.nodes, masters_count)
    groups = {master["address"]: [master["failure_domain"]] for master in masters}
    others = [node for node in cluster.nodes if node not in masters]
    return masters, cluster._assign_replicas(groups, others)


@pytest.mark.parametrize("masters", [1, 2, 3, 4, 5, 7, 16])
def test_slot_ranges_cover_every_slot_once_in_order(masters):
    ranges = _slot_ranges(masters)
    assert len(ranges) == masters
    assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
    assert all(ranges[index][1] + 1 == ranges[index + 1][0] for index in range(masters - 1))
    sizes = [last - first + 1 for first, last in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_three_masters_split_as_redis_cli_splits_them():
    assert _slot_ranges(3) == [(0, 5460), (5461, 10922), (10923, 16383)]


CLUSTER_NODES = """\
07c37dfeb235213a 10.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
e7d1eecce10fd6bb 10.0.0.2:7000@17000,redis2 master - 0 142623831 2 connected 5461-10921 10922 [10923->-292f8b365bb7edb5]
292f8b365bb7edb5 10.0.0.3:7000@17000 master - 0 1426238318 3 connected 10923-16383
6ec23923021cf3ff 10.0.0.2:7001@17001 slave 07c37dfeb235213a 0 1426238316 1 connected
824fe116063bc5fc 10.0.0.3:7001@17001 slave,fail e7d1eecce10fd6bb 0 1426238319 2 disconnected
short line
"""


def test_cluster_nodes_reads_addresses_flags_masters_and_slots():
    nodes = {node["address"]: node for node in _parse_nodes(CLUSTER_NODES)}
    assert len(nodes) == 5
    first = nodes["10.0.0.1:7000"]
    assert first["flags"] == {"myself", "master"} and first["master"] is None
    assert first["slots"] == [(0, 5460)] and first["slot_count"] == 5461
    migrating = nodes["10.0.0.2:7000"]
    assert migrating["slots"] == [(5461, 10921), (10922, 10922)], "a slot in migration is not counted as held"
    assert migrating["slot_count"] == 5462
    replica = nodes["10.0.0.3:7001"]
    assert replica["flags"] == {"slave", "fail"}
    assert replica["master"] == "e7d1eecce10fd6bb" and replica["slot_count"] == 0


@pytest.mark.parametrize(
    ("layout", "replicas"),
    [
        ({"redis1": 2, "redis2": 2, "redis3": 2}, 1),  # the lab: three hosts, two nodes each
        ({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1}, 1),
        ({"a": 3, "b": 3, "c": 3}, 2),
        ({"a": 4, "b": 2, "c": 2}, 1),
        ({"a": 2, "b": 2, "c": 2, "d": 2}, 1),
    ],
)
def test_no_replica_shares_a_failure_domain_with_its_master_or_a_sibling(layout, replicas):
    cluster = planner(layout, replicas)
    masters, assignment = placement(cluster)
    domain = {node["address"]: node["failure_domain"] for node in cluster.nodes}
    assert len(masters) == len(cluster.nodes) // (replicas + 1)
    assert len({master["failure_domain"] for master in masters}) == min(len(masters), len(layout))
    for master in masters:
        group = [master["address"]] + [replica for replica, of in assignment.items() if of == master["address"]]
        assert len(group) - 1 >= replicas, (master["address"], group)
        assert len({domain[address] for address in group}) == len(group), group
    assert set(assignment) | {master["address"] for master in masters} == set(domain)
    assert cluster.warnings == []


def test_an_impossible_anti_affinity_is_refused_naming_replicas():
    """Six nodes on two hosts cannot keep two replicas of each master apart from it and each other."""
    cluster = planner({"a": 3, "b": 3}, replicas=2)
    with pytest.raises(ClusterProblem, match=r"^cannot place 2 replica\(s\) .* \(option replicas\): 6 nodes on 2"):
        placement(cluster)


def test_one_host_holding_everything_is_refused():
    with pytest.raises(ClusterProblem, match=r"option replicas"):
        placement(planner({"only": 6}))


def test_a_node_left_over_without_a_safe_master_is_reported_not_placed_unsafely():
    """Seven nodes, replicas=1: three masters and their replicas, then one spare. The spare goes to a master whose
    group does not use its domain, or is reported in warnings; never next to its master."""
    cluster = planner({"a": 3, "b": 2, "c": 2})
    masters, assignment = placement(cluster)
    domain = {node["address"]: node["failure_domain"] for node in cluster.nodes}
    for replica, master in assignment.items():
        assert domain[replica] != domain[master]
    placed = len(masters) + len(assignment)
    assert placed == 7 or len(cluster.warnings) == 7 - placed


def masters_on(*layout):
    """_describe's shape from (master domain, [replica domains]) pairs, addresses made up per domain."""
    described = []
    for index, (domain, replica_domains) in enumerate(layout):
        described.append(
            {
                "address": f"{domain}:{7000 + index}",
                "failure_domain": domain,
                "replicas": [
                    {"address": f"{replica}:{8000 + index * 10 + offset}", "failure_domain": replica}
                    for offset, replica in enumerate(replica_domains)
                ],
            }
        )
    return described


def test_after_a_failover_drill_the_replica_on_the_empty_host_takes_the_extra_master_back():
    """node1's master failed over to its replica on node2; node2 now holds two masters, node1 none."""
    cluster = planner({"node1": 2, "node2": 2, "node3": 2})
    described = masters_on(("node2", ["node1"]), ("node2", ["node3"]), ("node3", ["node1"]))
    promotions, crowded = cluster._plan_master_spread(described)
    assert promotions == [("node1:8000", "node2:7000")]
    assert crowded == []


def test_spread_masters_are_left_alone():
    cluster = planner({"node1": 2, "node2": 2, "node3": 2})
    described = masters_on(("node1", ["node2"]), ("node2", ["node3"]), ("node3", ["node1"]))
    assert cluster._plan_master_spread(described) == ([], [])


def test_four_masters_on_three_domains_allow_two_per_domain_and_the_emptiest_domain_takes_over():
    cluster = planner({"a": 3, "b": 3, "c": 2})
    described = masters_on(("a", ["b"]), ("a", ["c"]), ("a", ["b"]), ("b", ["c"]))
    assert cluster._plan_master_spread(described) == ([("c:8010", "a:7001")], [])


def test_a_crowded_domain_without_a_way_out_is_named_and_nothing_is_moved():
    """Both masters on node1 have their replicas on node2, which already holds its share; node3 has none."""
    cluster = planner({"node1": 2, "node2": 2, "node3": 2})
    described = masters_on(("node1", ["node2"]), ("node1", ["node2"]), ("node2", ["node3"]))
    promotions, crowded = cluster._plan_master_spread(described)
    assert promotions == []
    assert crowded == ["node1"]


def test_draining_a_host_hands_each_of_its_masters_to_a_replica_elsewhere_spreading_the_load():
    """node1 runs two masters (after a drill); each goes to the replica whose host has fewer masters."""
    cluster = planner({"node1": 2, "node2": 2, "node3": 2})
    described = masters_on(("node1", ["node2"]), ("node1", ["node3"]), ("node2", ["node3"]))
    assert cluster._plan_drain(described, "node1") == ([("node2:8000", "node1:7000"), ("node3:8010", "node1:7001")], [])


def test_draining_a_host_without_masters_plans_nothing():
    cluster = planner({"node1": 2, "node2": 2, "node3": 2})
    described = masters_on(("node1", ["node2"]), ("node2", ["node3"]), ("node3", ["node1"]))
    assert cluster._plan_drain(described, "node4") == ([], [])


def test_a_master_whose_replicas_all_share_its_host_is_stranded_not_handed_over():
    cluster = planner({"node1": 3, "node2": 2, "node3": 1})
    described = masters_on(("node1", ["node1"]), ("node2", ["node3"]))
    assert cluster._plan_drain(described, "node1") == ([], ["node1:7000"])
