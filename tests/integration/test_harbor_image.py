"""mooring.ops.harbor_image against the lab's registry harbor.lab: the distribution registry (the registry v2
protocol Harbor serves for push and pull) with TLS by the lab CA and htpasswd auth. Harbor's own project API is
not involved: a 403/404 from a missing Harbor project cannot be produced by this registry. The bearer-token
path is in test_harbor_image_token.py."""

import json
import os
import socket
import uuid

import pytest
import requests

from conftest import LAB_DIR, changes, failures, run, run_module

REGISTRY = "harbor.lab"
PROJECT = "mooring-test"
SOURCE = "mooring/debian:bookworm"
OTHER_SOURCE = "mooring/debian-python:bookworm"


def password():
    return (LAB_DIR / "registry-password").read_text().strip()


def push(*options, **args):
    params = {
        "registry": REGISTRY,
        "project": PROJECT,
        "username": "mooring",
        "password": password(),
        "ca_cert": str(LAB_DIR / "ca" / "ca.crt"),
    }
    params.update(args)
    return run_module("mooring.ops.harbor_image", params, *options)


def registry_digest(repository, tag):
    """What the registry itself says the tag holds, asked directly (not through the module): None for a tag it
    does not have (404); any other answer (401, 5xx) is an error, never taken for an absent tag."""
    answer = requests.head(
        f"https://{REGISTRY}/v2/{PROJECT}/{repository}/manifests/{tag}",
        auth=("mooring", password()),
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        verify=str(LAB_DIR / "ca" / "ca.crt"),
        timeout=30,
    )
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, f"the registry answered {answer.status_code} for {repository}:{tag}"
    return answer.headers["Docker-Content-Digest"]


@pytest.fixture
def repository(lab):
    """A fresh repository name; the local tags that the module made for it are removed afterwards."""
    name = f"it-{uuid.uuid4().hex[:10]}"
    yield name
    tags = run(["docker", "images", f"{REGISTRY}/{PROJECT}/{name}", "--format", "{{.Repository}}:{{.Tag}}"])
    for tag in tags.stdout.split():
        run(["docker", "image", "rm", tag])


def test_first_push_changes_and_returns_the_digest_second_push_changes_nothing(repository):
    first = push(source=SOURCE, repository=repository)
    assert first["changed"] is True, first["_output"]
    assert first["image"] == f"{REGISTRY}/{PROJECT}/{repository}:bookworm"
    assert first["digest"].startswith("sha256:")
    assert registry_digest(repository, "bookworm") == first["digest"]
    second = push(source=SOURCE, repository=repository)
    assert second["changed"] is False
    assert second["digest"] == first["digest"]


def test_check_mode_on_a_missing_tag_reports_a_change_and_pushes_nothing(repository):
    result = push("--check", source=SOURCE, repository=repository)
    assert result["changed"] is True
    assert registry_digest(repository, "bookworm") is None


def test_another_image_under_the_same_tag_is_pushed(repository):
    first = push(source=SOURCE, repository=repository, tag="v1")
    second = push(source=OTHER_SOURCE, repository=repository, tag="v1")
    assert second["changed"] is True
    assert second["diff"] == {"before": {"digest": first["digest"]}, "after": {"digest": second["digest"]}}
    assert registry_digest(repository, "v1") == second["digest"] != first["digest"]


def test_a_lab_node_pulls_the_pushed_image(repository):
    pushed = push(source=SOURCE, repository=repository)
    pulled = run(["docker", "exec", "mooring-lab-node1", "docker", "pull", pushed["image"]], timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    assert pushed["digest"] in pulled.stdout


def test_absent_deletes_the_tag_and_a_second_absent_changes_nothing(repository):
    push(source=SOURCE, repository=repository)
    check = push("--check", repository=repository, tag="bookworm", state="absent")
    assert check["changed"] is True
    assert registry_digest(repository, "bookworm") is not None
    removed = push(repository=repository, tag="bookworm", state="absent")
    assert removed["changed"] is True
    assert registry_digest(repository, "bookworm") is None
    again = push(repository=repository, tag="bookworm", state="absent")
    assert again["changed"] is False


def test_a_missing_local_image_is_named(repository):
    result = push(source="mooring/not-built:1.0", repository=repository)
    assert result["failed"] is True
    assert "the image mooring/not-built:1.0 is not present locally" in result["msg"]


def test_an_unreachable_registry_is_named_with_its_port(repository):
    result = push(source=SOURCE, repository=repository, registry=f"{REGISTRY}:5999")
    assert result["failed"] is True
    assert f"cannot reach the registry {REGISTRY}:5999" in result["msg"]


def test_an_untrusted_certificate_names_the_ca_cert_option(repository):
    result = push(source=SOURCE, repository=repository, ca_cert=None)
    assert result["failed"] is True
    assert f"the TLS certificate of {REGISTRY} is not trusted" in result["msg"]
    assert "ca_cert" in result["msg"]


def test_bad_credentials_name_the_user_and_never_the_password(repository):
    wrong = f"wrong-{uuid.uuid4().hex}"
    result = push(source=SOURCE, repository=repository, password=wrong)
    assert result["failed"] is True
    assert "rejected the credentials of user mooring" in result["msg"]
    assert wrong not in result["_output"]


def test_module_defaults_for_the_harbor_group_and_the_environment_supply_url_and_credentials(repository, tmp_path):
    """One harbor_url/ca_cert in module_defaults for group/mooring.ops.harbor, the credentials from HARBOR_USERNAME
    and HARBOR_PASSWORD (an AWX credential's way): the task names neither, the push works and is idempotent, and
    the password is in no output."""
    playbook = tmp_path / "group.yml"
    task = {"mooring.ops.harbor_image": {"source": SOURCE, "project": PROJECT, "repository": repository}}
    play = {
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "module_defaults": {
            "group/mooring.ops.harbor": {"harbor_url": f"https://{REGISTRY}", "ca_cert": str(LAB_DIR / "ca" / "ca.crt")}
        },
        "tasks": [{"name": "Push by the group's defaults", **task, "register": "pushed"}],
    }
    playbook.write_text(json.dumps([play]))
    env = dict(os.environ, HARBOR_USERNAME="mooring", HARBOR_PASSWORD=password())

    def converge():
        return run(["ansible-playbook", "-i", "localhost,", "-c", "local", "-v", str(playbook)], timeout=600, env=env)

    first = converge()
    assert first.returncode == 0, failures(first)
    assert changes(first)["localhost"] == 1
    assert registry_digest(repository, "bookworm") is not None
    second = converge()
    assert second.returncode == 0, failures(second)
    assert changes(second)["localhost"] == 0
    assert password() not in first.stdout + first.stderr + second.stdout + second.stderr

    env["HARBOR_PASSWORD"] = uuid.uuid4().hex  # a wrong one
    wrong = converge()
    assert wrong.returncode != 0
    assert "the registry harbor.lab rejected the credentials of user mooring" in wrong.stdout, failures(wrong)


def test_a_registry_that_is_neither_a_host_nor_a_url_fails_naming_the_option(repository):
    result = push(source=SOURCE, repository=repository, registry="harbor.lab/mooring")
    assert result.get("failed") is True
    assert result["msg"].startswith("registry: expected a registry host[:port] or https://host[:port]"), result["msg"]


def test_a_source_by_image_id_needs_a_repository_and_pushes_as_latest(repository):
    image_id = run(["docker", "image", "inspect", "--format", "{{.Id}}", SOURCE]).stdout.strip()
    assert image_id.startswith("sha256:"), image_id
    unnamed = push(source=image_id)
    assert unnamed.get("failed") is True
    assert unnamed["msg"] == f"repository: source {image_id} is an image ID, which names no repository; set one"
    for source in (image_id, image_id.removeprefix("sha256:")[:12]):
        pushed = push(source=source, repository=repository)
        assert pushed.get("failed") is not True, pushed["_output"]
        assert pushed["image"] == f"{REGISTRY}/{PROJECT}/{repository}:latest"
    assert registry_digest(repository, "latest") == pushed["digest"]


def test_the_repository_defaults_to_the_last_part_of_the_source_name(repository):
    source = f"mooring/{repository}:probe"
    assert run(["docker", "tag", SOURCE, source]).returncode == 0
    try:
        pushed = push(source=source)
        assert pushed.get("failed") is not True, pushed["_output"]
        assert pushed["image"] == f"{REGISTRY}/{PROJECT}/{repository}:probe"
        assert registry_digest(repository, "probe") == pushed["digest"]
    finally:
        run(["docker", "image", "rm", source])


def test_validate_certs_false_pushes_without_the_ca(repository):
    """The module's own registry calls skip verification; the engine's push trusts the CA through certs.d."""
    pushed = push(source=SOURCE, repository=repository, ca_cert=None, validate_certs=False)
    assert pushed.get("failed") is not True, pushed["_output"]
    assert registry_digest(repository, "bookworm") == pushed["digest"]


def test_a_registry_that_never_answers_fails_after_timeout(repository):
    """A listener that accepts and then says nothing (a hung registry): the module gives up after `timeout`
    seconds and says so, instead of hanging the play."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        result = push(source=SOURCE, repository=repository, registry=f"127.0.0.1:{port}", timeout=3)
    assert result.get("failed") is True
    assert result["msg"] == f"the registry 127.0.0.1:{port} did not answer within 3s", result["msg"]
