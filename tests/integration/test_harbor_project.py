"""mooring.ops.harbor_project against a STAND-IN for Harbor's REST API (tests/harbor_standin.py), not a real
Harbor: there are no Harbor images on this machine. The stand-in follows Harbor's API description."""

import pytest
from harbor_standin import HarborStandIn

from conftest import run_module

ADMIN = ("admin", "Harbor12345-standin")
VIEWER = ("viewer", "viewer-secret")


@pytest.fixture
def harbor():
    with HarborStandIn({ADMIN[0]: (ADMIN[1], True), VIEWER[0]: (VIEWER[1], False)}) as standin:
        yield standin


def project(harbor, *options, user=ADMIN, **args):
    params = {"harbor_url": harbor.url, "name": "platform", "username": user[0], "password": user[1]}
    params.update(args)
    return run_module("mooring.ops.harbor_project", params, *options)


def writes(harbor):
    return [request for request in harbor.requests if request[0] in ("POST", "PUT", "DELETE")]


def test_create_then_a_second_run_changes_nothing(harbor):
    first = project(harbor, public=False, storage_limit=1024**3)
    assert first["changed"] is True, first["_output"]
    assert harbor.projects["platform"]["metadata"] == {"public": "false"}
    assert first["project"]["storage_limit"] == 1024**3
    written = len(writes(harbor))
    second = project(harbor, public=False, storage_limit=1024**3)
    assert second["changed"] is False
    assert len(writes(harbor)) == written


def test_visibility_and_quota_are_updated_in_place(harbor):
    project(harbor, public=False, storage_limit=1024**3)
    updated = project(harbor, "--diff", public=True, storage_limit=-1)
    assert updated["changed"] is True
    assert harbor.projects["platform"]["metadata"]["public"] == "true"
    assert updated["diff"]["before"]["public"] is False
    assert updated["diff"]["after"] == {"exists": True, "public": True, "storage_limit": -1}
    assert updated["project"]["storage_limit"] == -1


def test_check_mode_reports_the_creation_and_writes_nothing(harbor):
    result = project(harbor, "--check", public=True)
    assert result["changed"] is True
    assert harbor.projects == {}
    assert writes(harbor) == []


def test_absent_deletes_and_a_second_absent_changes_nothing(harbor):
    project(harbor)
    assert project(harbor, state="absent")["changed"] is True
    assert "platform" not in harbor.projects
    assert project(harbor, state="absent")["changed"] is False


def test_a_project_with_repositories_is_not_deleted(harbor):
    project(harbor)
    harbor.projects["platform"]["repo_count"] = 2
    result = project(harbor, state="absent")
    assert result["failed"] is True
    assert "still holds repositories" in result["msg"]
    assert "platform" in harbor.projects


def test_bad_credentials_name_the_user_and_never_the_password(harbor):
    result = project(harbor, user=("admin", "not-the-password-4711"))
    assert result["failed"] is True
    assert "rejected the credentials of user admin" in result["msg"]
    assert "not-the-password-4711" not in result["_output"]


def test_a_user_without_rights_gets_a_clear_refusal(harbor):
    result = project(harbor, user=VIEWER)
    assert result["failed"] is True
    assert "does not allow user viewer" in result["msg"]
    assert harbor.projects == {}


def test_a_bad_project_name_fails_before_any_request(harbor):
    result = project(harbor, name="Platform Images")
    assert result["failed"] is True
    assert result["msg"].startswith("name: expected a Harbor project name")
    assert harbor.requests == []
