#!/usr/bin/python
# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redis_cluster
short_description: Form, grow and check a Redis Cluster whose replicas never share a host with their master
description:
  - Reads every node first (C(CLUSTER MYID), C(CLUSTER INFO), C(CLUSTER NODES)) and decides from what it sees.
  - When no node knows any other and none serves a slot, forms the cluster once - masters spread over the failure
    domains, the 16384 slots split evenly, and each master's replicas placed on failure domains other than its own
    and each other's (anti-affinity) - then waits until every node reports C(cluster_state:ok).
  - When the cluster exists and some listed nodes are still empty, adds them (scale-out) - as masters that then
    receive an even share of the slots, keys migrated slot by slot, or as replicas of the masters that lack them.
  - On every run, verifies C(cluster_state:ok), the 16384 slots covered and the anti-affinity; a replica on the
    same failure domain as its master is moved to another master (C(CLUSTER REPLICATE)).
  - On every run, also spreads the masters. A failover (a lost host, a drill) leaves a promoted replica where a
    master already runs, and then one host's loss takes the majority of masters with it although the slots are
    all served. When a failure domain holds more masters than its even share (masters divided by failure
    domains, rounded up), a replica of one of them on a domain below its share takes over with a coordinated
    C(CLUSTER FAILOVER) (no write is lost; the old master becomes its replica). Reported as a change, and shown
    in check mode.
  - A partly formed cluster (nodes that know others but do not form one cluster with all slots) is reported and
    left alone; it is never re-created over.
version_added: 0.1.0
author:
  - mooring developers (@mooring)
requirements:
  - Python 3.9 or later on the host that runs the module (EL9 and Debian 11 have it as C(/usr/bin/python3)).
  - C(redis) (redis-py 4 or later) on the host that runs the module.
options:
  nodes:
    description:
      - Every node of the cluster, as the other nodes reach it (its announced address).
    type: list
    elements: dict
    required: true
    suboptions:
      host:
        description: The address that the node announces (C(cluster-announce-ip)) and that this host reaches.
        type: str
        required: true
      port:
        description: The node's client port (C(cluster-announce-port)).
        type: int
        required: true
      bus_port:
        description: The node's cluster bus port (C(cluster-announce-bus-port)); O(nodes[].port) + 10000 by default.
        type: int
      failure_domain:
        description:
          - What fails together, normally the inventory host that runs the node. A replica is never placed on
            the failure domain of its master or of another replica of that master. Defaults to O(nodes[].host).
        type: str
  replicas:
    description: Replicas of each master. Nodes beyond C(masters * (replicas + 1)) become extra replicas.
    type: int
    default: 1
  password:
    description: The nodes' C(requirepass), also used for key migration.
    type: str
    required: true
  timeout:
    description: Seconds to wait for the nodes to agree (handshakes, C(cluster_state:ok), replica links).
    type: int
    default: 120
  drain:
    description:
      - A failure domain whose nodes are about to be restarted (a rolling upgrade of that host). Every master on
        it hands over to one of its replicas on another domain with a coordinated C(CLUSTER FAILOVER), the one
        on the domain with the fewest masters first, so that the restart costs no failover window. Nothing else
        is changed in that run (no scale-out, no spreading, which would move masters back).
      - Fails, before any handover, when a master on the domain has no replica elsewhere.
    type: str
attributes:
  check_mode:
    description: Reads the nodes and reports what it would do; sends no command that changes a node.
    support: full
  diff_mode:
    description: Shows the cluster's shape (masters, slot counts, replicas and their failure domains) before and after.
    support: full
  idempotent:
    description: On a healthy cluster of the listed nodes in the wanted shape, nothing is sent and changed is false.
    support: full
notes:
  - Nodes that the cluster knows but O(nodes) does not list are reported as warnings, never forgotten.
  - Requires Redis 7.0 or later (C(CLUSTER ADDSLOTSRANGE), C(CLUSTER MEET) with a bus port).
"""

EXAMPLES = r"""
- name: Form the cluster from the nodes of every host in the group redis_cluster
  mooring.ops.redis_cluster:
    nodes:
      - {host: 10.0.0.11, port: 8001, failure_domain: redis1}
      - {host: 10.0.0.11, port: 8002, failure_domain: redis1}
      - {host: 10.0.0.12, port: 8001, failure_domain: redis2}
      - {host: 10.0.0.12, port: 8002, failure_domain: redis2}
      - {host: 10.0.0.13, port: 8001, failure_domain: redis3}
      - {host: 10.0.0.13, port: 8002, failure_domain: redis3}
    replicas: 1
    password: "{{ vault_redis_password }}"
  run_once: true
"""

RETURN = r"""
actions:
  description: What the run did (or, in check mode, would do), in order.
  returned: always
  type: list
  elements: str
  sample: ["form a cluster of 6 nodes: 3 masters, 1 replica each", "10.0.0.12:8002 replicates 10.0.0.11:8001"]
masters:
  description: The cluster's masters after the run, each with its slot count and replicas.
  returned: always
  type: list
  elements: dict
  sample:
    - {"address": "10.0.0.11:8001", "id": "07c37dfe...", "failure_domain": "redis1", "slots": 5461,
       "replicas": [{"address": "10.0.0.12:8002", "failure_domain": "redis2"}]}
cluster_state:
  description: C(cluster_state) as the first listed node reports it after the run.
  returned: always
  type: str
  sample: ok
slots_covered:
  description: How many of the 16384 slots are served.
  returned: always
  type: int
  sample: 16384
"""

import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.mooring.ops.plugins.module_utils.python_floor import require_python

try:
    import redis
except ImportError:
    REDIS_IMPORT_ERROR = traceback.format_exc()
else:
    REDIS_IMPORT_ERROR = None

SLOTS = 16384
# Seconds a node in FAIL state may take to come back (a restarted node is reached again within a few) before the
# module stops and names it.
FAIL_GRACE = 30
MIGRATE_BATCH = 100


class ClusterProblem(Exception):
    """The cluster is in a state the module will not change by itself."""


def _parse_info(text):
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            fields[key] = value
    return fields


def _parse_nodes(text):
    """CLUSTER NODES, one dict a node: id, address (ip:port), flags, master id, slot ranges."""
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@")[0].split(",")[0]
        flags = set(parts[2].split(","))
        ranges = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being migrated right now
                continue
            first, _dash, last = item.partition("-")
            ranges.append((int(first), int(last or first)))
        nodes.append(
            {
                "id": parts[0],
                "address": address,
                "flags": flags,
                "master": parts[3] if parts[3] != "-" else None,
                "slots": ranges,
                "slot_count": sum(last - first + 1 for first, last in ranges),
            }
        )
    return nodes


def _slot_ranges(masters):
    """16384 slots split as redis-cli splits them: contiguous, the remainder spread."""
    per_master = SLOTS / masters
    ranges, first = [], 0
    for index in range(masters):
        last = SLOTS - 1 if index == masters - 1 else round(per_master * (index + 1)) - 1
        ranges.append((first, last))
        first = last + 1
    return ranges


class RedisCluster:
    def __init__(self, module):
        self.module = module
        params = module.params
        self.replicas = params["replicas"]
        self.password = params["password"]
        self.timeout = params["timeout"]
        self.drain = params.get("drain")
        self.nodes = []
        for item in params["nodes"]:
            address = "%s:%d" % (item["host"], item["port"])
            self.nodes.append(
                {
                    "host": item["host"],
                    "port": item["port"],
                    "bus_port": item["bus_port"] or item["port"] + 10000,
                    "address": address,
                    "failure_domain": item["failure_domain"] or item["host"],
                }
            )
        self.by_address = {node["address"]: node for node in self.nodes}
        self.actions = []
        self.warnings = []
        # Check mode: the shape that the planned handovers would leave, for the diff.
        self.planned = None
        self.planned_handover_count = 0
        self.connections = {}

    # -- talking to nodes ---------------------------------------------------------------------------------------
    def _conn(self, address):
        if address not in self.connections:
            node = self.by_address[address]
            self.connections[address] = redis.Redis(
                host=node["host"],
                port=node["port"],
                password=self.password,
                socket_timeout=10,
                socket_connect_timeout=5,
                decode_responses=True,
            )
        return self.connections[address]

    def _call(self, address, *args):
        try:
            return self._conn(address).execute_command(*args)
        except redis.AuthenticationError as exc:
            raise ClusterProblem("%s refused the password (option password): %s" % (address, exc)) from exc
        except redis.ConnectionError as exc:
            raise ClusterProblem("cannot reach the redis node %s: %s" % (address, exc)) from exc
        except redis.ResponseError as exc:
            raise ClusterProblem("%s answered %s to %s" % (address, exc, " ".join(map(str, args[:3])))) from exc

    def _survey(self):
        survey = {}
        for node in self.nodes:
            address = node["address"]
            info = _parse_info(self._call(address, "CLUSTER", "INFO"))
            view = _parse_nodes(self._call(address, "CLUSTER", "NODES"))
            myself = next((entry for entry in view if "myself" in entry["flags"]), None)
            if info.get("cluster_enabled") == "0" or myself is None:
                raise ClusterProblem("%s is not running with cluster-enabled yes" % address)
            survey[address] = {
                "id": myself["id"],
                "known": int(info.get("cluster_known_nodes", "1")),
                "state": info.get("cluster_state", "fail"),
                "slots_ok": int(info.get("cluster_slots_ok", "0")),
                "slots_assigned": int(info.get("cluster_slots_assigned", "0")),
                "view": view,
            }
        return survey

    def _empty(self, entry):
        return entry["known"] == 1 and entry["slots_assigned"] == 0

    def _wait(self, what, predicate):
        deadline = time.monotonic() + self.timeout
        while True:
            if predicate():
                return
            if time.monotonic() > deadline:
                raise ClusterProblem("gave up after %d s (option timeout) waiting until %s" % (self.timeout, what))
            time.sleep(0.5)

    def _failed_nodes(self):
        """The nodes that some node of ours flags as failed (FAIL: agreed by a majority of masters, not the
        transient fail?), each with who says so."""
        failed = {}
        for node in self.nodes:
            for entry in _parse_nodes(self._call(node["address"], "CLUSTER", "NODES")):
                if "fail" in entry["flags"]:
                    name = "%s (id %s)" % (entry["address"] or "no address", entry["id"])
                    failed.setdefault(name, set()).add(node["address"])
        return failed

    def _refuse_failed_nodes(self):
        """A node in FAIL state that does not come back within FAIL_GRACE seconds stops the module: a lost node
        (its host or data gone) needs a person; mooring never forgets or resets a node by itself. A node of ours
        that was only restarted clears its flag as soon as the others reach it again."""
        deadline = time.monotonic() + min(self.timeout, FAIL_GRACE)
        while True:
            failed = self._failed_nodes()
            if not failed:
                return
            if time.monotonic() > deadline:
                raise ClusterProblem(
                    "node(s) in fail state: %s. mooring does not forget or reset a node by itself. Recovery, by "
                    "hand: if the node's container or host is down, bring it back and run the play again (a master "
                    "that lost its slots to its replica rejoins as a replica); if the node is gone for good (its "
                    "data lost, or it was removed), run CLUSTER FORGET <id> on every remaining node within 60 s, "
                    "then run the play again, which adds a new node in its place as a replica"
                    % "; ".join(
                        "%s, flagged by %s" % (name, ", ".join(sorted(seen))) for name, seen in sorted(failed.items())
                    )
                )
            time.sleep(1)

    # -- placement ----------------------------------------------------------------------------------------------
    def _pick_spread(self, candidates, count, avoid_domains=()):
        """Take count nodes, each time from the failure domain with the most candidates left."""
        left = [node for node in candidates if node["failure_domain"] not in avoid_domains]
        picked = []
        while left and len(picked) < count:
            domains = {}
            for node in left:
                domains.setdefault(node["failure_domain"], []).append(node)
            used = {node["failure_domain"] for node in picked}
            domain = max(domains, key=lambda name: (name not in used, len(domains[name])))
            chosen = domains[domain][0]
            picked.append(chosen)
            left.remove(chosen)
        return picked

    def _assign_replicas(self, groups, candidates):
        """groups: master address -> member domains (master first). Returns replica address -> master address.

        Each master gets up to `replicas` replicas, each on a domain that its group does not use yet. Nodes of
        one domain are interchangeable, so a small backtracking search over domains finds a placement whenever
        one exists (greedy choices can paint themselves into a corner: three hosts, two nodes each).
        """
        wanted = []
        for _round in range(self.replicas):
            wanted.extend(master for master in sorted(groups) if len(groups[master]) - 1 <= _round)
        pool = {}
        for node in candidates:
            pool.setdefault(node["failure_domain"], []).append(node)
        budget = [200000]

        def search(index):
            if index == len(wanted):
                return []
            budget[0] -= 1
            if budget[0] < 0:
                return None
            master = wanted[index]
            for domain in sorted(pool, key=lambda name: -len(pool[name])):
                if not pool[domain] or domain in groups[master]:
                    continue
                node = pool[domain].pop(0)
                groups[master].append(domain)
                rest = search(index + 1)
                if rest is not None:
                    return [(node, master), *rest]
                groups[master].pop()
                pool[domain].insert(0, node)
            return None

        placed = search(0)
        if placed is None:
            raise ClusterProblem(
                "cannot place %d replica(s) of each master on failure domains other than the master's and each "
                "other's (option replicas): %d nodes on %d domains"
                % (self.replicas, len(candidates) + len(groups), len({n["failure_domain"] for n in self.nodes}))
            )
        assignment = {node["address"]: master for node, master in placed}
        left = [node for nodes in pool.values() for node in nodes]
        for node in left:
            master = min(
                (name for name in groups if node["failure_domain"] not in groups[name]),
                key=lambda name: len(groups[name]),
                default=None,
            )
            if master is None:
                self.warnings.append(
                    "%s is left without a master: every master or its replicas already use its failure domain"
                    % node["address"]
                )
                continue
            assignment[node["address"]] = master
            groups[master].append(node["failure_domain"])
        return assignment

    # -- the cluster as it is -----------------------------------------------------------------------------------
    def _shape(self, view):
        """Masters (with slots) and their live replicas, from one node's CLUSTER NODES."""
        by_id = {entry["id"]: entry for entry in view}
        masters = []
        for entry in view:
            if "master" in entry["flags"] and entry["slot_count"] > 0:
                replicas = [
                    other
                    for other in view
                    if other["master"] == entry["id"] and "fail" not in other["flags"] and "slave" in other["flags"]
                ]
                masters.append({"entry": entry, "replicas": replicas})
        masters.sort(key=lambda item: item["entry"]["address"])
        return masters, by_id

    def _domain(self, address):
        node = self.by_address.get(address)
        return node["failure_domain"] if node else address.rsplit(":", 1)[0]

    def _describe(self, view):
        masters = self._shape(view)[0]
        return [
            {
                "address": item["entry"]["address"],
                "id": item["entry"]["id"],
                "failure_domain": self._domain(item["entry"]["address"]),
                "slots": item["entry"]["slot_count"],
                "replicas": [
                    {"address": replica["address"], "failure_domain": self._domain(replica["address"])}
                    for replica in sorted(item["replicas"], key=lambda entry: entry["address"])
                ],
            }
            for item in masters
        ]

    @staticmethod
    def _diff_text(described):
        lines = []
        for master in described:
            lines.append("master %s (%s) slots=%d" % (master["address"], master["failure_domain"], master["slots"]))
            lines.extend(
                "  replica %s (%s)" % (replica["address"], replica["failure_domain"]) for replica in master["replicas"]
            )
        return "\n".join(lines) + ("\n" if lines else "")

    # -- changes ------------------------------------------------------------------------------------------------
    def _create(self):
        masters_count = len(self.nodes) // (self.replicas + 1)
        masters = self._pick_spread(self.nodes, masters_count)
        others = [node for node in self.nodes if node not in masters]
        groups = {master["address"]: [master["failure_domain"]] for master in masters}
        assignment = self._assign_replicas(groups, others)
        self.actions.append(
            "form a cluster of %d nodes: %d masters, %d replica(s) each"
            % (len(self.nodes), masters_count, self.replicas)
        )
        ranges = _slot_ranges(masters_count)
        for index, master in enumerate(masters):
            self.actions.append("%s serves slots %d-%d" % (master["address"], ranges[index][0], ranges[index][1]))
        for replica, master in sorted(assignment.items()):
            self.actions.append("%s replicates %s" % (replica, master))
        if self.module.check_mode:
            return
        for index, master in enumerate(masters):
            self._call(master["address"], "CLUSTER", "ADDSLOTSRANGE", ranges[index][0], ranges[index][1])
        for epoch, node in enumerate(self.nodes, start=1):
            self._call(node["address"], "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        self._meet(self.nodes[0]["address"], self.nodes[1:])
        self._replicate(assignment)

    def _meet(self, via, newcomers):
        for node in newcomers:
            self._call(via, "CLUSTER", "MEET", node["host"], node["port"], node["bus_port"])
        expected = {node["address"] for node in self.nodes}

        def everyone_knows_everyone():
            for node in self.nodes:
                view = _parse_nodes(self._call(node["address"], "CLUSTER", "NODES"))
                known = {entry["address"] for entry in view if not entry["flags"] & {"handshake", "noaddr"}}
                if not expected <= known:
                    return False
            return True

        self._wait("every node knows every other node", everyone_knows_everyone)

    def _ids(self):
        return {node["address"]: self._call(node["address"], "CLUSTER", "MYID") for node in self.nodes}

    def _replicate(self, assignment):
        if not assignment:
            return
        ids = self._ids()
        for replica, master in sorted(assignment.items()):
            self._call(replica, "CLUSTER", "REPLICATE", ids[master])

    def _grow(self, reference, newcomers):
        """Scale-out: meet the empty nodes, make masters or replicas of them, move slots to new masters."""
        masters = self._shape(reference["view"])[0]
        wanted_masters = max(len(self.nodes) // (self.replicas + 1), len(masters))
        new_masters = self._pick_spread(newcomers, wanted_masters - len(masters))
        new_replicas = [node for node in newcomers if node not in new_masters]
        groups = {}
        for item in masters:
            groups[item["entry"]["address"]] = [self._domain(item["entry"]["address"])] + [
                self._domain(replica["address"]) for replica in item["replicas"]
            ]
        for node in new_masters:
            groups[node["address"]] = [node["failure_domain"]]
        assignment = self._assign_replicas(groups, new_replicas)
        self.actions.append("add %s" % ", ".join(node["address"] for node in newcomers))
        for node in new_masters:
            self.actions.append("%s becomes a master and receives its share of the slots" % node["address"])
        for replica, master in sorted(assignment.items()):
            self.actions.append("%s replicates %s" % (replica, master))
        if self.module.check_mode:
            return
        via = masters[0]["entry"]["address"]
        self._meet(via, newcomers)
        # A newcomer refuses migrated keys (CLUSTERDOWN) until it has learnt who serves every slot.
        self._wait("the new nodes see every slot served", self._slots_known)
        self._replicate(assignment)
        if new_masters:
            self._rebalance(via, [node["address"] for node in new_masters])

    def _rebalance(self, via, new_masters):
        """Give each new (empty) master its share, taken from the masters that hold the most slots."""
        view = _parse_nodes(self._call(via, "CLUSTER", "NODES"))
        holders = {
            entry["address"]: {"id": entry["id"], "slots": [s for a, b in entry["slots"] for s in range(a, b + 1)]}
            for entry in view
            if "master" in entry["flags"] and entry["slot_count"] > 0
        }
        ids = {entry["address"]: entry["id"] for entry in view}
        target = SLOTS // (len(holders) + len(new_masters))
        for receiver in new_masters:
            for _slot in range(target):
                donor = max(holders, key=lambda name: len(holders[name]["slots"]))
                slot = holders[donor]["slots"].pop()
                self._move_slot(slot, donor, holders[donor]["id"], receiver, ids[receiver])
        self.actions.append("moved %d slots to each new master" % target)

    def _move_slot(self, slot, source, source_id, target, target_id):
        target_node = self.by_address[target]
        self._call(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        self._call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            keys = self._call(source, "CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH)
            if not keys:
                break
            self._call(
                source,
                "MIGRATE",
                target_node["host"],
                target_node["port"],
                "",
                0,
                60000,
                "AUTH",
                self.password,
                "KEYS",
                *keys,
            )
        for address in (target, source):
            self._call(address, "CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def _fix_affinity(self, view):
        """Move each replica sharing a failure domain with its master (or a sibling) to a master that can take it."""
        masters, by_id = self._shape(view)
        groups = {
            item["entry"]["address"]: [self._domain(item["entry"]["address"])]
            + [self._domain(replica["address"]) for replica in item["replicas"]]
            for item in masters
        }
        moves = {}
        for item in masters:
            master = item["entry"]["address"]
            seen = [self._domain(master)]
            for replica in sorted(item["replicas"], key=lambda entry: entry["address"]):
                domain = self._domain(replica["address"])
                if domain not in seen:
                    seen.append(domain)
                    continue
                target = min(
                    (name for name in groups if name != master and domain not in groups[name]),
                    key=lambda name: len(groups[name]),
                    default=None,
                )
                if target is None:
                    raise ClusterProblem(
                        "replica %s shares the failure domain %s with its master %s or a sibling, and no other "
                        "master can take it" % (replica["address"], domain, master)
                    )
                groups[master].remove(domain)
                groups[target].append(domain)
                moves[replica["address"]] = target
                self.actions.append(
                    "%s shared %s with %s: it now replicates %s" % (replica["address"], domain, master, target)
                )
        if moves and not self.module.check_mode:
            ids = {entry["address"]: entry["id"] for entry in by_id.values()}
            for replica, target in sorted(moves.items()):
                self._call(replica, "CLUSTER", "REPLICATE", ids[target])
        return bool(moves)

    def _plan_master_spread(self, described):
        """Which replica takes over from which master so that no failure domain holds more than its even share.

        described: masters as _describe gives them. Returns ([(replica address, master address)], the domains
        still above their share): each pair is one coordinated failover; a crowded domain whose masters have no
        replica on a domain below its share stays crowded.
        """
        domains = {node["failure_domain"] for node in self.nodes} | {m["failure_domain"] for m in described}
        share = -(-len(described) // max(len(domains), 1))
        masters_on = dict.fromkeys(domains, 0)
        for master in described:
            masters_on[master["failure_domain"]] += 1
        domain_of = {item["address"]: item["failure_domain"] for m in described for item in [m, *m["replicas"]]}
        promotions, moved = [], set()
        while True:
            # Every handover that would help, to the domain with the fewest masters first.
            candidates = [
                (masters_on[replica["failure_domain"]], replica["address"], master["address"])
                for master in described
                if masters_on[master["failure_domain"]] > share and master["address"] not in moved
                for replica in master["replicas"]
                if masters_on[replica["failure_domain"]] < share
            ]
            if not candidates:
                break
            _count, replica, master = min(candidates)
            masters_on[domain_of[master]] -= 1
            masters_on[domain_of[replica]] += 1
            moved.add(master)
            promotions.append((replica, master))
        return promotions, sorted(domain for domain, count in masters_on.items() if count > share)

    @staticmethod
    def _handed_over(described, replica, master):
        """described as it will be once replica has taken over from master (for check mode's diff)."""
        after = []
        for item in described:
            if item["address"] != master:
                after.append(item)
                continue
            new = next(entry for entry in item["replicas"] if entry["address"] == replica)
            others = [entry for entry in item["replicas"] if entry["address"] != replica]
            old = {"address": item["address"], "failure_domain": item["failure_domain"]}
            after.append(
                dict(item, address=new["address"], failure_domain=new["failure_domain"],
                     replicas=sorted([*others, old], key=lambda entry: entry["address"]))
            )  # fmt: skip
        return sorted(after, key=lambda item: item["address"])

    def _plan_drain(self, described, domain):
        """Which replica takes over from each master on `domain`: [(replica, master)], and the masters that have
        no replica on another domain."""
        masters_on = {}
        for master in described:
            masters_on[master["failure_domain"]] = masters_on.get(master["failure_domain"], 0) + 1
        promotions, stranded = [], []
        for master in sorted(described, key=lambda item: item["address"]):
            if master["failure_domain"] != domain:
                continue
            elsewhere = [replica for replica in master["replicas"] if replica["failure_domain"] != domain]
            if not elsewhere:
                stranded.append(master["address"])
                continue
            chosen = min(elsewhere, key=lambda item: (masters_on.get(item["failure_domain"], 0), item["address"]))
            masters_on[chosen["failure_domain"]] = masters_on.get(chosen["failure_domain"], 0) + 1
            promotions.append((chosen["address"], master["address"]))
        return promotions, stranded

    def _hand_over(self, described, promotions, why):
        """Each (replica, master): a coordinated CLUSTER FAILOVER on the replica, waited for until the roles swap;
        in check mode only planned (and shown in the diff)."""
        for replica, master in promotions:
            self.actions.append(
                "%s: %s (on %s) took over from %s with CLUSTER FAILOVER"
                % (why(master), replica, self._domain(replica), master)
            )
            if self.module.check_mode:
                self.planned = self._handed_over(self.planned or described, replica, master)
                self.planned_handover_count += 1
                continue
            self._call(replica, "CLUSTER", "FAILOVER")

            def handed_over(replica=replica, master=master):
                roles = {entry["address"]: entry for entry in _parse_nodes(self._call(replica, "CLUSTER", "NODES"))}
                return (
                    "master" in roles[replica]["flags"]
                    and roles[replica]["slot_count"] > 0
                    and "slave" in roles[master]["flags"]
                )

            self._wait("%s has taken over from %s" % (replica, master), handed_over)
        return bool(promotions)

    def _spread_masters(self, view):
        """Hand masters over from crowded failure domains, one at a time."""
        described = self._describe(view)
        promotions, crowded = self._plan_master_spread(described)
        if crowded:
            self.warnings.append(
                "failure domain(s) %s hold more masters than their share and none of those masters has a replica "
                "on a domain with fewer: losing one of them takes several masters" % ", ".join(crowded)
            )
        return self._hand_over(
            described, promotions, lambda master: "%s held more masters than its share" % self._domain(master)
        )

    def _drain(self, view):
        """Hand every master on the drained failure domain to a replica elsewhere, before its nodes restart."""
        described = self._describe(view)
        promotions, stranded = self._plan_drain(described, self.drain)
        if stranded:
            raise ClusterProblem(
                "cannot drain %s (option drain): master(s) %s have no replica on another failure domain, so a "
                "restart of %s takes their slots away until it is back; add replicas first"
                % (self.drain, ", ".join(stranded), self.drain)
            )
        return self._hand_over(described, promotions, lambda master: "%s is drained for a restart" % self.drain)

    def _slots_known(self):
        for node in self.nodes:
            info = _parse_info(self._call(node["address"], "CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", "0")) != SLOTS:
                return False
        return True

    def _healthy(self):
        """State ok and every slot served on every node, each replica linked to its master, and every node sees the
        same roles: right after a CLUSTER FAILOVER the other nodes learn the demoted master's new role by gossip,
        and a shape read from a node that has not yet would miss a replica."""
        roles_seen = set()
        for node in self.nodes:
            info = _parse_info(self._call(node["address"], "CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", "0")) != SLOTS:
                return False
            view = _parse_nodes(self._call(node["address"], "CLUSTER", "NODES"))
            roles_seen.add(tuple(sorted((entry["id"], entry["master"], "master" in entry["flags"]) for entry in view)))
            if len(roles_seen) > 1:
                return False
            me = next(entry for entry in view if "myself" in entry["flags"])
            if "slave" in me["flags"]:
                replication = self._call(node["address"], "INFO", "replication")
                if isinstance(replication, str):
                    replication = _parse_info(replication)
                if replication.get("master_link_status") != "up":
                    return False
        return True

    # -- deciding -----------------------------------------------------------------------------------------------
    def run(self):
        survey = self._survey()
        formed = [address for address, entry in survey.items() if not self._empty(entry)]
        before = ""
        if not formed and self.drain is not None:
            self.warnings.append("no cluster is formed yet: nothing to drain from %s" % self.drain)
            return self._finish("", survey)
        if not formed:
            self._create()
        else:
            self._refuse_failed_nodes()
            reference = survey[formed[0]]
            member_ids = {entry["id"] for entry in reference["view"]}
            strangers = [address for address in formed if survey[address]["id"] not in member_ids]
            newcomers = [node for node in self.nodes if node["address"] not in formed]
            if strangers or reference["slots_ok"] != SLOTS:
                raise ClusterProblem(
                    "partly formed cluster, left as it is: %s; %d of %d slots served%s. Repair it by hand "
                    "(redis-cli --cluster check/fix) or reset the nodes; the module only forms a cluster when no "
                    "node knows another"
                    % (
                        ", ".join("%s knows %d nodes" % (a, survey[a]["known"]) for a in sorted(survey)),
                        reference["slots_ok"],
                        SLOTS,
                        "; not in the same cluster as %s: %s" % (formed[0], ", ".join(strangers)) if strangers else "",
                    )
                )
            unlisted = sorted(
                entry["address"] for entry in reference["view"] if entry["address"] not in self.by_address
            )
            if unlisted:
                self.warnings.append("the cluster knows nodes that are not listed in nodes: %s" % ", ".join(unlisted))
            before = self._diff_text(self._describe(reference["view"]))
            if self.drain is not None:
                self._drain(reference["view"])
                return self._finish(before)
            if newcomers:
                self._grow(reference, newcomers)
            if not self.module.check_mode:
                if newcomers:
                    self._wait("the new nodes have joined", self._healthy)
                view = _parse_nodes(self._call(formed[0], "CLUSTER", "NODES"))
            else:
                view = reference["view"]
            if self._fix_affinity(view) and not self.module.check_mode:
                self._wait("the moved replicas are linked", self._healthy)
                view = _parse_nodes(self._call(formed[0], "CLUSTER", "NODES"))
            self._spread_masters(view)
        return self._finish(before, survey)

    def _finish(self, before, survey=None):
        changed = bool(self.actions)
        if self.module.check_mode:
            return self._result(changed, before, survey or self._survey())
        self._wait(
            "cluster_state is ok on every node, all slots served, replicas linked, one view of the roles", self._healthy
        )
        return self._result(changed, before, self._survey())

    def _result(self, changed, before, survey):
        first = survey[self.nodes[0]["address"]]
        described = self._describe(first["view"])
        short = [item for item in described if len(item["replicas"]) < self.replicas]
        if short and not self.module.check_mode:
            self.warnings.append(
                "masters with fewer than %d replica(s): %s" % (self.replicas, ", ".join(m["address"] for m in short))
            )
        if not (self.module.check_mode and changed):
            after = self._diff_text(described)
        elif self.planned is not None and len(self.actions) == self.planned_handover_count:
            after = self._diff_text(self.planned)
        else:
            after = "\n".join(self.actions)
        return {
            "changed": changed,
            "actions": self.actions,
            "masters": described,
            "cluster_state": first["state"],
            "slots_covered": first["slots_ok"],
            "diff": {"before": before, "after": after + ("\n" if after and not after.endswith("\n") else "")},
        }


def main():
    module = AnsibleModule(
        argument_spec={
            "nodes": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "host": {"type": "str", "required": True},
                    "port": {"type": "int", "required": True},
                    "bus_port": {"type": "int"},
                    "failure_domain": {"type": "str"},
                },
            },
            "replicas": {"type": "int", "default": 1},
            "password": {"type": "str", "required": True, "no_log": True},
            "timeout": {"type": "int", "default": 120},
            "drain": {"type": "str"},
        },
        supports_check_mode=True,
    )
    require_python(module, "mooring.ops.redis_cluster")
    if REDIS_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("redis"), exception=REDIS_IMPORT_ERROR)
    params = module.params
    addresses = ["%s:%s" % (node["host"], node["port"]) for node in params["nodes"]]
    duplicates = sorted({address for address in addresses if addresses.count(address) > 1})
    if duplicates:
        module.fail_json(msg="nodes lists %s more than once" % ", ".join(duplicates))
    for index, node in enumerate(params["nodes"]):
        bus_port = node["bus_port"] or node["port"] + 10000
        if not 0 < node["port"] < 65536 or not 0 < bus_port < 65536:
            module.fail_json(
                msg="nodes[%d] (%s): port %d and cluster bus port %d (bus_port, default port + 10000) must be "
                "within 1-65535" % (index, node["host"], node["port"], bus_port)
            )
    if params["timeout"] < 1:
        module.fail_json(msg="timeout must be 1 second or more, got %d" % params["timeout"])
    if params["replicas"] < 0:
        module.fail_json(msg="replicas must be 0 or more, got %d" % params["replicas"])
    masters = len(addresses) // (params["replicas"] + 1)
    if masters < 3:
        module.fail_json(
            msg="a Redis Cluster needs at least 3 masters: %d nodes (option nodes) with %d replica(s) each "
            "(option replicas) make %d" % (len(addresses), params["replicas"], masters)
        )
    if not params["password"]:
        module.fail_json(msg="password must not be empty")
    cluster = RedisCluster(module)
    try:
        result = cluster.run()
    except ClusterProblem as exc:
        module.fail_json(msg=str(exc), actions=cluster.actions)
    for warning in cluster.warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
