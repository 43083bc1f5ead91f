"""Docker Swarm over the lab's three hosts, as `make lab` formed it with site.yml (node3 manages, node1 and node2
work), and the course notes' hit counter on it as a stack and, on node3, as a Compose v2 project. Real engines
(Docker 20.10.5, 20.10.24 and 26.1.5), a real overlay network (VXLAN) between the lab hosts, images from harbor.lab
with its login. No IPVS in this kernel: the stack publishes through an edge task per node (host mode), which the
play says.

These tests stop a node's engine and take nodes out of the swarm, so make test runs this file last, alone."""

import json
import re
import time

import pytest
from lab_clients import ADDRESSES, HitCounterLoad, hit_counter

from conftest import changes, failures, lab_node, report, run

STACK = "hit-counter"
WEB = f"{STACK}_web"
REDIS = f"{STACK}_redis"
WORKERS = ("node1", "node2")
# Liveness bounds of the loops below, far above what the swarm takes; bench/swarm.py measures how fast it is.
RESCHEDULE_DEADLINE = 180
REJOIN_DEADLINE = 180


def swarm_play(*args, playbook="playbooks/docker_swarm.yml", timeout=900):
    return run(["ansible-playbook", "-i", "inventory/lab", *args, playbook], timeout=timeout)


def stack_play(*args, timeout=900):
    return swarm_play(*args, playbook="playbooks/hit_counter.yml", timeout=timeout)


def manager(*command, timeout=300):
    process = lab_node("node3", "docker", *command, timeout=timeout)
    assert process.returncode == 0, process.stdout + process.stderr
    return process.stdout


def swarm_nodes():
    """Each node as the manager sees it: role, availability, status and labels, by host name."""
    ids = manager("node", "ls", "--quiet").split()
    found = {}
    for node in json.loads(manager("node", "inspect", *ids)):
        found[node["Description"]["Hostname"]] = {
            "role": node["Spec"]["Role"],
            "availability": node["Spec"]["Availability"],
            "status": node["Status"]["State"],
            "labels": node["Spec"].get("Labels") or {},
        }
    return found


def running_tasks(service):
    """The node of each task of the service that runs (desired and current state running)."""
    lines = manager(
        "service", "ps", service, "--filter", "desired-state=running", "--format", "{{.Node}} {{.CurrentState}}"
    ).splitlines()
    return sorted(line.split()[0] for line in lines if line.split()[1:2] == ["Running"])


def wait_until(condition, deadline, what, pause=0.5):
    """Polls condition() until it is true, at most deadline seconds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > deadline:
            raise AssertionError(f"{what}: not within {deadline} s")
        time.sleep(pause)
    return time.monotonic() - started


def test_the_swarm_has_its_managers_workers_and_labels_and_a_second_run_changes_nothing(lab):
    nodes = swarm_nodes()
    assert {name: (node["role"], node["status"], node["availability"]) for name, node in nodes.items()} == {
        "node1": ("worker", "ready", "active"),
        "node2": ("worker", "ready", "active"),
        "node3": ("manager", "ready", "active"),
    }
    assert nodes["node3"]["labels"] == {"zone": "c", "hit_counter.redis": "true"}
    assert nodes["node1"]["labels"] == {"zone": "a"} and nodes["node2"]["labels"] == {"zone": "b"}

    again = swarm_play("-v")
    assert again.returncode == 0, failures(again)
    assert set(changes(again).values()) == {0}
    assert "WARNING: 1 manager (node3)" in again.stdout
    # The join tokens are the swarm's keys: not in the output of a run, not even with -v.
    for role in ("worker", "manager"):
        token = manager("swarm", "join-token", "--quiet", role).strip()
        assert token.startswith("SWMTKN-") and token not in again.stdout + again.stderr

    checked = swarm_play("--check", "--diff")
    assert checked.returncode == 0, failures(checked)
    assert set(changes(checked).values()) == {0}

    # The inventory is the labels' truth: a label set by hand is seen, reported in check mode, and removed.
    manager("node", "update", "--label-add", "stray=by-hand", "node1")
    checked = swarm_play("--check")
    assert checked.returncode == 0 and changes(checked) == {"node1": 1, "node2": 0, "node3": 0}, failures(checked)
    assert swarm_nodes()["node1"]["labels"] == {"zone": "a", "stray": "by-hand"}
    mended = swarm_play()
    assert mended.returncode == 0 and changes(mended) == {"node1": 1, "node2": 0, "node3": 0}, failures(mended)
    assert swarm_nodes()["node1"]["labels"] == {"zone": "a"}


@pytest.mark.parametrize(
    ("extra_vars", "named"),
    [
        ({"docker_swarm_managers": []}, "docker_swarm_managers: expected at least one host"),
        ({"docker_swarm_labels": "zone=a"}, "docker_swarm_labels of node1: expected a mapping"),
        ({"docker_swarm_labels": {"rack 1": "x"}}, "key 'rack 1' is not a label key"),
        (
            {"docker_swarm_workers": ["node1", "node2", "node3"]},
            "docker_swarm_workers: node3 also listed in docker_swarm_managers",
        ),
    ],
    ids=["no-manager", "label-as-a-string", "label-key-with-a-space", "worker-listed-as-manager"],
)
def test_bad_input_fails_before_any_node_changes_naming_the_variable(lab, extra_vars, named):
    before = swarm_nodes()
    refused = swarm_play("-e", json.dumps(extra_vars))
    assert refused.returncode != 0
    assert named in refused.stdout, failures(refused)
    assert "changed=0" in refused.stdout and not re.search(r"changed=[1-9]", refused.stdout)
    assert swarm_nodes() == before


def test_the_app_answers_from_every_node_and_the_count_survives_redis_being_rescheduled(lab):
    answers = [hit_counter(node) for node in ADDRESSES for _round in range(3)]
    counts = [count for _task, _version, count in answers]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
    # Three web replicas spread over the zones (a preference: the swarm places by it, it never moves a running
    # task for it), an edge task on every node.
    preferences = manager("service", "inspect", WEB, "--format", "{{json .Spec.TaskTemplate.Placement.Preferences}}")
    assert json.loads(preferences) == [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]
    assert len(running_tasks(WEB)) == 3 and len(set(running_tasks(WEB))) >= 2
    assert running_tasks(f"{STACK}_edge") == ["node1", "node2", "node3"]
    assert len({task for task, _version, _count in answers}) >= 2

    # Redis is held to node3, where its volume is: a killed Redis task is replaced there, on the same data.
    assert running_tasks(REDIS) == ["node3"]
    old_task = manager("service", "ps", REDIS, "--filter", "desired-state=running", "--quiet").split()
    container = lab_node(
        "node3", "docker", "ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={REDIS}"
    ).stdout.split()
    assert len(container) == 1
    lab_node("node3", "docker", "kill", container[0])
    took = wait_until(
        lambda: (
            running_tasks(REDIS) == ["node3"]
            and manager("service", "ps", REDIS, "--filter", "desired-state=running", "--quiet").split() != old_task
        ),
        RESCHEDULE_DEADLINE,
        "a new Redis task",
    )
    wait_until(lambda: _answers("node1"), 60, "the app answering again")
    _task, _version, count = hit_counter("node2")
    assert count > counts[-1], f"the count went back from {counts[-1]} to {count}: Redis lost its data"
    report(f"Redis task killed: replaced on node3 in {took:.1f} s; the count went on from {counts[-1]} to {count}")


def _answers(node):
    try:
        hit_counter(node, timeout=3)
    except Exception:
        return False
    return True


def test_a_lost_node_has_its_tasks_rescheduled_the_app_keeps_answering_and_the_node_rejoins(lab):
    # A worker that runs a web task (the manager stays: with one manager, its loss stops every rescheduling).
    lost = next(node for node in WORKERS if node in running_tasks(WEB))
    others = tuple(node for node in ADDRESSES if node != lost)
    load = HitCounterLoad(entries=others, pause=0.1)
    try:
        load.start()
        started = time.monotonic()
        stopped = lab_node(lost, "systemctl", "stop", "docker.socket", "docker.service")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        down = wait_until(lambda: swarm_nodes()[lost]["status"] == "down", RESCHEDULE_DEADLINE, f"{lost} down")
        moved = (
            wait_until(
                lambda: len(running_tasks(WEB)) == 3 and lost not in running_tasks(WEB),
                RESCHEDULE_DEADLINE,
                f"{lost}'s web task running elsewhere",
            )
            + down
        )
        time.sleep(3)
        load.stop()
        assert load.answers and not load.failed, load.failed[:5]
        report(
            f"{lost}'s dockerd stopped: marked down after {down:.1f} s, its web task running on another node after"
            f" {moved:.1f} s; {len(load.answers)} hits through {' and '.join(others)} meanwhile, none failed"
        )
    finally:
        load.stop()
        started = time.monotonic()
        assert lab_node(lost, "systemctl", "start", "docker.service").returncode == 0
    wait_until(lambda: swarm_nodes()[lost]["status"] == "ready", REJOIN_DEADLINE, f"{lost} ready again")
    wait_until(lambda: _answers(lost), REJOIN_DEADLINE, f"{lost}'s edge answering again")
    report(f"{lost}'s dockerd started again: ready and answering after {time.monotonic() - started:.1f} s")
    assert swarm_nodes()[lost]["role"] == "worker"


def test_a_bad_update_rolls_back_by_itself_and_the_old_version_keeps_serving(lab, tmp_path):
    current = manager("service", "inspect", WEB, "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}").strip()
    assert current.startswith("harbor.lab/mooring/hit-counter:2.2@sha256:")
    # The same app whose health check always fails: the update's new task never becomes healthy.
    (tmp_path / "Dockerfile").write_text(
        "FROM harbor.lab/mooring/hit-counter:2.2\n"
        "ENV HIT_COUNTER_VERSION=broken\n"
        "HEALTHCHECK --interval=2s --timeout=2s --retries=2 CMD exit 1\n"
    )
    assert run(["docker", "pull", "-q", "harbor.lab/mooring/hit-counter:2.2"]).returncode == 0
    built = run(["docker", "build", "-q", "-t", "harbor.lab/mooring/hit-counter:broken", str(tmp_path)])
    assert built.returncode == 0, built.stderr
    assert run(["docker", "push", "-q", "harbor.lab/mooring/hit-counter:broken"]).returncode == 0

    load = HitCounterLoad(entries=tuple(ADDRESSES), pause=0.1)
    bad = load.during(
        lambda: stack_play(
            "--limit",
            "docker_swarm_managers:docker_swarm_workers",
            "-e",
            "hit_counter_image=harbor.lab/mooring/hit-counter:broken",
        )
    )
    assert bad.returncode != 0
    assert "the update of hit-counter_web: rollback_completed" in bad.stdout, failures(bad)
    assert (
        manager("service", "inspect", WEB, "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}").strip() == current
    )
    versions = {version for _node, _task, version, _count in load.answers}
    assert versions == {"2.2.2"} and not load.failed, (versions, load.failed[:5])
    report(f"bad update rolled back by the swarm: {len(load.answers)} hits during the play, all answered by 2.2.2")

    back = stack_play()
    assert back.returncode == 0, failures(back)
    # The compose file is written back; the stack already runs that (the swarm rolled it back).
    assert changes(back) == {"node1": 0, "node2": 0, "node3": 1}
    assert (
        manager("service", "inspect", WEB, "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}").strip() == current
    )


def test_a_manager_removed_is_demoted_drained_and_leaves_then_rejoins_as_the_inventory_says(lab):
    promoted = swarm_play(
        "-e", json.dumps({"docker_swarm_managers": ["node3", "node2"], "docker_swarm_workers": ["node1"]})
    )
    assert promoted.returncode == 0, failures(promoted)
    assert "WARNING: 2 managers (node3, node2)" in promoted.stdout
    assert swarm_nodes()["node2"]["role"] == "manager"

    load = HitCounterLoad(entries=("node1", "node3"), pause=0.1)
    removed = load.during(lambda: swarm_play("-e", json.dumps({"docker_swarm_workers": ["node1"]})))
    assert removed.returncode == 0, failures(removed)
    order = [
        removed.stdout.index(f"TASK [mooring.ops.docker_swarm : {task}]")
        for task in ("Demote the leaving manager first", "Drain the leaving node", "Leave the swarm")
    ]
    assert order == sorted(order)
    assert "none left" not in removed.stdout and "left: node2" in removed.stdout
    assert "node2" not in swarm_nodes()
    assert lab_node("node2", "docker", "info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "inactive"
    assert "node2" not in running_tasks(WEB) and len(running_tasks(WEB)) == 3
    assert load.answers and not load.failed, load.failed[:5]

    rejoined = swarm_play()
    assert rejoined.returncode == 0, failures(rejoined)
    nodes = swarm_nodes()
    assert nodes["node2"]["role"] == "worker" and nodes["node2"]["labels"] == {"zone": "b"}
    wait_until(lambda: _answers("node2"), REJOIN_DEADLINE, "node2's edge answering again")


def test_the_same_app_runs_as_a_compose_v2_project_on_node3(lab):
    _task, version, first = hit_counter("node3", port=5001)
    _task, _version, second = hit_counter("node3", port=5001)
    assert version == "2.2.2" and second == first + 1
    projects = json.loads(lab_node("node3", "docker", "compose", "ls", "--format", "json").stdout)
    assert [project["Name"] for project in projects] == ["hit-counter-compose"]
    # Its own Redis: the stack's count is not this one's.
    _task, _version, stack_count = hit_counter("node3")
    _task, _version, compose_count = hit_counter("node3", port=5001)
    assert compose_count == second + 1 and stack_count != compose_count

    again = stack_play("--limit", "hit_counter_compose")
    assert again.returncode == 0, failures(again)
    assert set(changes(again).values()) == {0}
