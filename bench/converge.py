"""Converge benchmark for the docker_host role, on throwaway lab hosts (systemd containers).

Measures, in one run and on the same machine:
  cold-1  docker_host on 1 fresh host           cold-3  on 3 fresh hosts at once
  warm-1  again on that 1 host (nothing to do)  warm-3  again on the 3 hosts
and prints the ratios warm/cold and 3-hosts/1-host. Targets: warm/cold <= 0.15, 3/1 <= 1.3.
Needs the lab's registry and images (`make lab`, or at least playbooks/lab.yml); uses hosts bench1..3
from inventory/bench, created and removed here.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
INVENTORY = ["-i", "inventory/lab", "-i", "inventory/bench"]
HOSTS = ["bench1", "bench2", "bench3"]
PREFIX = "mooring-bench-"


def ansible_playbook(*args):
    started = time.monotonic()
    process = subprocess.run(
        ["ansible-playbook", *INVENTORY, *args], capture_output=True, text=True, cwd=REPO_DIR, check=False
    )
    elapsed = time.monotonic() - started
    if process.returncode != 0:
        sys.exit(f"ansible-playbook {' '.join(args)} failed:\n{process.stdout[-4000:]}{process.stderr[-2000:]}")
    changed = sum(int(n) for n in re.findall(r"changed=(\d+)", process.stdout))
    return elapsed, changed


def remove_hosts():
    names = [PREFIX + host for host in HOSTS]
    subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=False)
    subprocess.run(["docker", "volume", "rm", *[f"{name}-docker" for name in names]], capture_output=True, check=False)
    # The next round's hosts answer at the same addresses: no ssh master of the removed ones may serve them.
    for socket in (REPO_DIR / ".lab" / "ssh").glob("cm-*"):
        socket.unlink(missing_ok=True)


def fresh_hosts(hosts):
    remove_hosts()
    variables = {"lab_nodes_hosts": hosts, "lab_nodes_container_prefix": PREFIX}
    ansible_playbook("playbooks/lab.yml", "--tags", "nodes", "-e", json.dumps(variables))


def converge(hosts):
    return ansible_playbook("playbooks/docker_hosts.yml", "--limit", ",".join(hosts))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="cold/warm rounds per host count (median is used)")
    options = parser.parse_args()
    os.environ.setdefault("ANSIBLE_CONFIG", str(REPO_DIR / "ansible.cfg"))

    results = {"cold-1": [], "warm-1": [], "cold-3": [], "warm-3": []}
    try:
        for _round in range(options.rounds):
            for count in (1, 3):
                hosts = HOSTS[:count]
                fresh_hosts(hosts)
                cold, cold_changed = converge(hosts)
                warm, warm_changed = converge(hosts)
                if warm_changed:
                    sys.exit(f"the warm converge on {count} host(s) changed {warm_changed} things: not idempotent")
                results[f"cold-{count}"].append(cold)
                results[f"warm-{count}"].append(warm)
                print(f"round: {count} host(s) cold {cold:6.1f}s ({cold_changed} changes)  warm {warm:6.1f}s")
    finally:
        remove_hosts()

    median = {name: statistics.median(values) for name, values in results.items()}
    print()
    print(f"{'converge':<10}{'1 host':>10}{'3 hosts':>10}{'3/1':>8}")
    for kind in ("cold", "warm"):
        one, three = median[f"{kind}-1"], median[f"{kind}-3"]
        print(f"{kind:<10}{one:>9.1f}s{three:>9.1f}s{three / one:>8.2f}")
    print(f"{'warm/cold':<10}{median['warm-1'] / median['cold-1']:>10.2f}{median['warm-3'] / median['cold-3']:>10.2f}")
    print("targets: warm/cold <= 0.15, 3/1 <= 1.3")


if __name__ == "__main__":
    main()
