"""mooring.ops.docker_daemon_config against real files on this machine, run through Ansible itself."""

import json

import pytest

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
