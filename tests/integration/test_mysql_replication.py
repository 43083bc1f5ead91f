"""MariaDB primary/replica replication on the lab, as `make lab` deployed it with site.yml: the primary on node1,
the replica on node2, from the image_factory image in harbor.lab. Real servers; every check asks them."""

import json
import time
import uuid

import pytest
from lab_clients import RowWriter, longest_refusal

from conftest import LAB_DIR, REPO_DIR, changes, failures, report, run

PRIMARY, REPLICA, SPARE = "node1", "node2", "node3"
ADDRESSES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}
LOCAL_CNF = "/etc/mysql/mooring-client/local.cnf"


def sql(node, statement, env=None, user_args=None, names=False):
    """Run SQL in the node's database container as root (its 0600 client file), or with other client args."""
    env_args = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
    client_args = user_args or [f"--defaults-extra-file={LOCAL_CNF}"]
    command = ["docker", "exec", f"mooring-lab-{node}", "docker", "exec", *env_args, "mysql", "mariadb"]
    return run([*command, *client_args, *([] if names else ["-N"]), "-B", "-e", statement], timeout=120)


def value(node, statement):
    answer = sql(node, statement)
    assert answer.returncode == 0, answer.stderr
    return answer.stdout.strip()


def replica_status(node):
    answer = sql(node, "SHOW REPLICA STATUS\\G", names=True)
    assert answer.returncode == 0, answer.stderr
    return dict(
        (key.strip(), rest.strip())
        for key, _sep, rest in (line.partition(":") for line in answer.stdout.splitlines())
        if _sep
    )


def checksum(node, table):
    return value(node, f"CHECKSUM TABLE {table}").split()[-1]


def wait_for_equal_checksums(table, nodes, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        primary = checksum(PRIMARY, table)
        others = {}
        for node in nodes:
            answer = sql(node, f"CHECKSUM TABLE {table}")
            others[node] = answer.stdout.split()[-1] if answer.returncode == 0 and answer.stdout.split() else None
        if all(other == primary for other in others.values()):
            return primary
        assert time.monotonic() < deadline, f"{table}: primary {primary}, replicas {others}"
        time.sleep(1)


def started_at(node, container="mysql"):
    inspected = run(["docker", "exec", f"mooring-lab-{node}", "docker", "inspect", container])
    return json.loads(inspected.stdout)[0]["State"]["StartedAt"]


def replication_play(*args):
    return run(["ansible-playbook", "-i", "inventory/lab", *args, "playbooks/mysql_replication.yml"])


@pytest.fixture
def table(lab):
    name = f"app.t_{uuid.uuid4().hex[:10]}"
    answer = sql(PRIMARY, f"CREATE TABLE {name} (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(64))")
    assert answer.returncode == 0, answer.stderr
    yield name
    sql(PRIMARY, f"DROP TABLE IF EXISTS {name}")


def insert_rows(table, count):
    answer = sql(PRIMARY, f"INSERT INTO {table} (v) SELECT CONCAT('row-', seq) FROM app.seq_1_to_{count}")
    assert answer.returncode == 0, answer.stderr


def test_rows_written_on_the_primary_reach_the_replica_with_equal_checksums(table):
    insert_rows(table, 1000)
    wait_for_equal_checksums(table, [REPLICA])
    assert value(REPLICA, f"SELECT COUNT(*) FROM {table}") == "1000"
    status = replica_status(REPLICA)
    assert status["Slave_IO_Running"] == "Yes"
    assert status["Slave_SQL_Running"] == "Yes"
    assert status["Using_Gtid"] == "Slave_Pos"


def test_the_replica_is_read_only_for_the_app_user(table):
    password = (LAB_DIR / "mysql-app-password").read_text().strip()
    wait_for_equal_checksums(table, [REPLICA])
    refused = sql(
        REPLICA,
        f"INSERT INTO {table} (v) VALUES ('written on the replica')",
        env={"MYSQL_PWD": password},
        user_args=["--user=app", "--host=127.0.0.1"],
    )
    assert refused.returncode != 0
    assert "read-only" in refused.stderr
    assert value(REPLICA, "SELECT @@read_only") == "1"


def test_a_restarted_replica_resumes_and_catches_up(table):
    insert_rows(table, 100)
    restarted = run(["docker", "exec", f"mooring-lab-{REPLICA}", "docker", "restart", "mysql"], timeout=180)
    assert restarted.returncode == 0, restarted.stderr
    insert_rows(table, 200)
    deadline = time.monotonic() + 120
    while sql(REPLICA, "SELECT 1").returncode != 0:
        assert time.monotonic() < deadline, "the replica did not come back"
        time.sleep(1)
    wait_for_equal_checksums(table, [REPLICA])
    assert replica_status(REPLICA)["Slave_SQL_Running"] == "Yes"


def test_a_second_run_changes_nothing_and_leaves_the_replica_following(table):
    insert_rows(table, 10)
    wait_for_equal_checksums(table, [REPLICA])
    before = replica_status(REPLICA)
    again = replication_play()
    assert again.returncode == 0, again.stdout[-3000:]
    assert not any(changes(again).values()), again.stdout[-3000:]
    after = replica_status(REPLICA)
    # A CHANGE MASTER would have started new relay logs; the position may only have moved forward.
    assert after["Relay_Log_File"] == before["Relay_Log_File"]
    assert int(after["Relay_Log_Pos"]) >= int(before["Relay_Log_Pos"])
    assert after["Master_Host"] == before["Master_Host"] == "172.30.0.11"


def test_an_errant_transaction_on_the_replica_fails_the_play_at_once_naming_the_error(table):
    """A row written on the replica by root (outside replication) collides with the primary's next insert: the SQL
    thread stops with error 1062. The play fails on its first read of the replica, with the error and the
    recovery steps, and leaves the replica as it was; recovering by hand as the message says works."""
    wait_for_equal_checksums(table, [REPLICA])
    errant = sql(REPLICA, f"SET SESSION sql_log_bin=0; INSERT INTO {table} (id, v) VALUES (424242, 'errant')")
    assert errant.returncode == 0, errant.stderr
    assert sql(PRIMARY, f"INSERT INTO {table} (id, v) VALUES (424242, 'primary')").returncode == 0
    deadline = time.monotonic() + 60
    while replica_status(REPLICA)["Slave_SQL_Running"] != "No":
        assert time.monotonic() < deadline, "the replica's SQL thread did not stop on the duplicate"
        time.sleep(0.5)
    stopped = replica_status(REPLICA)
    try:
        failed = replication_play()
        assert failed.returncode != 0
        assert "replication stopped on an error - SQL thread, error 1062: " in failed.stdout, failed.stdout[-3000:]
        assert "does not skip, reset or re-seed a replica by itself" in failed.stdout
        assert "FAILED - RETRYING" not in failed.stdout
        after = replica_status(REPLICA)
        assert (after["Slave_SQL_Running"], after["Relay_Log_File"], after["Exec_Master_Log_Pos"]) == (
            "No",
            stopped["Relay_Log_File"],
            stopped["Exec_Master_Log_Pos"],
        )
    finally:
        repaired = sql(REPLICA, f"SET SESSION sql_log_bin=0; DELETE FROM {table} WHERE id = 424242; START REPLICA")
        assert repaired.returncode == 0, repaired.stderr
    wait_for_equal_checksums(table, [REPLICA])
    assert value(REPLICA, f"SELECT v FROM {table} WHERE id = 424242") == "primary"


def test_check_mode_on_the_converged_set_reports_no_change(lab):
    checked = replication_play("--check")
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert not any(changes(checked).values()), checked.stdout[-3000:]


def test_a_duplicate_server_id_fails_before_any_change_and_names_the_hosts(lab):
    before = {node: started_at(node) for node in (PRIMARY, REPLICA)}
    failed = replication_play("-e", "mysql_server_id=7")
    assert failed.returncode != 0
    assert f"mysql_server_id 7 of {PRIMARY} is also the server_id of {REPLICA}" in failed.stdout
    assert {node: started_at(node) for node in (PRIMARY, REPLICA)} == before
    assert (
        "server_id = 1"
        in run(
            ["docker", "exec", f"mooring-lab-{PRIMARY}", "cat", "/srv/mooring/mysql/conf.d/mooring-replication.cnf"]
        ).stdout
    )


def test_a_replica_without_a_primary_fails_and_names_the_host(lab, tmp_path):
    node3 = {
        "lab_node_address": "172.30.0.13",
        "ansible_host": "172.30.0.13",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_become": False,
        # group_vars/all.yml derives it from the inventory's place, which is tmp_path here.
        "lab_state_dir": str(REPO_DIR / ".lab"),
    }
    inventory = {
        "all": {
            "children": {
                "docker_hosts": {"hosts": {SPARE: node3}},
                "mysql": {"children": {"mysql_replica": {"hosts": {SPARE: None}}}},
            }
        }
    }
    (tmp_path / "hosts.yml").write_text(json.dumps(inventory))
    (tmp_path / "group_vars").symlink_to(REPO_DIR / "inventory" / "lab" / "group_vars")
    failed = run(
        ["ansible-playbook", "-i", str(tmp_path / "hosts.yml"), "-e", f"lab_state_dir={LAB_DIR}",
         "playbooks/mysql_replication.yml"]
    )  # fmt: skip
    assert failed.returncode != 0
    assert "replica node3 needs exactly one host in the group mysql_primary" in failed.stdout
    assert run(["docker", "exec", f"mooring-lab-{SPARE}", "test", "-e", "/srv/mooring/mysql"]).returncode != 0


def test_a_replica_added_to_a_primary_with_rows_is_seeded_and_ends_equal(table, tmp_path):
    insert_rows(table, 500)
    extra = tmp_path / "spare-replica.yml"
    extra.write_text(f"all:\n  children:\n    mysql_replica:\n      hosts:\n        {SPARE}:\n")
    try:
        added = run(
            ["ansible-playbook", "-i", "inventory/lab", "-i", str(extra), "playbooks/mysql_replication.yml"],
            timeout=900,
        )
        assert added.returncode == 0, added.stdout[-4000:]
        wait_for_equal_checksums(table, [REPLICA, SPARE])
        assert value(SPARE, f"SELECT COUNT(*) FROM {table}") == "500"
        insert_rows(table, 50)
        wait_for_equal_checksums(table, [REPLICA, SPARE])
        assert value(SPARE, "SELECT @@server_id") == "3"
    finally:
        run(["docker", "exec", f"mooring-lab-{SPARE}", "docker", "rm", "-f", "mysql"])
        run(["docker", "exec", f"mooring-lab-{SPARE}", "rm", "-rf", "/srv/mooring/mysql"])


def backups(node=PRIMARY, directory="/srv/mooring/mysql-backups"):
    listed = run(["docker", "exec", f"mooring-lab-{node}", "ls", "-1", directory])
    return sorted(listed.stdout.split()) if listed.returncode == 0 else []


def backup_play(*args):
    return run(["ansible-playbook", "-i", "inventory/lab", *args, "playbooks/mysql_backup.yml"], timeout=600)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"mysql_backup_dir": "backups"}, 'mysql_backup_dir must be an absolute path without "..", got "backups"'),
        ({"mysql_backup_keep": 0}, "mysql_backup_keep must be a whole number of 1 or more, got 0"),
    ],
)
def test_bad_backup_settings_fail_naming_the_variable_and_write_nothing(lab, extra, message):
    before = backups()
    failed = backup_play("-e", json.dumps(extra))
    assert failed.returncode != 0
    assert message in failed.stdout, failed.stdout[-3000:]
    assert backups() == before


def test_backups_are_dated_private_verified_and_kept_to_the_retention(table):
    insert_rows(table, 300)
    for _run in range(3):
        made = backup_play("-e", json.dumps({"mysql_backup_keep": 2}))
        assert made.returncode == 0, failures(made)
    kept = backups()
    assert len(kept) == 2, kept
    newest = f"/srv/mooring/mysql-backups/{kept[-1]}"
    modes = run(["docker", "exec", f"mooring-lab-{PRIMARY}", "stat", "-c", "%a %n", newest,
                 f"{newest}/{PRIMARY}-all-databases.sql.gz", f"{newest}/SHA256SUMS"])  # fmt: skip
    assert [line.split()[0] for line in modes.stdout.splitlines()] == ["700", "600", "600"]
    check = run(["docker", "exec", "-w", newest, f"mooring-lab-{PRIMARY}", "sha256sum", "--check", "SHA256SUMS"])
    assert check.returncode == 0, check.stdout + check.stderr
    dumped = run(["docker", "exec", f"mooring-lab-{PRIMARY}", "sh", "-c",
                  f"zcat {newest}/{PRIMARY}-all-databases.sql.gz | grep -c 'row-300'"])  # fmt: skip
    assert int(dumped.stdout.strip() or 0) >= 1


def test_a_fresh_replica_restored_from_a_backup_follows_the_primary_and_ends_equal(table, tmp_path):
    insert_rows(table, 400)
    made = backup_play()
    assert made.returncode == 0, failures(made)
    chosen = backups()[-1]
    insert_rows(table, 40)  # after the backup: the restored replica gets them by replication
    extra = tmp_path / "spare-replica.yml"
    extra.write_text(f"all:\n  children:\n    mysql_replica:\n      hosts:\n        {SPARE}:\n")
    inventories = ["-i", "inventory/lab", "-i", str(extra)]
    try:
        restored = run(
            ["ansible-playbook", *inventories, "-e", f"mysql_restore_backup={chosen}", "--limit", SPARE,
             "playbooks/mysql_restore.yml"],
            timeout=900,
        )  # fmt: skip
        assert restored.returncode == 0, failures(restored)
        wait_for_equal_checksums(table, [REPLICA, SPARE])
        assert value(SPARE, f"SELECT COUNT(*) FROM {table}") == "440"
        status = replica_status(SPARE)
        assert (status["Slave_IO_Running"], status["Slave_SQL_Running"], status["Using_Gtid"]) == (
            "Yes",
            "Yes",
            "Slave_Pos",
        )
        again = run(["ansible-playbook", *inventories, "--limit", SPARE, "playbooks/mysql_replication.yml"])
        assert not any(changes(again).values()), again.stdout[-3000:]
        refused = run(
            ["ansible-playbook", *inventories, "-e", f"mysql_restore_backup={chosen}", "--limit", SPARE,
             "playbooks/mysql_restore.yml"]
        )  # fmt: skip
        assert refused.returncode != 0
        assert "restore builds a fresh primary or replica and never overwrites one" in refused.stdout
    finally:
        run(["docker", "exec", f"mooring-lab-{SPARE}", "docker", "rm", "-f", "mysql"])
        run(["docker", "exec", f"mooring-lab-{SPARE}", "rm", "-rf", "/srv/mooring/mysql"])


def test_a_changed_setting_rolls_the_replica_then_the_primary_after_a_backup_and_no_row_is_lost(table):
    """A my.cnf change restarts the replica first, then, after a verified backup, the primary; a writer through
    the roll loses no acknowledged row, its write pause is reported, the checksums end equal, and a re-run
    changes nothing."""
    setting = {"mysql_config_extra": {"max_connections": 180}}
    before = {node: started_at(node) for node in (PRIMARY, REPLICA)}
    backups_before = set(backups())
    writer = RowWriter(table)
    rolled = writer.during(lambda: replication_play("-e", json.dumps(setting)))
    report(
        f"mariadb roll: {len(writer.acknowledged)} rows acknowledged, {len(writer.refused)} writes refused, "
        f"longest write pause {longest_refusal(writer.refused):.2f} s"
    )
    try:
        assert rolled.returncode == 0, failures(rolled)
        assert writer.limit > len(writer.acknowledged) + len(writer.refused), "the writer ended before the roll"
        after = {node: started_at(node) for node in (PRIMARY, REPLICA)}
        assert all(after[node] != before[node] for node in before)
        assert after[REPLICA] < after[PRIMARY], after  # the replica first
        assert set(backups()) - backups_before, "no backup was made before the primary was replaced"
        written = set(value(PRIMARY, f"SELECT v FROM {table}").split())
        lost = [index for index in writer.acknowledged if f"written-{index}" not in written]
        assert lost == [], f"{len(lost)} acknowledged rows lost, first {lost[:10]}"
        wait_for_equal_checksums(table, [REPLICA])
        assert value(REPLICA, "SELECT @@max_connections") == "180"
        again = replication_play("-e", json.dumps(setting))
        assert again.returncode == 0, failures(again)
        assert not any(changes(again).values()), again.stdout[-3000:]
    finally:
        restored = replication_play()
        assert restored.returncode == 0, failures(restored)


def test_mariadb_rolls_to_debian_13s_11_8_after_a_backup_refuses_to_go_back_and_is_restored(table):
    """The upgrade drill: mysql_image names the 11.8 line (Debian 13, built on demand). The replica rolls first,
    then, after a verified backup, the primary; each server's system tables are upgraded (mariadb-upgrade); a
    writer through the roll loses no acknowledged row and the checksums end equal; a re-run changes nothing.
    Going back to 10.11 is refused before any server changes, naming the variable and the restore. The way back
    it names: both servers rebuilt on 10.11, the primary restored from the backup taken before the upgrade, the
    replica seeded from it by the usual play."""
    insert_rows(table, 200)
    newer = {"mysql_image": "harbor.lab/mooring/mariadb:11.8"}
    backups_before = set(backups())
    writer = RowWriter(table)
    rolled = writer.during(lambda: replication_play("-e", json.dumps(newer)))
    report(
        f"mariadb upgrade: {len(writer.acknowledged)} rows acknowledged, {len(writer.refused)} writes refused, "
        f"longest write pause {longest_refusal(writer.refused):.2f} s"
    )
    taken = sorted(set(backups()) - backups_before)
    try:
        assert rolled.returncode == 0, failures(rolled)
        assert taken, "no backup was made before the primary was replaced"
        for node in (PRIMARY, REPLICA):
            assert value(node, "SELECT VERSION()").startswith("11.8."), node
        written = set(value(PRIMARY, f"SELECT v FROM {table}").split())
        lost = [index for index in writer.acknowledged if f"written-{index}" not in written]
        assert lost == [], f"{len(lost)} acknowledged rows lost, first {lost[:10]}"
        wait_for_equal_checksums(table, [REPLICA])
        again = replication_play("-e", json.dumps(newer))
        assert not any(changes(again).values()), again.stdout[-3000:]
        before = {node: started_at(node) for node in (PRIMARY, REPLICA)}
        back = replication_play()
        assert back.returncode != 0
        said = " ".join(back.stdout.split())  # the YAML callback folds long messages
        assert "mysql_image: 11.8." in said and "cannot go back to 10.11." in said, failures(back)
        assert "playbooks/mysql_restore.yml" in said
        assert {node: started_at(node) for node in (PRIMARY, REPLICA)} == before
    finally:
        for node in (PRIMARY, REPLICA):
            run(["docker", "exec", f"mooring-lab-{node}", "docker", "rm", "-f", "mysql"])
            run(["docker", "exec", f"mooring-lab-{node}", "rm", "-rf", "/srv/mooring/mysql/data"])
        restored = run(["ansible-playbook", "-i", "inventory/lab", "-e", f"mysql_restore_backup={taken[0]}",
                        "--limit", PRIMARY, "playbooks/mysql_restore.yml"], timeout=900)  # fmt: skip
        assert restored.returncode == 0, failures(restored)
        seeded = replication_play()
        assert seeded.returncode == 0, failures(seeded)
    assert value(PRIMARY, "SELECT VERSION()").startswith("10.11.")
    assert int(value(PRIMARY, f"SELECT COUNT(*) FROM {table}")) >= 200
    wait_for_equal_checksums(table, [REPLICA])
