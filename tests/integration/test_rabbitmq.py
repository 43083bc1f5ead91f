"""The RabbitMQ cluster on the lab, as `make lab` deployed it with site.yml: one broker on each of node1-3, from
the image_factory image in harbor.lab. Real brokers; AMQP through pika, the management API through requests."""

import json
import time
import uuid

import pika
import pytest
import requests
from lab_clients import AmqpPublisher

from conftest import LAB_DIR, changes, failures, lab_node, report, run

NODES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}


def secret(name):
    return (LAB_DIR / name).read_text().strip()


def api(path, address="172.30.0.11", auth=None, port=15672):
    return requests.get(
        f"http://{address}:{port}/api/{path}",
        auth=auth or ("admin", secret("rabbitmq-admin-password")),
        timeout=10,
    )


def rabbitmq_play(*args):
    return run(["ansible-playbook", "-i", "inventory/lab", *args, "playbooks/rabbitmq.yml"])


def connection(address, port=5672):
    credentials = pika.PlainCredentials("app", secret("rabbitmq-app-password"))
    return pika.BlockingConnection(
        pika.ConnectionParameters(host=address, port=port, virtual_host="app", credentials=credentials)
    )


def consumed(channel, queue, inactivity, at_most=None):
    """The bodies consumed from the queue and acknowledged, until none came for `inactivity` seconds (or
    `at_most` arrived); the consumer is cancelled afterwards."""
    bodies = []
    for method, _properties, body in channel.consume(queue, inactivity_timeout=inactivity):
        if body is None:
            break
        bodies.append(body)
        channel.basic_ack(method.delivery_tag)
        if at_most is not None and len(bodies) == at_most:
            break
    channel.cancel()
    return bodies


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
        received = consumed(channel, queue, inactivity=10, at_most=len(bodies))
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


def drained(queue, address=NODES["node1"], port=5672, decode=int):
    """Every message body left in the queue, consumed and acknowledged; the queue is deleted afterwards."""
    opened = connection(address, port)
    try:
        channel = opened.channel()
        bodies = [decode(body) for body in consumed(channel, queue, inactivity=5)]
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
    publisher = AmqpPublisher(queue)
    rolled = publisher.during(lambda: rabbitmq_play("-e", json.dumps(setting)))
    report(
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


def test_debian_13s_rabbitmq_4_0_is_refused_before_any_broker_changes_naming_the_rule(lab):
    """rabbitmq_image names the 4.0 line, which image_factory builds from Debian 13 (the lab's line bases); a
    rolling upgrade from 3.10 must pass 3.11, 3.12 and 3.13 first, so every host refuses it before any broker
    changes, and the message names the variable, the series in between and the blue-green way."""
    before = {node: started_at(node) for node in NODES}
    refused = rabbitmq_play("-e", json.dumps({"rabbitmq_image": "harbor.lab/mooring/rabbitmq:4.0"}))
    assert refused.returncode != 0
    said = " ".join(refused.stdout.split())  # the YAML callback folds long messages
    assert "rabbitmq_image: RabbitMQ 3.10." in said, failures(refused)
    assert "a rolling upgrade goes one minor series at a time (3.10 -> 3.11 -> 3.12 -> 3.13 -> 4.0)" in said
    assert "blue-green" in said
    # The only change allowed is image_factory's build of the 4.0 image on this machine, before the refusal.
    assert {node: started_at(node) for node in NODES} == before


def test_a_definitions_backup_brings_back_a_deleted_queue_and_user(lab):
    """playbooks/rabbitmq_backup.yml exports the definitions on the seed node (0700/0600, sums that check);
    after a queue and a user are deleted, playbooks/rabbitmq_restore.yml imports that backup and both are back."""
    queue = f"quorum.kept-{uuid.uuid4().hex[:8]}"
    opened = connection(NODES["node1"])
    try:
        opened.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    finally:
        opened.close()
    admin = ("admin", secret("rabbitmq-admin-password"))
    user = f"kept-{uuid.uuid4().hex[:6]}"
    created = requests.put(f"http://{NODES['node1']}:15672/api/users/{user}", auth=admin, timeout=10,
                           json={"password": uuid.uuid4().hex, "tags": ""})  # fmt: skip
    assert created.status_code in (201, 204), created.text
    made = run(["ansible-playbook", "-i", "inventory/lab", "playbooks/rabbitmq_backup.yml"], timeout=600)
    assert made.returncode == 0, failures(made)
    listed = sorted(lab_node("node1", "ls", "-1", "/srv/mooring/rabbitmq-backups").stdout.split())
    newest = f"/srv/mooring/rabbitmq-backups/{listed[-1]}"
    modes = lab_node("node1", "stat", "-c", "%a", newest, f"{newest}/definitions.json", f"{newest}/SHA256SUMS")
    assert modes.stdout.split() == ["700", "600", "600"]
    assert lab_node("node1", "sh", "-c", f"cd {newest} && sha256sum --check --strict SHA256SUMS").returncode == 0
    try:
        requests.delete(f"http://{NODES['node1']}:15672/api/queues/app/{queue}", auth=admin, timeout=10)
        requests.delete(f"http://{NODES['node1']}:15672/api/users/{user}", auth=admin, timeout=10)
        assert api(f"queues/app/{queue}").status_code == 404
        restored = run(["ansible-playbook", "-i", "inventory/lab", "-e", f"rabbitmq_restore_backup={listed[-1]}",
                        "playbooks/rabbitmq_restore.yml"], timeout=600)  # fmt: skip
        assert restored.returncode == 0, failures(restored)
        assert api(f"queues/app/{queue}").status_code == 200
        assert api(f"users/{user}").status_code == 200
        assert lab_node("node1", "test", "-e", "/srv/mooring/rabbitmq/data/mooring-definitions.json").returncode != 0
    finally:
        requests.delete(f"http://{NODES['node1']}:15672/api/queues/app/{queue}", auth=admin, timeout=10)
        requests.delete(f"http://{NODES['node1']}:15672/api/users/{user}", auth=admin, timeout=10)


def rabbitmqctl(node, *args):
    return lab_node(node, "docker", "exec", "rabbitmq", "rabbitmqctl", *args)


def test_a_node_that_left_the_cluster_with_data_of_its_own_is_refused_not_reset(lab):
    """node3 is taken out of the cluster (stop_app, reset, start_app: alone) and used alone (a vhost); the play
    refuses to join it, since the join's reset would delete that data, names the data and the recovery, and
    leaves the vhost; after the recovery by hand (reset) the play joins it again."""
    assert rabbitmqctl("node3", "stop_app").returncode == 0
    try:
        assert rabbitmqctl("node3", "reset").returncode == 0
        assert rabbitmqctl("node3", "start_app").returncode == 0
        # reset makes a member leave the cluster: the others no longer list it.
        status = json.loads(rabbitmqctl("node1", "cluster_status", "--formatter", "json").stdout)
        assert f"rabbit@{NODES['node3']}" not in status["disk_nodes"], status
        assert rabbitmqctl("node3", "add_vhost", "alone").returncode == 0
        refused = rabbitmq_play()
        assert refused.returncode != 0
        said = " ".join(refused.stdout.split())  # the YAML callback folds long messages
        expected = (
            f"rabbit@{NODES['node3']} is not in the cluster of rabbit@{NODES['node1']} but holds data of its own "
            "(vhost alone)"
        )
        assert expected in said, failures(refused)
        assert "mooring does not reset a node by itself" in said
        assert "alone" in rabbitmqctl("node3", "list_vhosts", "name").stdout.split()
    finally:
        rabbitmqctl("node3", "stop_app")
        rabbitmqctl("node3", "reset")
        rabbitmqctl("node3", "start_app")
        joined = rabbitmq_play()
        assert joined.returncode == 0, failures(joined)
    nodes = api("nodes").json()
    assert sorted(node["name"] for node in nodes if node["running"]) == sorted(f"rabbit@{a}" for a in NODES.values())


def blue_green(step, *args):
    return run(["ansible-playbook", "-i", "inventory/lab", "-e", f"rabbitmq_blue_green_step={step}", *args,
                "playbooks/rabbitmq_blue_green.yml"])  # fmt: skip


GREEN = {"rabbitmq_green": {"image": "harbor.lab/mooring/rabbitmq:4.0"}}


@pytest.mark.parametrize(
    ("step", "extra", "message"),
    [
        ("rebuild", {}, "rabbitmq_blue_green_step must be build or retire"),
        ("build", {}, "rabbitmq_green.image must name the new cluster image"),
        ("build", {"rabbitmq_green": {"image": "x", "amqp_port": 5672, "epmd_port": 4369}},
         "rabbitmq_green must differ from the blue cluster on the same hosts in amqp_port, epmd_port"),
        ("build", {"rabbitmq_green_group": "nosuchgroup", **GREEN}, "rabbitmq_green_group must be an inventory group"),
    ],
)  # fmt: skip
def test_a_bad_blue_green_request_fails_naming_the_variable_before_any_change(lab, step, extra, message):
    before = {node: started_at(node) for node in NODES}
    refused = blue_green(step, "-e", json.dumps(extra))
    assert refused.returncode != 0
    assert message in " ".join(refused.stdout.split()), failures(refused)
    assert "TASK [mooring.ops.rabbitmq" not in refused.stdout
    assert {node: started_at(node) for node in NODES} == before


def test_blue_green_to_debian_13s_rabbitmq_4_0_moves_every_confirmed_message_and_retires_the_old_cluster(lab):
    """The way to 4.0 that a roll cannot take: build makes a second cluster of 4.0 beside 3.10 on the same hosts
    (own node name, ports and epmd) with 3.10's definitions, and shovels each durable queue over, while a publisher
    with confirms keeps publishing to 3.10. Retire refuses while a client is still on 3.10, naming it. The
    publisher then moves to 4.0; retire waits for the shovels to empty 3.10's queues and removes its brokers. Every
    message confirmed by either cluster is on 4.0, once."""
    queue = f"quorum.bluegreen-{uuid.uuid4().hex[:8]}"
    on_blue = AmqpPublisher(queue, tag="blue-")
    try:
        built = on_blue.during(lambda: blue_green("build", "-e", json.dumps(GREEN)))
        assert built.returncode == 0, failures(built)
        status = json.loads(lab_node("node1", "docker", "exec", "rabbitmq-green", "rabbitmqctl", "cluster_status",
                                     "--formatter", "json").stdout)  # fmt: skip
        assert sorted(status["running_nodes"]) == sorted(f"rabbit-green@{address}" for address in NODES.values())
        version = lab_node("node3", "docker", "exec", "rabbitmq-green", "rabbitmqctl", "version").stdout
        assert version.startswith("4.0."), version
        # The definitions came over: the app user, its vhost and the queue.
        assert api(f"queues/app/{queue}", address=NODES["node2"], port=15673).status_code == 200
        # A client still on the old cluster: retire refuses, naming it, and removes nothing.
        lingering = connection(NODES["node2"])
        try:
            refused = blue_green("retire", "-e", "rabbitmq_move_timeout=10")
        finally:
            lingering.close()
        assert refused.returncode != 0
        assert "clients connected" in " ".join(refused.stdout.split()) and "app@" in refused.stdout
        assert all(lab_node(node, "docker", "inspect", "rabbitmq").returncode == 0 for node in NODES)
        # The clients move; the old cluster goes.
        on_green = AmqpPublisher(queue, port=5673, tag="green-", limit=300)
        on_green.start()
        on_green.join(timeout=120)
        retired = blue_green("retire")
        assert retired.returncode == 0, failures(retired)
        assert all(lab_node(node, "docker", "inspect", "rabbitmq").returncode != 0 for node in NODES)
        left = drained(queue, address=NODES["node3"], port=5673, decode=bytes.decode)
        expected = [f"blue-{index}" for index in on_blue.confirmed] + [f"green-{index}" for index in on_green.confirmed]
        report(
            f"rabbitmq blue-green: {len(on_blue.confirmed)} confirmed by 3.10 during the build, "
            f"{len(on_green.confirmed)} by 4.0 after the move; {len(left)} on 4.0 at the end"
        )
        assert len(on_blue.confirmed) > 100 and len(on_green.confirmed) == 300
        assert sorted(set(expected) - set(left)) == [], "confirmed messages lost"
        assert len(left) == len(set(left)), "messages duplicated"
    finally:
        for node in NODES:
            lab_node(node, "docker", "rm", "-f", "rabbitmq-green")
            lab_node(node, "rm", "-rf", "/srv/mooring/rabbitmq-green")
        restored = rabbitmq_play()
        assert restored.returncode == 0, failures(restored)
        admin = ("admin", secret("rabbitmq-admin-password"))
        requests.delete(f"http://{NODES['node1']}:15672/api/queues/app/{queue}", auth=admin, timeout=10)
