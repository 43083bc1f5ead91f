"""Middleware benchmark on the lab: the tomcat, nginx and mysql_replication plays, and replication lag.

Measures, in one run and on the same machine:
  cold    each play on lab nodes whose service containers and data were removed first
  warm    the same play again (nothing to do; it must report changed=0)
  lag     a bounded insert load on the MariaDB primary (batches of rows at a fixed pace), the rows per second
          the primary took, and the seconds after the last insert until the replica's CHECKSUM TABLE equals
          the primary's
and prints warm/cold per play. Needs the lab (`make lab`); leaves the services deployed as site.yml does.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
PLAYS = {
    "tomcat": {"hosts": ["node2", "node3"], "containers": ["tomcat"], "dirs": ["/srv/mooring/tomcat"]},
    "nginx": {"hosts": ["node1", "node2"], "containers": ["nginx"], "dirs": ["/srv/mooring/nginx"]},
    "mysql_replication": {"hosts": ["node1", "node2"], "containers": ["mysql"], "dirs": ["/srv/mooring/mysql"]},
}
PRIMARY, REPLICA = "node1", "node2"
LOCAL_CNF = "/etc/mysql/mooring-client/local.cnf"


def sh(*command, check=True):
    process = subprocess.run(command, capture_output=True, text=True, cwd=REPO_DIR, check=False)
    if check and process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{process.stdout[-3000:]}{process.stderr[-2000:]}")
    return process


def on_node(node, *command, check=True):
    return sh("docker", "exec", f"mooring-lab-{node}", *command, check=check)


def play(name):
    started = time.monotonic()
    process = sh("ansible-playbook", "-i", "inventory/lab", f"playbooks/{name}.yml")
    elapsed = time.monotonic() - started
    changed = sum(int(n) for n in re.findall(r"changed=(\d+)", process.stdout[process.stdout.rfind("PLAY RECAP") :]))
    return elapsed, changed


def remove_service(name):
    for node in PLAYS[name]["hosts"]:
        for container in PLAYS[name]["containers"]:
            on_node(node, "docker", "rm", "-f", container, check=False)
        on_node(node, "rm", "-rf", *PLAYS[name]["dirs"])


def sql(node, statement):
    command = ["docker", "exec", "mysql", "mariadb", f"--defaults-extra-file={LOCAL_CNF}", "-N", "-B", "-e"]
    return on_node(node, *command, statement).stdout.strip()


def replication_lag(batches, rows, pace):
    table = f"app.bench_{uuid.uuid4().hex[:8]}"
    sql(PRIMARY, f"CREATE TABLE {table} (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(64))")
    try:
        started = time.monotonic()
        for _batch in range(batches):
            sql(PRIMARY, f"INSERT INTO {table} (v) SELECT CONCAT('row-', seq) FROM app.seq_1_to_{rows}")
            time.sleep(pace)
        loaded = time.monotonic()
        primary = sql(PRIMARY, f"CHECKSUM TABLE {table}").split()[-1]
        while True:
            answer = on_node(REPLICA, "docker", "exec", "mysql", "mariadb", f"--defaults-extra-file={LOCAL_CNF}",
                             "-N", "-B", "-e", f"CHECKSUM TABLE {table}", check=False)  # fmt: skip
            if answer.returncode == 0 and answer.stdout.split() and answer.stdout.split()[-1] == primary:
                break
            if time.monotonic() - loaded > 300:
                sys.exit("the replica did not catch up within 300 s")
            time.sleep(0.05)
        caught_up = time.monotonic()
    finally:
        sql(PRIMARY, f"DROP TABLE IF EXISTS {table}")
    return batches * rows / (loaded - started), caught_up - loaded


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="cold/warm rounds per play (the median is used)")
    parser.add_argument("--batches", type=int, default=50, help="insert batches for the lag measurement")
    parser.add_argument("--rows", type=int, default=1000, help="rows per batch")
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between batches")
    options = parser.parse_args()
    os.environ.setdefault("ANSIBLE_CONFIG", str(REPO_DIR / "ansible.cfg"))

    results = {name: {"cold": [], "warm": []} for name in PLAYS}
    for number in range(1, options.rounds + 1):
        for name in PLAYS:
            remove_service(name)
            cold, _changes = play(name)
            warm, warm_changed = play(name)
            if warm_changed:
                sys.exit(f"the warm {name} play changed {warm_changed} things: not idempotent")
            results[name]["cold"].append(cold)
            results[name]["warm"].append(warm)
            print(f"round {number}: {name:<18} cold {cold:6.1f}s  warm {warm:6.1f}s")
    rate, lag = replication_lag(options.batches, options.rows, options.pace)

    print()
    print(f"{'play':<20}{'cold s':>9}{'warm s':>9}{'warm/cold':>11}")
    for name, timings in results.items():
        cold, warm = statistics.median(timings["cold"]), statistics.median(timings["warm"])
        print(f"{name:<20}{cold:>9.1f}{warm:>9.1f}{warm / cold:>11.2f}")
    print()
    print(
        f"replication: {options.batches} batches of {options.rows} rows every {options.pace}s; the primary took "
        f"{rate:,.0f} rows/s; the replica's checksum equalled the primary's {lag:.2f}s after the last insert"
    )


if __name__ == "__main__":
    main()
