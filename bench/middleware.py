"""Middleware benchmark on the lab: the service plays, replication lag, Redis failover, RabbitMQ throughput.

Measures, in one run and on the same machine:
  cold    each play on lab nodes whose service containers and data were removed first
  warm    the same play again (nothing to do; it must report changed=0)
  lag     a bounded insert load on the MariaDB primary (batches of rows at a fixed pace), the rows per second
          the primary took, and the seconds after the last insert until the replica's CHECKSUM TABLE equals
          the primary's
  failover  Redis Cluster: a master's container stopped; seconds until its replica reports role:master, and
          until cluster_state is ok again (then the old master is started and rejoins as a replica)
  amqp    RabbitMQ: a bounded burst through a quorum queue of the 3-node cluster: publish with publisher
          confirms (one at a time, as a careful producer does) on node1, consume with acks on node3; msg/s
  roll    per service, a changed setting rolled host by host by its play (the role's hooks: drained upstream,
          masters handed over, brokers drained, replicas first) while its client runs (web GET/POST through
          both nginx hosts, Redis writes, AMQP publishes with confirms, MariaDB inserts), against the baseline
          side by side: the same containers restarted on every host at once (`docker restart`, what the roles
          did before issue 14) under the same client. Seconds, operations failed of sent, longest failure window.
and prints warm/cold per play, and rolling/all-at-once per service. Needs the lab (`make lab`); leaves the
services deployed as site.yml does.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pika
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from lab_clients import AmqpPublisher, RedisWriter, RowWriter, WebLoad, longest_refusal

REPO_DIR = Path(__file__).resolve().parents[1]
PLAYS = {
    "tomcat": {"hosts": ["node2", "node3"], "containers": ["tomcat"], "dirs": ["/srv/mooring/tomcat"]},
    "nginx": {"hosts": ["node1", "node2"], "containers": ["nginx"], "dirs": ["/srv/mooring/nginx"]},
    "mysql_replication": {"hosts": ["node1", "node2"], "containers": ["mysql"], "dirs": ["/srv/mooring/mysql"]},
    "redis_cluster": {
        "hosts": ["node1", "node2", "node3"],
        "containers": ["redis-8001", "redis-8002"],
        "dirs": ["/srv/mooring/redis"],
    },
    "rabbitmq": {"hosts": ["node1", "node2", "node3"], "containers": ["rabbitmq"], "dirs": ["/srv/mooring/rabbitmq"]},
}
ADDRESSES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}
LAB_DIR = REPO_DIR / ".lab"
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


def redis_failover(rounds):
    """Seconds from a master's stop until its replica is master, and until the cluster is ok; per round."""
    secret = (LAB_DIR / "redis-password").read_text().strip()

    def node(address, port):
        return redis.Redis(host=address, port=int(port), password=secret, decode_responses=True, socket_timeout=5)

    def serving_pairs():
        """[(master entry, its live replicas)] once every serving master has one, as the cluster sees it. A
        round's old master rejoins as a replica only when the cluster's gossip says so, which can lag behind the
        node's own INFO: picking the next victim before that finds a master without a replica."""
        deadline = time.monotonic() + 60
        while True:
            view = [
                line.split() for line in node(ADDRESSES["node1"], 8001).execute_command("CLUSTER", "NODES").splitlines()
            ]
            live = [parts for parts in view if "fail" not in parts[2]]
            masters = [parts for parts in live if "master" in parts[2] and len(parts) > 8]
            pairs = [(master, [parts for parts in live if parts[3] == master[0]]) for master in masters]
            if masters and all(replicas for _master, replicas in pairs):
                return pairs
            if time.monotonic() > deadline:
                sys.exit(f"not every master had a live replica within 60 s: {view}")
            time.sleep(0.5)

    timings = []
    for _round in range(rounds):
        pairs = serving_pairs()
        victim, (replica, *_others) = pairs[_round % len(pairs)]
        victim_address, victim_port = victim[1].split("@")[0].split(":")
        host = next(name for name, address in ADDRESSES.items() if address == victim_address)
        watcher = node(*replica[1].split("@")[0].split(":"))
        started = time.monotonic()
        on_node(host, "docker", "stop", "-t", "1", f"redis-{victim_port}")
        try:
            while watcher.info("replication")["role"] != "master":
                if time.monotonic() - started > 60:
                    sys.exit("no promotion within 60 s")
                time.sleep(0.05)
            promoted = time.monotonic() - started
            while "cluster_state:ok" not in watcher.execute_command("CLUSTER", "INFO"):
                if time.monotonic() - started > 90:
                    sys.exit("cluster not ok within 90 s")
                time.sleep(0.05)
            healthy = time.monotonic() - started
        finally:
            on_node(host, "docker", "start", f"redis-{victim_port}")
        deadline = time.monotonic() + 60
        while node(victim_address, victim_port).info("replication")["role"] != "slave":
            if time.monotonic() > deadline:
                sys.exit("the old master did not rejoin as a replica")
            time.sleep(0.5)
        timings.append((promoted, healthy))
        print(f"failover {_round + 1}: promoted after {promoted:.2f}s, cluster ok after {healthy:.2f}s")
    return timings


def amqp_burst(count, size):
    """Publish count messages of size bytes with confirms on node1, consume them with acks on node3."""
    credentials = pika.PlainCredentials("app", (LAB_DIR / "rabbitmq-app-password").read_text().strip())

    def connect(node):
        return pika.BlockingConnection(
            pika.ConnectionParameters(host=ADDRESSES[node], virtual_host="app", credentials=credentials)
        )

    queue = f"quorum.bench-{uuid.uuid4().hex[:8]}"
    body = b"x" * size
    publisher = connect("node1")
    channel = publisher.channel()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.confirm_delivery()
    started = time.monotonic()
    for _message in range(count):
        channel.basic_publish("", queue, body)
    published = time.monotonic() - started
    publisher.close()

    consumer = connect("node3")
    channel = consumer.channel()
    channel.basic_qos(prefetch_count=500)
    started = time.monotonic()
    for received, (method, _properties, message) in enumerate(channel.consume(queue, inactivity_timeout=30), 1):
        if message is None:
            sys.exit(f"only {received - 1} of {count} messages came back")
        if received % 250 == 0 or received == count:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if received == count:
            break
    consumed = time.monotonic() - started
    channel.cancel()
    channel.queue_delete(queue)
    consumer.close()
    return count / published, count / consumed


ROLLS = {
    "tomcat": {
        "setting": {"tomcat_env": {"MOORING_BENCH": "roll"}},
        "hosts": ["node2", "node3"],
        "containers": ["tomcat"],
    },
    "redis_cluster": {
        "setting": {"redis_cluster_config_extra": {"hz": 11}},
        "hosts": ["node1", "node2", "node3"],
        "containers": ["redis-8001", "redis-8002"],
    },
    "rabbitmq": {
        "setting": {"rabbitmq_config_extra": {"heartbeat": 30}},
        "hosts": ["node1", "node2", "node3"],
        "containers": ["rabbitmq"],
    },
    "mysql_replication": {
        "setting": {"mysql_config_extra": {"max_connections": 180}},
        "hosts": [REPLICA, PRIMARY],
        "containers": ["mysql"],
    },
}


def roll_client(name):
    if name == "tomcat":
        return WebLoad(limit=100000)
    if name == "redis_cluster":
        return RedisWriter(f"bench-{uuid.uuid4().hex[:8]}", limit=100000)
    if name == "rabbitmq":
        return AmqpPublisher(f"quorum.bench-{uuid.uuid4().hex[:8]}", limit=100000)
    table = f"app.bench_{uuid.uuid4().hex[:8]}"
    sql(PRIMARY, f"CREATE TABLE {table} (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(64))")
    return RowWriter(table, limit=100000)


def healthy_everywhere(name, timeout=600):
    deadline = time.monotonic() + timeout
    for node in ROLLS[name]["hosts"]:
        for container in ROLLS[name]["containers"]:
            while True:
                state = on_node(node, "docker", "inspect", "-f", "{{.State.Health.Status}}", container, check=False)
                if state.stdout.strip() == "healthy":
                    break
                if time.monotonic() > deadline:
                    sys.exit(f"{container} on {node} was not healthy after {timeout}s")
                time.sleep(0.5)


def under_client(name, action):
    """Runs `action` while the service's client runs: (seconds, sent, failed, longest failure window)."""
    client = roll_client(name)
    client.start()
    time.sleep(1)
    started = time.monotonic()
    action()
    elapsed = time.monotonic() - started
    time.sleep(1)
    sent = client.stop()
    if client.ran_out():
        sys.exit(f"the {name} client reached its limit before the action ended")
    return elapsed, sent, len(client.refused), longest_refusal(client.refused)


def roll(name):
    """The play with the changed setting (a host-by-host roll), then the play as before (rolled back the same
    way, not measured)."""
    extra = json.dumps(ROLLS[name]["setting"])

    def rolled():
        process = sh("ansible-playbook", "-i", "inventory/lab", "-e", extra, f"playbooks/{name}.yml")
        del process

    measured = under_client(name, rolled)
    sh("ansible-playbook", "-i", "inventory/lab", f"playbooks/{name}.yml")
    return measured


def all_at_once(name):
    """The baseline: every container of the service restarted at the same moment, waited for until healthy."""

    def restarted():
        threads = [
            threading.Thread(target=on_node, args=(node, "docker", "restart", container))
            for node in ROLLS[name]["hosts"]
            for container in ROLLS[name]["containers"]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        healthy_everywhere(name)

    measured = under_client(name, restarted)
    sh("ansible-playbook", "-i", "inventory/lab", f"playbooks/{name}.yml")  # a converge after, as a site would
    return measured


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="cold/warm rounds per play (the median is used)")
    parser.add_argument("--batches", type=int, default=50, help="insert batches for the lag measurement")
    parser.add_argument("--rows", type=int, default=1000, help="rows per batch")
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between batches")
    parser.add_argument("--failovers", type=int, default=3, help="Redis failover rounds")
    parser.add_argument("--messages", type=int, default=5000, help="AMQP messages in the burst")
    parser.add_argument("--size", type=int, default=1024, help="AMQP message size in bytes")
    parser.add_argument("--skip-rolls", action="store_true", help="leave out the rolling-upgrade comparison")
    parser.add_argument("--rolls-only", action="store_true", help="only the rolling-upgrade comparison")
    parser.add_argument("--roll", action="append", choices=sorted(ROLLS), help="roll only this service (repeatable)")
    options = parser.parse_args()
    for name in set(ROLLS) - set(options.roll or ROLLS):
        del ROLLS[name]
    if options.skip_rolls and options.rolls_only:
        parser.error("--skip-rolls and --rolls-only leave nothing to measure")
    os.environ.setdefault("ANSIBLE_CONFIG", str(REPO_DIR / "ansible.cfg"))
    if options.rolls_only:
        print_rolls({name: (roll(name), all_at_once(name)) for name in ROLLS})
        return

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
    failovers = redis_failover(options.failovers)
    publish_rate, consume_rate = amqp_burst(options.messages, options.size)
    rolls = {} if options.skip_rolls else {name: (roll(name), all_at_once(name)) for name in ROLLS}

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
    print(
        f"redis failover (cluster-node-timeout 5 s), median of {len(failovers)}: replica promoted after "
        f"{statistics.median(t[0] for t in failovers):.2f}s, cluster_state ok after "
        f"{statistics.median(t[1] for t in failovers):.2f}s"
    )
    print(
        f"rabbitmq: {options.messages} messages of {options.size} B through a quorum queue on 3 nodes: "
        f"publish with confirms {publish_rate:,.0f} msg/s (node1), consume with acks {consume_rate:,.0f} msg/s (node3)"
    )
    if rolls:
        print_rolls(rolls)


def print_rolls(rolls):
    print()
    print(f"{'roll':<20}{'rolling s':>10}{'failed/sent':>14}{'window s':>10}   "
          f"{'at once s':>10}{'failed/sent':>14}{'window s':>10}{'time ratio':>12}")  # fmt: skip
    for name, (rolling, baseline) in rolls.items():
        print(
            f"{name:<20}{rolling[0]:>10.1f}{f'{rolling[2]}/{rolling[1]}':>14}{rolling[3]:>10.2f}   "
            f"{baseline[0]:>10.1f}{f'{baseline[2]}/{baseline[1]}':>14}{baseline[3]:>10.2f}"
            f"{rolling[0] / baseline[0]:>12.2f}"
        )


if __name__ == "__main__":
    main()
