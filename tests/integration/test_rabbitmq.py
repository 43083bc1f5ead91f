"""The RabbitMQ cluster on the lab, as `make lab` deployed it with site.yml: one broker on each of node1-3, from
the image_factory image in harbor.lab. Real brokers; AMQP through pika, the management API through requests."""

import contextlib
import itertools
import json
import threading
import time
import uuid

import pika
import pytest
import requests

from conftest import LAB_DIR, changes, failures, lab_node, run

NODES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}


def secret(name):
    return (LAB_DIR / name).read_text().strip()


def api(path, address="172.30.0.11", auth=None):
    return requests.get(
        f"http://{address}:15672/api/{path}",
        auth=auth or ("admin", secret("rabbitmq-admin-password")),
        timeout=10,
    )


def rabbitmq_play(*args):
    return run(["ansible-playbook", "-i", "inventory/lab", *args, "playbooks/rabbitmq.yml"])


def connection(address):
    credentials = pika.PlainCredentials("app", secret("rabbitmq-app-password"))
    return pika.BlockingConnection(
        pika.ConnectionParameters(host=address, port=5672, virtual_host="app", credentials=credentials)
    )


def test_the_three_brokers_run_as_one_cluster(lab):
    nodes = api("nodes").json()
    assert sorted(node["name"] for node in nodes if node["running"]) == sorted(
        f"rabbit@{address}" for address in NODES.values()
    )


def test_a_message_published_on_one_node_is_consumed_on_another(lab):
    queue = f"quorum.roundtrip-{uuid.uuid4().hex[:8]}"
    bodies = [f"message {index}".encode() for index in range(100)]
    publisher = connection(NODES["node1"])
    try:
        channel = publisher.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        for body in bodies:
            channel.basic_publish("", queue, body, mandatory=True)
    finally:
        publisher.close()
    consumer = connection(NODES["node3"])
    try:
        channel = consumer.channel()
        received = []
        for _method, _properties, body in channel.consume(queue, inactivity_timeout=10):
            if body is None:
                break
            received.append(body)
            channel.basic_ack(_method.delivery_tag)
            if len(received) == len(bodies):
                break
        channel.cancel()
        assert received == bodies
        # The management API shows a queue's members and policy after its next statistics round (5 s).
        deadline = time.monotonic() + 20
        while "effective_policy_definition" not in (details := api(f"queues/app/{queue}").json()):
            assert time.monotonic() < deadline, details
            time.sleep(0.5)
        # A quorum queue on all three nodes, with the cluster's quorum policy applied.
        assert sorted(details["members"]) == sorted(f"rabbit@{address}" for address in NODES.values())
        assert details["effective_policy_definition"]["delivery-limit"] == 20
        channel.queue_delete(queue)
    finally:
        consumer.close()


def test_the_admin_can_use_the_api_and_guest_cannot(lab):
    assert api("overview").status_code == 200
    for address in NODES.values():
        assert api("overview", address, auth=("guest", "guest")).status_code == 401
    assert "guest" not in [user["name"] for user in api("users").json()]


def test_secrets_are_in_files_only(lab):
    password = secret("rabbitmq-admin-password")
    cookie = secret("rabbitmq-erlang-cookie")
    inspected = lab_node("node1", "docker", "inspect", "rabbitmq").stdout
    assert password not in inspected and cookie not in inspected
    processes = lab_node("node1", "ps", "-eo", "args").stdout
    assert password not in processes and cookie not in processes
    modes = lab_node(
        "node1",
        "stat",
        "-c",
        "%a",
        "/srv/mooring/rabbitmq/conf.d/20-mooring.conf",
        "/srv/mooring/rabbitmq/data/.erlang.cookie",
    ).stdout.split()
    assert modes == ["600", "400"]


# A second real run is test_lab's second site.yml run, which holds this play.
def test_check_mode_on_the_converged_lab_reports_nothing(lab):
    checked = rabbitmq_play("--check")
    assert checked.returncode == 0, failures(checked)
    assert not any(changes(checked).values()), checked.stdout[-3000:]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"rabbitmq_admin_password": ""}, "rabbitmq_admin_password must not be empty"),
        ({"rabbitmq_erlang_cookie": "short"}, "rabbitmq_erlang_cookie must be 20 to 255 letters and digits"),
        (
            {"rabbitmq_users": [{"name": "nopass"}]},
            "rabbitmq_users: every user needs a non-empty password; missing for nopass",
        ),
    ],
)
def test_bad_input_fails_before_any_change_and_names_the_variable(lab, extra, message):
    before = json.loads(lab_node("node1", "docker", "inspect", "rabbitmq").stdout)[0]["State"]["StartedAt"]
    failed = rabbitmq_play("-e", json.dumps(extra))
    assert failed.returncode != 0
    assert message in failed.stdout, failed.stdout[-3000:]
    assert not any(changes(failed).values())
    assert json.loads(lab_node("node1", "docker", "inspect", "rabbitmq").stdout)[0]["State"]["StartedAt"] == before


class Publisher(threading.Thread):
    """Publishes numbered persistent messages to a quorum queue with publisher confirms until stopped (at most
    `limit`), going round the brokers: a closed connection (a drained or stopped broker) makes it reconnect to the
    next one. A message counts as confirmed only when basic_publish returned; the others are in doubt."""

    def __init__(self, queue, limit=20000, pause=0.01):
        super().__init__(daemon=True)
        self.queue, self.limit, self.pause = queue, limit, pause
        self.stopped = threading.Event()
        self.confirmed, self.in_doubt, self.reconnects = [], [], 0

    def _open(self, address):
        opened = connection(address)
        channel = opened.channel()
        channel.confirm_delivery()
        channel.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
        return opened, channel

    def run(self):
        addresses = itertools.cycle(NODES.values())
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
            try:
                channel.basic_publish(
                    "", self.queue, str(index).encode(), pika.BasicProperties(delivery_mode=2), mandatory=True
                )
                self.confirmed.append(index)
            except (pika.exceptions.AMQPError, OSError):
                self.in_doubt.append(index)
                self.reconnects += 1
                with contextlib.suppress(Exception):
                    opened.close()
                opened = channel = None
            index += 1
            time.sleep(self.pause)
        with contextlib.suppress(Exception):
            opened.close()


def drained(queue, address=NODES["node1"]):
    """Every message body left in the queue, consumed and acknowledged; the queue is deleted afterwards."""
    opened = connection(address)
    try:
        channel = opened.channel()
        bodies = []
        for method, _properties, body in channel.consume(queue, inactivity_timeout=5):
            if body is None:
                break
            bodies.append(int(body))
            channel.basic_ack(method.delivery_tag)
        channel.cancel()
        channel.queue_delete(queue)
        return bodies
    finally:
        opened.close()


def started_at(node):
    return json.loads(lab_node(node, "docker", "inspect", "rabbitmq").stdout)[0]["State"]["StartedAt"]


def test_a_changed_setting_rolls_broker_by_broker_and_no_confirmed_message_is_lost(lab):
    """A rabbitmq.conf change restarts the brokers one at a time (quorum kept, drained, revived); a publisher with
    confirms through the roll loses no confirmed message, every feature flag is enabled afterwards, and a re-run
    changes nothing."""
    queue = f"quorum.roll-{uuid.uuid4().hex[:8]}"
    setting = {"rabbitmq_config_extra": {"heartbeat": 30}}
    before = {node: started_at(node) for node in NODES}
    publisher = Publisher(queue)
    publisher.start()
    try:
        rolled = rabbitmq_play("-e", json.dumps(setting))
    finally:
        publisher.stopped.set()
        publisher.join(timeout=60)
    print(  # the report
        f"rabbitmq roll: {len(publisher.confirmed)} messages confirmed, {len(publisher.in_doubt)} in doubt, "
        f"{publisher.reconnects} reconnects"
    )
    try:
        assert rolled.returncode == 0, failures(rolled)
        assert publisher.limit > len(publisher.confirmed) + len(publisher.in_doubt), "the publisher ended too soon"
        assert all(started_at(node) != started for node, started in before.items())
        left = set(drained(queue))
        lost = [index for index in publisher.confirmed if index not in left]
        assert lost == [], f"{len(lost)} confirmed messages lost, first {lost[:10]}"
        flags = json.loads(
            lab_node(
                "node1",
                "docker",
                "exec",
                "rabbitmq",
                "rabbitmqctl",
                "list_feature_flags",
                "name",
                "state",
                "stability",
                "--formatter",
                "json",
            ).stdout
        )
        assert [flag["name"] for flag in flags if flag["state"] != "enabled" and flag["stability"] == "stable"] == []
        again = rabbitmq_play("-e", json.dumps(setting))
        assert again.returncode == 0, failures(again)
        assert not any(changes(again).values()), again.stdout[-3000:]
    finally:
        restored = rabbitmq_play()
        assert restored.returncode == 0, failures(restored)
