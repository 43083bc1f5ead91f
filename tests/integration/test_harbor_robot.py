"""mooring.ops.harbor_robot against a STAND-IN for Harbor's REST API (tests/harbor_standin.py), not a real
Harbor: there are no Harbor images on this machine. The stand-in follows Harbor's API description."""

import pytest
from harbor_standin import HarborStandIn

from conftest import run_module

ADMIN = ("admin", "Harbor12345-standin")
VIEWER = ("viewer", "viewer-secret")
PUSH = {"project": "platform", "access": ["repository:push", "repository:pull"]}


@pytest.fixture
def harbor():
    with HarborStandIn({ADMIN[0]: (ADMIN[1], True), VIEWER[0]: (VIEWER[1], False)}) as standin:
        run_module(
            "mooring.ops.harbor_project",
            {"harbor_url": standin.url, "name": "platform", "username": ADMIN[0], "password": ADMIN[1]},
        )
        yield standin


def robot(harbor, *options, user=ADMIN, **args):
    params = {"harbor_url": harbor.url, "name": "ci-push", "project": "platform", "username": user[0]}
    params["password"] = user[1]
    params.update(args)
    return run_module("mooring.ops.harbor_robot", params, *options)


def stored(harbor, name="robot$platform+ci-push"):
    return next((r for r in harbor.robots.values() if r["name"] == name), None)


def test_create_returns_the_secret_once_and_a_second_run_changes_nothing(harbor):
    first = robot(harbor, permissions=[PUSH])
    assert first["changed"] is True, first["_output"]
    assert first["secret"] == stored(harbor)["secret"]
    assert first["robot"]["name"] == "robot$platform+ci-push"
    assert first["robot"]["permissions"] == [{"project": "platform", "access": ["repository:pull", "repository:push"]}]
    second = robot(harbor, permissions=[PUSH])
    assert second["changed"] is False
    assert "secret" not in second
    assert [request for request in harbor.requests if request[0] in ("PUT", "PATCH")] == []


def test_the_default_permission_is_pull_from_its_project(harbor):
    created = robot(harbor)
    assert created["robot"]["permissions"] == [{"project": "platform", "access": ["repository:pull"]}]


def test_changed_permissions_and_state_are_updated_in_place_with_a_diff(harbor):
    first = robot(harbor)
    updated = robot(harbor, "--diff", permissions=[PUSH], disable=True, description="CI")
    assert updated["changed"] is True
    assert updated["robot"]["id"] == first["robot"]["id"]
    assert stored(harbor)["disable"] is True
    assert updated["diff"]["before"]["disable"] is False
    assert updated["diff"]["after"]["disable"] is True
    assert updated["diff"]["after"]["permissions"][0]["access"] == ["repository:pull", "repository:push"]
    assert "secret" not in updated


def test_check_mode_reports_the_creation_and_writes_nothing(harbor):
    result = robot(harbor, "--check", permissions=[PUSH])
    assert result["changed"] is True
    assert harbor.robots == {}


def test_refresh_secret_returns_a_new_secret(harbor):
    first = robot(harbor)
    refreshed = robot(harbor, refresh_secret=True)
    assert refreshed["changed"] is True
    assert refreshed["secret"] == stored(harbor)["secret"] != first["secret"]


def test_a_system_robot_spans_projects(harbor):
    created = robot(
        harbor,
        name="docker-hosts",
        level="system",
        project=None,
        permissions=[{"project": "*", "access": ["repository:pull"]}],
    )
    assert created["changed"] is True, created["_output"]
    assert stored(harbor, "robot$docker-hosts")["level"] == "system"


def test_absent_deletes_and_a_second_absent_changes_nothing(harbor):
    robot(harbor)
    removed = robot(harbor, state="absent")
    assert removed["changed"] is True
    assert harbor.robots == {}
    assert robot(harbor, state="absent")["changed"] is False


def test_a_user_without_rights_is_named(harbor):
    result = robot(harbor, user=VIEWER)
    assert result["failed"] is True
    assert "does not allow user viewer" in result["msg"]
    assert harbor.robots == {}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"name": "CI Push"}, "name:"),
        ({"project": None}, "project:"),
        ({"permissions": [{"project": "platform", "access": ["push"]}]}, "resource:action"),
        ({"permissions": [{"project": "other", "access": ["repository:pull"]}]}, "project platform only"),
        ({"duration": 0}, "duration:"),
        ({"harbor_url": "harbor.example.com"}, "harbor_url:"),
    ],
)
def test_bad_input_fails_naming_the_option_and_writes_nothing(harbor, args, named):
    result = robot(harbor, **args)
    assert result["failed"] is True
    assert named in result["msg"]
    assert harbor.robots == {}
