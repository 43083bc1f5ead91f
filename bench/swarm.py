"""Swarm benchmark on the lab: how long a node's loss leaves its tasks without a place.

Measures, in one run, on the hit counter stack that site.yml deploys over the lab's swarm (node3 manages,
node1 and node2 work), for each of --runs cycles (alternating the workers):
  task    baseline, side by side: one web task's container killed on a live worker; seconds until a new web task
          runs (the swarm's own restart, no failure detection)
  down    the worker's dockerd stopped (systemctl stop): seconds until the manager marks the node down
  moved   seconds from the stop until the web task it ran runs on another node (moved/task is the ratio printed)
  rejoin  seconds from dockerd's start until the node is ready and its edge answers again
  hits    requests to the other nodes' edges during the loss, and how many failed
After each cycle the web service is spread again (`docker service update --force`, a start-first roll).
Needs the lab (`make lab`); leaves the stack as it found it.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from lab_clients import ADDRESSES, HitCounterLoad, hit_counter

WEB = "hit-counter_web"
WORKERS = ("node1", "node2")
DEADLINE = 180


def on(node, *command, check=True):
    process = subprocess.run(
        ["docker", "exec", f"mooring-lab-{node}", *command], capture_output=True, text=True, check=False
    )
    if check and process.returncode != 0:
        raise RuntimeError(f"{node}: {' '.join(command)}: {process.stderr.strip()}")
    return process.stdout


def running_web():
    lines = on(
        "node3",
        "docker",
        "service",
        "ps",
        WEB,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.ID}} {{.Node}} {{.CurrentState}}",
    ).splitlines()
    return [line.split()[:2] for line in lines if line.split()[2:3] == ["Running"]]


def node_state(node):
    return json.loads(on("node3", "docker", "node", "inspect", node))[0]["Status"]["State"]


def until(condition, what):
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > DEADLINE:
            raise RuntimeError(f"{what}: not within {DEADLINE} s")
        time.sleep(0.2)
    return time.monotonic() - started


def answers(node):
    try:
        hit_counter(node, timeout=3)
    except Exception:
        return False
    return True


def spread_again():
    """Three fresh web tasks, one per zone: the swarm does not move running tasks back onto a node that returned,
    and a forced start-first update places each new task while the old one still counts on its node."""
    on("node3", "docker", "service", "scale", "--detach", f"{WEB}=0")
    until(lambda: not running_web(), "the web tasks stopped")
    on("node3", "docker", "service", "scale", "--detach", f"{WEB}=3")
    until(lambda: {node for _task, node in running_web()} == set(ADDRESSES), "the web tasks spread again")


def cycle(lost):
    spread_again()
    # Baseline: a task's container killed on a live node.
    before = {task for task, _node in running_web()}
    container = on(lost, "docker", "ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={WEB}").split()
    on(lost, "docker", "kill", container[0])
    task = until(lambda: len(running_web()) == 3 and {t for t, _n in running_web()} != before, "a killed task replaced")
    spread_again()

    others = tuple(node for node in ADDRESSES if node != lost)
    load = HitCounterLoad(entries=others, pause=0.1)
    load.start()
    started = time.monotonic()
    try:
        on(lost, "systemctl", "stop", "docker.socket", "docker.service")
        down = until(lambda: node_state(lost) == "down", f"{lost} down")
        until(lambda: len(running_web()) == 3 and lost not in {n for _t, n in running_web()}, "the task moved")
        moved = time.monotonic() - started
    finally:
        load.stop()
        restarted = time.monotonic()
        on(lost, "systemctl", "start", "docker.service")
    until(lambda: node_state(lost) == "ready" and answers(lost), f"{lost} back")
    rejoin = time.monotonic() - restarted
    return {
        "node": lost,
        "task": task,
        "down": down,
        "moved": moved,
        "rejoin": rejoin,
        "hits": len(load.answers),
        "failed": len(load.failed),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    runs = [cycle(WORKERS[index % 2]) for index in range(parser.parse_args().runs)]
    spread_again()
    header = ("node", "task s", "down s", "moved s", "moved/task", "rejoin s", "hits", "failed")
    print("{:6} {:>7} {:>7} {:>8} {:>10} {:>9} {:>6} {:>6}".format(*header))
    for run in runs:
        print(
            f"{run['node']:6} {run['task']:7.1f} {run['down']:7.1f} {run['moved']:8.1f} "
            f"{run['moved'] / run['task']:9.1f}x {run['rejoin']:9.1f} {run['hits']:6d} {run['failed']:6d}"
        )
    task, moved = (statistics.median(run[key] for run in runs) for key in ("task", "moved"))
    print(
        f"median: a killed task replaced in {task:.1f} s; a lost node's task running elsewhere in {moved:.1f} s"
        f" ({moved / task:.1f}x); {sum(run['failed'] for run in runs)} of {sum(run['hits'] for run in runs)}"
        " hits failed"
    )


if __name__ == "__main__":
    main()
