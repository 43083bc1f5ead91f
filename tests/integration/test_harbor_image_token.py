"""mooring.ops.harbor_image, and ns_image (which shares its registry client), through bearer-token auth as
Harbor answers: a real distribution registry (the lab's registry image) configured for token auth, with tokens
from tests/token_issuer.py standing in for Harbor's /service/token. The docker engine pushes through the same
token flow. Harbor's own API is not involved.
"""

import os
import secrets
import subprocess
import time
import uuid

import pytest
import requests
from token_issuer import TokenIssuer, pem, server_pair

from conftest import LAB_DIR, run, run_module

REGISTRY = "harbor-token.lab"
ADDRESS = "172.30.0.9"
CONTAINER = "mooring-lab-harbor-token"
PROJECT = "mooring-test"
SOURCE = "mooring/debian:bookworm"
USER = "mooring"
PASSWORD = secrets.token_hex(12)
HOSTS_LINE = f"{ADDRESS} {REGISTRY}  # mooring test_harbor_image_token\n"
CERTS_D = f"/etc/docker/certs.d/{REGISTRY}"
REGISTRY_UID = 900


def _write(path, data, mode=0o644, owner=None):
    path.write_bytes(data)
    path.chmod(mode)
    if owner is not None:
        os.chown(path, owner, owner)


def _hosts(add):
    with open("/etc/hosts") as hosts:
        lines = [line for line in hosts if line != HOSTS_LINE]
    if add:
        lines.append(HOSTS_LINE)
    with open("/etc/hosts", "w") as hosts:
        hosts.writelines(lines)


@pytest.fixture(scope="module")
def issuer(lab, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("token-registry")
    workdir.chmod(0o755)
    ca_cert = (LAB_DIR / "ca" / "ca.crt").read_bytes()
    ca_key = (LAB_DIR / "ca" / "ca.key").read_bytes()
    realm_key, realm_cert = server_pair(ca_cert, ca_key, [], ["127.0.0.1"])
    _write(workdir / "realm.key", pem(key=realm_key), 0o600)
    _write(workdir / "realm.crt", pem(cert=realm_cert))
    with TokenIssuer(
        {USER: PASSWORD},
        issuer="harbor-token-issuer",
        service="harbor-registry",
        tls_cert_file=workdir / "realm.crt",
        tls_key_file=workdir / "realm.key",
    ) as token_issuer:
        config = workdir / "registry"
        (config / "tls").mkdir(parents=True)
        registry_key, registry_cert = server_pair(ca_cert, ca_key, [REGISTRY])
        _write(config / "tls" / "server.crt", pem(cert=registry_cert))
        _write(config / "tls" / "server.key", pem(key=registry_key), 0o400, REGISTRY_UID)
        _write(config / "token-root.crt", pem(cert=token_issuer.signing_cert))
        _write(
            config / "config.yml",
            f"""version: 0.1
storage:
  filesystem: {{rootdirectory: /var/lib/docker-registry}}
  delete: {{enabled: true}}
http:
  addr: :443
  tls: {{certificate: /etc/docker/registry/tls/server.crt, key: /etc/docker/registry/tls/server.key}}
auth:
  token:
    realm: {token_issuer.realm}
    service: harbor-registry
    issuer: harbor-token-issuer
    rootcertbundle: /etc/docker/registry/token-root.crt
""".encode(),
        )
        run(["docker", "rm", "-f", "-v", CONTAINER])  # one that an interrupted run left
        started = run(
            ["docker", "run", "-d", "--name", CONTAINER, "--label", "org.mooring.lab=true",
             "--network", "mooring-lab", "--ip", ADDRESS, "-v", f"{config}:/etc/docker/registry:ro",
             "mooring/lab-registry:bookworm"]
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        _hosts(add=True)
        subprocess.run(["install", "-d", "-m", "0755", CERTS_D], check=True)
        subprocess.run(["install", "-m", "0644", str(LAB_DIR / "ca" / "ca.crt"), f"{CERTS_D}/ca.crt"], check=True)
        try:
            for _attempt in range(60):
                try:
                    answer = requests.get(f"https://{REGISTRY}/v2/", verify=str(LAB_DIR / "ca" / "ca.crt"), timeout=5)
                except requests.ConnectionError:
                    answer = None
                if answer is not None and answer.status_code == 401:
                    break
                time.sleep(0.5)
            challenge = answer.headers.get("WWW-Authenticate", "") if answer is not None else ""
            assert challenge.startswith("Bearer "), challenge or run(["docker", "logs", CONTAINER]).stderr
            yield token_issuer
        finally:
            run(["docker", "rm", "-f", "-v", CONTAINER])
            _hosts(add=False)
            subprocess.run(["rm", "-rf", CERTS_D], check=True)
            tags = run(["docker", "images", f"{REGISTRY}/*/*", "--format", "{{.Repository}}:{{.Tag}}"])
            for tag in tags.stdout.split():
                run(["docker", "image", "rm", tag])


def push(*options, **args):
    params = {
        "registry": REGISTRY,
        "project": PROJECT,
        "username": USER,
        "password": PASSWORD,
        "ca_cert": str(LAB_DIR / "ca" / "ca.crt"),
    }
    params.update(args)
    return run_module("mooring.ops.harbor_image", params, *options)


def registry_digest(issuer, repository, tag):
    """What the registry holds, asked directly with a token fetched by hand (not through the module)."""
    ca = str(LAB_DIR / "ca" / "ca.crt")
    name = f"{PROJECT}/{repository}"
    token = requests.get(
        issuer.realm,
        params={"service": "harbor-registry", "scope": f"repository:{name}:pull"},
        auth=(USER, PASSWORD),
        verify=ca,
        timeout=30,
    ).json()["token"]
    answer = requests.head(
        f"https://{REGISTRY}/v2/{name}/manifests/{tag}",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        verify=ca,
        timeout=30,
    )
    return answer.headers.get("Docker-Content-Digest") if answer.status_code == 200 else None


@pytest.fixture
def repository():
    return f"it-{uuid.uuid4().hex[:10]}"


def test_push_through_bearer_tokens_then_a_second_push_changes_nothing(issuer, repository):
    first = push(source=SOURCE, repository=repository)
    assert first["changed"] is True, first["_output"]
    assert registry_digest(issuer, repository, "bookworm") == first["digest"]
    scopes = [scope for request in issuer.requests if request["user"] == USER for scope in request["scopes"]]
    assert f"repository:{PROJECT}/{repository}:pull" in scopes
    assert any(scope.startswith(f"repository:{PROJECT}/{repository}:") and "push" in scope for scope in scopes)
    asked = len(issuer.requests)
    second = push(source=SOURCE, repository=repository)
    assert second["changed"] is False, second["_output"]
    assert second["digest"] == first["digest"]
    assert len(issuer.requests) > asked


def test_check_mode_answers_from_the_registry_and_pushes_nothing(issuer, repository):
    result = push("--check", source=SOURCE, repository=repository)
    assert result["changed"] is True, result["_output"]
    assert registry_digest(issuer, repository, "bookworm") is None


def test_absent_deletes_the_tag_with_a_delete_token(issuer, repository):
    push(source=SOURCE, repository=repository)
    removed = push(repository=repository, tag="bookworm", state="absent")
    assert removed["changed"] is True, removed["_output"]
    assert registry_digest(issuer, repository, "bookworm") is None
    scopes = [scope for request in issuer.requests for scope in request["scopes"]]
    assert any(scope.startswith(f"repository:{PROJECT}/{repository}:") and "delete" in scope for scope in scopes)


def test_credentials_refused_by_the_token_service_name_the_user_not_the_password(issuer, repository):
    wrong = f"wrong-{uuid.uuid4().hex}"
    result = push(source=SOURCE, repository=repository, password=wrong)
    assert result["failed"] is True
    assert f"rejected the credentials of user {USER}" in result["msg"]
    assert wrong not in result["_output"]


def test_an_anonymous_token_without_rights_asks_for_credentials(issuer, repository):
    result = push("--check", source=SOURCE, repository=repository, username=None, password=None)
    assert result["failed"] is True
    assert f"the registry {REGISTRY} wants credentials" in result["msg"], result["msg"]


def test_ns_image_pulls_through_bearer_tokens_and_checks_tls_against_the_ca_file(issuer, repository, tmp_path):
    """The runtime's pull (mooring.ops.ns_image) shares harbor.py's registry client: the same token flow."""
    pushed = push(source=SOURCE, repository=repository)
    assert pushed["changed"] is True, pushed["_output"]
    args = {
        "root": str(tmp_path / "store"),
        "name": f"{REGISTRY}/{PROJECT}/{repository}:bookworm",
        "username": USER,
        "password": PASSWORD,
        "ca_cert": str(LAB_DIR / "ca" / "ca.crt"),
    }
    asked = len(issuer.requests)
    pulled = run_module("mooring.ops.ns_image", args)
    assert pulled["changed"] is True, pulled["_output"]
    assert pulled["image"]["manifest_digest"] == pushed["digest"]
    local = run(["docker", "image", "inspect", "--format", "{{.Id}}", SOURCE]).stdout.strip()
    assert pulled["image"]["config_digest"] == local
    granted = [request for request in issuer.requests[asked:] if request["user"] == USER]
    assert any(f"repository:{PROJECT}/{repository}:pull" in request["scopes"] for request in granted), granted
    assert PASSWORD not in pulled["_output"]
    assert run_module("mooring.ops.ns_image", {**args, "force_pull": True})["changed"] is False

    refused = run_module("mooring.ops.ns_image", {**args, "root": str(tmp_path / "other"), "password": "wrong"})
    assert refused["failed"] is True
    assert f"rejected the credentials of user {USER}" in refused["msg"], refused["msg"]
