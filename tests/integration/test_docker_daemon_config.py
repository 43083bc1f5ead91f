"""mooring.ops.docker_daemon_config against real files on this machine, run through Ansible itself."""

import json

import pytest

from conftest import LAB_DIR, run
from conftest import run_module as run_module_on_localhost


def run_module(args, *options):
    return run_module_on_localhost("mooring.ops.docker_daemon_config", args, *options)


@pytest.fixture
def daemon_json(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text('{"max-concurrent-downloads": 4, "log-opts": {"max-size": "10m"}, "registry-mirrors": ["a"]}\n')
    return path


def test_merge_keeps_unmanaged_keys_merges_objects_and_replaces_lists(daemon_json):
    result = run_module(
        {
            "path": str(daemon_json),
            "config": {"registry-mirrors": ["https://mirror.test"], "log-opts": {"max-file": "3"}},
        }
    )
    assert result["changed"] is True
    assert json.loads(daemon_json.read_text()) == {
        "max-concurrent-downloads": 4,
        "log-opts": {"max-size": "10m", "max-file": "3"},
        "registry-mirrors": ["https://mirror.test"],
    }


def test_second_run_changes_nothing(daemon_json):
    args = {"path": str(daemon_json), "config": {"insecure-registries": ["harbor.test"]}}
    assert run_module(args)["changed"] is True
    written = daemon_json.read_text()
    assert run_module(args)["changed"] is False
    assert daemon_json.read_text() == written


def test_a_formatting_difference_is_not_a_change(daemon_json):
    daemon_json.write_text('{\n    "registry-mirrors" : [ "https://mirror.test" ]\n}')
    result = run_module({"path": str(daemon_json), "config": {"registry-mirrors": ["https://mirror.test"]}})
    assert result["changed"] is False
    assert daemon_json.read_text() == '{\n    "registry-mirrors" : [ "https://mirror.test" ]\n}'


def test_invalid_json_fails_naming_the_file_and_changes_nothing(daemon_json):
    daemon_json.write_text('{"registry-mirrors": [')
    result = run_module({"path": str(daemon_json), "config": {"debug": True}})
    assert result["failed"] is True
    assert f"{daemon_json} is not valid JSON" in result["msg"]
    assert daemon_json.read_text() == '{"registry-mirrors": ['
    assert sorted(p.name for p in daemon_json.parent.iterdir()) == ["daemon.json"]


def test_json_that_is_not_an_object_is_refused(daemon_json):
    daemon_json.write_text('["debug"]')
    result = run_module({"path": str(daemon_json), "config": {"debug": True}})
    assert result["failed"] is True
    assert "must hold a JSON object" in result["msg"]
    assert daemon_json.read_text() == '["debug"]'


def test_check_mode_reports_the_diff_and_writes_nothing(daemon_json):
    before = daemon_json.read_text()
    result = run_module({"path": str(daemon_json), "config": {"debug": True}}, "--check", "--diff")
    assert result["changed"] is True
    assert '"debug": true' in result["diff"]["after"]
    assert result["diff"]["before"] == before
    assert daemon_json.read_text() == before


def test_the_previous_file_is_kept_as_a_backup(daemon_json):
    before = daemon_json.read_text()
    result = run_module({"path": str(daemon_json), "config": {"debug": True}})
    assert result["backup_file"]
    with open(result["backup_file"]) as backup:
        assert backup.read() == before


def test_a_missing_file_is_created(tmp_path):
    path = tmp_path / "docker" / "daemon.json"
    result = run_module({"path": str(path), "config": {"insecure-registries": ["harbor.test"]}})
    assert result["changed"] is True
    assert json.loads(path.read_text()) == {"insecure-registries": ["harbor.test"]}
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_a_recorded_key_dropped_from_config_is_removed_with_a_diff_and_unrecorded_keys_stay(daemon_json, tmp_path):
    record = tmp_path / "mooring-managed-keys.json"
    first = {"path": str(daemon_json), "record": str(record),
             "config": {"insecure-registries": ["harbor.test"], "live-restore": True}}  # fmt: skip
    assert run_module(first)["changed"] is True
    assert json.loads(record.read_text()) == ["insecure-registries", "live-restore"]
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    assert run_module(first)["changed"] is False

    second = {**first, "config": {"insecure-registries": ["harbor.test"]}}
    checked = run_module(second, "--check", "--diff")
    assert checked["changed"] is True and checked["removed_keys"] == ["live-restore"]
    assert '"live-restore": true' in checked["diff"]["before"] and "live-restore" not in checked["diff"]["after"]
    assert "live-restore" in json.loads(daemon_json.read_text())  # check mode wrote nothing
    assert json.loads(record.read_text()) == ["insecure-registries", "live-restore"]

    done = run_module(second)
    assert done["changed"] is True and done["removed_keys"] == ["live-restore"]
    # The keys the module never set (max-concurrent-downloads, log-opts, registry-mirrors) are kept.
    assert json.loads(daemon_json.read_text()) == {
        "max-concurrent-downloads": 4,
        "log-opts": {"max-size": "10m"},
        "registry-mirrors": ["a"],
        "insecure-registries": ["harbor.test"],
    }
    assert json.loads(record.read_text()) == ["insecure-registries"]
    assert run_module(second)["changed"] is False


def test_a_record_that_is_not_a_list_of_keys_fails_naming_the_option_and_changes_nothing(daemon_json, tmp_path):
    record = tmp_path / "keys.json"
    record.write_text('{"not": "a list"}')
    before = daemon_json.read_text()
    result = run_module({"path": str(daemon_json), "record": str(record), "config": {"live-restore": True}})
    assert result.get("failed") is True
    assert result["msg"] == f"record: {record} must hold a JSON list of key names"
    assert daemon_json.read_text() == before


@pytest.fixture(scope="module")
def dockerd_26():
    """Debian 13's own dockerd 26 (tests/pythons.sh), which has --validate; this machine's 20.10 has not."""
    made = run(["tests/pythons.sh"], timeout=900)
    assert made.returncode == 0, made.stdout + made.stderr
    return str(LAB_DIR / "pythons" / "bin" / "dockerd-trixie")


def test_validate_with_dockerd_path_refuses_an_unknown_key_and_leaves_the_file(daemon_json, tmp_path, dockerd_26):
    before = daemon_json.read_text()
    result = run_module({"path": str(daemon_json), "config": {"bogus-key": 1}, "dockerd_path": dockerd_26})
    assert result.get("failed") is True
    assert result["msg"].startswith(f"dockerd refused the merged configuration for {daemon_json}; nothing was changed")
    assert "the following directives don't match any configuration option: bogus-key" in result["msg"]
    assert daemon_json.read_text() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["daemon.json"]


def test_validate_with_dockerd_path_accepts_a_good_file_and_says_so(daemon_json, dockerd_26):
    args = {"path": str(daemon_json), "config": {"live-restore": True}, "dockerd_path": dockerd_26}
    result = run_module(args)
    assert result["changed"] is True and result["validated_with"] == "dockerd --validate", result["_output"]
    assert json.loads(daemon_json.read_text())["live-restore"] is True
    unvalidated = run_module({**args, "config": {"bogus-key": 1}, "validate": False})
    assert unvalidated["changed"] is True and unvalidated["validated_with"] == "json"
