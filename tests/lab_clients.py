"""Clients of the lab's services that keep working through a roll and record what they saw: the integration
tests assert on them (nothing lost, nothing failed) and bench/middleware.py reports them. Each is a thread,
bounded (`limit` operations at most), started before a play and stopped after it."""

import contextlib
import itertools
import re
import threading
import time
from pathlib import Path

import pika
import pymysql
import requests
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

LAB_DIR = Path(__file__).resolve().parents[1] / ".lab"
ADDRESSES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}
NGINX_HOSTS = ["node1", "node2"]
REDIS_PORTS = (8001, 8002)
MYSQL_PRIMARY = "node1"


def secret(name):
    return (LAB_DIR / name).read_text().strip()


def redis_cluster_client():
    return RedisCluster(
        startup_nodes=[ClusterNode(address, port) for address in ADDRESSES.values() for port in REDIS_PORTS],
        password=secret("redis-password"),
        decode_responses=True,
        socket_timeout=5,
    )


def amqp_connection(address, port=5672):
    credentials = pika.PlainCredentials("app", secret("rabbitmq-app-password"))
    return pika.BlockingConnection(
        pika.ConnectionParameters(host=address, port=port, virtual_host="app", credentials=credentials)
    )


class Client(threading.Thread):
    """What every client shares: a bounded loop until stopped, `refused` holds the monotonic times of failed
    operations (longest_refusal measures the window), `sent` counts the operations."""

    def __init__(self, limit, pause):
        super().__init__(daemon=True)
        self.limit, self.pause = limit, pause
        self.stopped = threading.Event()
        self.refused = []
        self.sent = 0

    def stop(self, timeout=60):
        self.stopped.set()
        self.join(timeout=timeout)
        return self.sent

    def during(self, action):
        """Runs `action` (a play) with this client running from before it starts until after it ends (also when
        it raises), and returns what it returned."""
        self.start()
        try:
            return action()
        finally:
            self.stop()

    def ran_out(self):
        """True when the loop ended by its limit rather than by stop(): it did not cover the whole play."""
        return self.sent >= self.limit


class WebLoad(Client):
    """A client of both nginx hosts (or of the `entries` given: the balancer): one request for the proxied Tomcat
    page after another, GET and POST in turn (nginx retries a GET on the other Tomcat by itself, never a POST
    that reached it). Records who served each request, and every failure (status or exception). Each request
    opens its own connection: an HTTP/1.1 server may close an idle kept-alive connection at any moment (nginx
    does on every reload, the way rolls change its upstream), and a client must then retry (RFC 9112 9.3.1);
    counting that race would measure the client, not the roll."""

    def __init__(self, limit=4000, pause=0.02, entries=tuple(NGINX_HOSTS)):
        super().__init__(limit, pause)
        self.entries = entries
        self.served_by, self.failed = [], []

    def run(self):
        with requests.Session() as session:
            for sent in range(self.limit):
                if self.stopped.is_set():
                    break
                self.sent = sent + 1
                node = self.entries[sent % len(self.entries)]
                try:
                    method = session.post if sent % 4 >= 2 else session.get
                    answer = method(f"http://{ADDRESSES[node]}/app/", timeout=10, headers={"Connection": "close"})
                    if answer.status_code == 200:
                        self.served_by.append(answer.text.split()[3])
                    else:
                        self.failed.append(f"{node}: HTTP {answer.status_code}")
                        self.refused.append(time.monotonic())
                except requests.RequestException as error:
                    self.failed.append(f"{node}: {error}")
                    self.refused.append(time.monotonic())
                time.sleep(self.pause)


class RedisWriter(Client):
    """Writes key after key through the cluster client; records every write the cluster acknowledged."""

    def __init__(self, prefix, limit=20000, pause=0.01):
        super().__init__(limit, pause)
        self.prefix = prefix
        self.acknowledged = []

    def run(self):
        cluster = redis_cluster_client()
        for index in range(self.limit):
            if self.stopped.is_set():
                break
            self.sent = index + 1
            try:
                cluster.set(f"{self.prefix}:{index}", index)
                self.acknowledged.append(index)
            except (RedisError, RedisClusterException):
                # RedisClusterException: no node reachable at all (every node restarting at once).
                self.refused.append(time.monotonic())
            time.sleep(self.pause)


class AmqpPublisher(Client):
    """Publishes numbered persistent messages to a quorum queue with publisher confirms, going round the brokers:
    a closed connection (a drained or stopped broker) makes it reconnect to the next one. A message counts as
    confirmed only when basic_publish returned; the others are in doubt. Bodies are `tag` and the number; `port`
    is the brokers' AMQP port (the blue-green way's new cluster listens on another)."""

    def __init__(self, queue, limit=20000, pause=0.01, port=5672, tag=""):
        super().__init__(limit, pause)
        self.queue, self.port, self.tag = queue, port, tag
        self.confirmed, self.in_doubt, self.reconnects = [], [], 0

    def _open(self, address):
        opened = amqp_connection(address, self.port)
        channel = opened.channel()
        channel.confirm_delivery()
        channel.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
        return opened, channel

    def run(self):
        addresses = itertools.cycle(ADDRESSES.values())
        opened = channel = None
        index = 0
        while index < self.limit and not self.stopped.is_set():
            if channel is None:
                try:
                    opened, channel = self._open(next(addresses))
                except (pika.exceptions.AMQPError, OSError):
                    self.reconnects += 1
                    time.sleep(0.2)
                    continue
            self.sent = index + 1
            try:
                channel.basic_publish(
                    "", self.queue, f"{self.tag}{index}".encode(), pika.BasicProperties(delivery_mode=2), mandatory=True
                )
                self.confirmed.append(index)
            except (pika.exceptions.AMQPError, OSError):
                self.in_doubt.append(index)
                self.refused.append(time.monotonic())
                self.reconnects += 1
                with contextlib.suppress(Exception):
                    opened.close()
                opened = channel = None
            index += 1
            time.sleep(self.pause)
        with contextlib.suppress(Exception):
            opened.close()


class RowWriter(Client):
    """Inserts one row after another on the MariaDB primary as the app user, over the network like an application;
    reconnects after an error. Records the rows the server acknowledged (autocommit: the INSERT returned)."""

    def __init__(self, table, limit=20000, pause=0.02):
        super().__init__(limit, pause)
        self.table = table
        self.acknowledged = []

    def run(self):
        password = secret("mysql-app-password")
        connection = None
        for index in range(self.limit):
            if self.stopped.is_set():
                break
            self.sent = index + 1
            try:
                if connection is None:
                    connection = pymysql.connect(
                        host=ADDRESSES[MYSQL_PRIMARY], user="app", password=password, database="app",
                        autocommit=True, connect_timeout=3, read_timeout=10, write_timeout=10,
                    )  # fmt: skip
                with connection.cursor() as cursor:
                    cursor.execute(f"INSERT INTO {self.table} (v) VALUES (%s)", (f"written-{index}",))
                self.acknowledged.append(index)
            except pymysql.MySQLError:
                self.refused.append(time.monotonic())
                with contextlib.suppress(Exception):
                    connection.close()
                connection = None
                time.sleep(0.2)
            time.sleep(self.pause)
        with contextlib.suppress(Exception):
            connection.close()


def longest_refusal(moments, apart=1.0):
    """The longest run of refused client operations, in seconds, from their monotonic times: refusals less than
    `apart` seconds from each other belong to one run (0 when none was refused)."""
    runs, start, last = [], None, None
    for moment in moments:
        if last is None or moment - last > apart:
            if start is not None:
                runs.append(last - start)
            start = moment
        last = moment
    if start is not None:
        runs.append(last - start)
    return max(runs, default=0.0)


HIT_COUNTER_ANSWER = re.compile(r"Hello from (\S+) \(hit-counter (\S+)\): I have been seen (\d+) times")


def hit_counter(node, port=5000, timeout=10):
    """One hit on the hit counter through a node's published port: (task's container, version, count)."""
    answer = requests.get(f"http://{ADDRESSES[node]}:{port}/", timeout=timeout, headers={"Connection": "close"})
    answer.raise_for_status()
    match = HIT_COUNTER_ANSWER.search(answer.text)
    if not match:
        raise AssertionError(f"{node}:{port} answered {answer.text!r}")
    return match[1], match[2], int(match[3])


class HitCounterLoad(Client):
    """Hits on the hit counter through the given nodes in turn: who answered, with which version and count, and
    every failure (status, timeout, refusal)."""

    def __init__(self, entries, limit=3000, pause=0.1, port=5000):
        super().__init__(limit, pause)
        self.entries, self.port = entries, port
        self.answers, self.failed = [], []

    def run(self):
        for sent in range(self.limit):
            if self.stopped.is_set():
                break
            self.sent = sent + 1
            node = self.entries[sent % len(self.entries)]
            try:
                self.answers.append((node, *hit_counter(node, self.port)))
            except (requests.RequestException, AssertionError) as error:
                self.failed.append(f"{node}: {error}")
                self.refused.append(time.monotonic())
            time.sleep(self.pause)
