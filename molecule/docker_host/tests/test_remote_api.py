"""The remote API the course notes open by editing docker.service, done safely: docker_host_listen with mutual
TLS. From this machine, a client with a certificate from the site's CA gets `docker info` over tcp; one without
a certificate, with one from another CA, or speaking plain http is refused. Plain tcp is refused unless allowed,
and allowed only with a warning. Taking the listener out leaves the unit and daemon.json as before.
Runs after test_managed_keys, and leaves the host converged as it found it."""

import datetime
import ipaddress
import json
import os
import socket
import subprocess

import pytest
import testinfra.utils.ansible_runner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import HOST_NAME, INVENTORY, extra_vars, run_converge

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("all")

PORT = 2376
DROP_IN = "/etc/systemd/system/docker.service.d/20-mooring-listen.conf"
LISTEN_KEYS = ("hosts", "tls", "tlsverify", "tlscacert", "tlscert", "tlskey")


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def make_ca(common_name):
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .sign(key, hashes.SHA384())
    )
    return key, certificate


def make_client(directory, ca_key, ca_certificate):
    """A client certificate signed by the CA, written as docker's --tlscert/--tlskey files (key 0600)."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("ops"))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    directory.mkdir(mode=0o700)
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").touch(mode=0o600)
    (directory / "key.pem").write_text(_pem(key))
    return directory


@pytest.fixture(scope="module")
def address():
    inspected = subprocess.run(
        ["docker", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", HOST_NAME],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return str(ipaddress.ip_address(inspected.stdout.split()[0]))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site's CA (its key only in a 0600 vars file, never on a command line) and two clients."""
    directory = tmp_path_factory.mktemp("remote-api")
    ca_key, ca_certificate = make_ca("mooring molecule CA")
    ca_pem = ca_certificate.public_bytes(serialization.Encoding.PEM).decode()
    (directory / "ca.pem").write_text(ca_pem)
    rogue_key, rogue_certificate = make_ca("another CA")
    variables = directory / "listen.json"
    variables.touch(mode=0o600)
    variables.write_text(
        json.dumps(
            {
                "docker_host_listen": [f"tcp://0.0.0.0:{PORT}"],
                "docker_host_tls_ca_cert": ca_pem,
                "docker_host_tls_ca_key": _pem(ca_key),
            }
        )
    )
    return {
        "dir": directory,
        "vars": variables,
        "ca_key": _pem(ca_key),
        "client": make_client(directory / "client", ca_key, ca_certificate),
        "rogue": make_client(directory / "rogue", rogue_key, rogue_certificate),
    }


def remote_docker(address, *options):
    return subprocess.run(
        ["docker", "-H", f"tcp://{address}:{PORT}", *options, "info", "--format", "{{.Name}}"],
        capture_output=True, text=True, timeout=60, check=False,
        env=dict(os.environ, DOCKER_CONFIG="/nonexistent"),
    )  # fmt: skip


def tls(site, client=None):
    options = ["--tlsverify", "--tlscacert", str(site["dir"] / "ca.pem")]
    if client:
        options += ["--tlscert", str(site[client] / "cert.pem"), "--tlskey", str(site[client] / "key.pem")]
    return options


def recap_changed(process):
    recap = process.stdout[process.stdout.rfind("PLAY RECAP") :]
    return int(recap.split("changed=")[1].split()[0])


def test_plain_tcp_is_refused_unless_allowed_and_then_warned_about(host, snapshot):
    before = snapshot()
    refused = run_converge(*extra_vars(docker_host_listen=["tcp://0.0.0.0:2375"]))
    assert refused.returncode != 0
    assert "docker_host_listen: tcp://0.0.0.0:2375 needs mutual TLS: set docker_host_tls_ca_cert" in " ".join(
        refused.stdout.split()
    ), refused.stdout[-3000:]
    assert snapshot() == before
    assert not host.file(DROP_IN).exists

    allowed = run_converge("--check", *extra_vars(docker_host_listen=["tcp://0.0.0.0:2375"],
                                                  docker_host_listen_plain_tcp=True))  # fmt: skip
    assert allowed.returncode == 0, allowed.stdout[-3000:]
    warning = " ".join((allowed.stdout + allowed.stderr).split())
    assert "without tlsverify: anyone who reaches the port controls the engine and is root on this host" in warning
    assert snapshot() == before

    colliding = run_converge(*extra_vars(docker_host_daemon_options={"hosts": ["tcp://0.0.0.0:2375"]}))
    assert colliding.returncode != 0
    assert "docker_host_daemon_options: hosts collides with the -H fd:// of the engine unit" in " ".join(
        colliding.stdout.split()
    ), colliding.stdout[-3000:]
    assert snapshot() == before


def test_mutual_tls_lets_the_sites_clients_in_and_no_one_else(host, site, address):
    converged = run_converge("-e", f"@{site['vars']}")
    assert converged.returncode == 0, converged.stdout[-3000:]
    output = converged.stdout + converged.stderr
    assert "PRIVATE KEY" not in output and site["ca_key"].splitlines()[1] not in output

    assert host.file(DROP_IN).exists
    assert "fd://" not in host.file(DROP_IN).content_string.split("ExecStart=")[-1]
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["hosts"] == ["fd://", f"tcp://0.0.0.0:{PORT}"]
    assert config["tlsverify"] is True
    key = host.file(config["tlskey"])
    assert (key.mode, key.user) == (0o600, "root")
    assert host.run("docker info").rc == 0, "the local socket must keep working"

    allowed = remote_docker(address, *tls(site, "client"))
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == host.check_output("hostname")
    for options, who in ((tls(site), "no client certificate"), (tls(site, "rogue"), "another CA's certificate"),
                         ([], "plain http")):  # fmt: skip
        refused = remote_docker(address, *options)
        # docker info exits 0 on some server errors: what matters is that the engine told it nothing.
        assert refused.stdout.strip() == "", f"{who} got in: {refused.stdout}"
        assert refused.stderr.strip(), who

    again = run_converge("-e", f"@{site['vars']}")
    assert again.returncode == 0, again.stdout[-3000:]
    assert recap_changed(again) == 0, again.stdout[-3000:]
    assert remote_docker(address, *tls(site, "client")).returncode == 0


def test_taking_the_listener_out_closes_it_and_leaves_the_unit_as_shipped(host, site, address):
    removed = run_converge()
    assert removed.returncode == 0, removed.stdout[-3000:]
    assert not host.file(DROP_IN).exists
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert not set(LISTEN_KEYS) & set(config), config
    assert host.run("docker info").rc == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, PORT), timeout=10).close()
    assert not host.file("/etc/docker/tls/server-key.pem").exists, "a key no listener uses stays behind"
    again = run_converge()
    assert again.returncode == 0 and recap_changed(again) == 0, again.stdout[-3000:]
