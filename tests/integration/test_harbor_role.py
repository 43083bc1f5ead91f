"""The harbor role against a STAND-IN offline installer, not Harbor's: there are no Harbor images on this machine.

What is real here: the role itself on this host (unpacking, rendering harbor.yml from the installer's template,
certificates, `docker load` of the installer's image archive into the real engine, the decision to run
./prepare and ./install.sh, the health wait over HTTP). What stands in: the installer's content. Its prepare
checks harbor.yml the way Harbor's does (required keys, certificate files, the template's _version) and that
its image was loaded; its install.sh records its arguments; the health endpoint is tests/harbor_standin.py.
Harbor itself never runs in these tests.
"""

import gzip
import io
import json
import os
import secrets
import stat
import subprocess
import tarfile
import textwrap

import pytest
import yaml
from harbor_standin import HarborStandIn

from conftest import REPO_DIR

ADMIN_PASSWORD = "Adm1n-" + secrets.token_hex(8)
DATABASE_PASSWORD = "db-" + secrets.token_hex(8)
PREPARE_IMAGE = "mooring-test/harbor-prepare:standin"

TEMPLATE = {
    "hostname": "reg.mydomain.com",
    "http": {"port": 80},
    "https": {"port": 443, "certificate": "/your/certificate/path", "private_key": "/your/private/key/path"},
    "harbor_admin_password": "Harbor12345",
    "database": {"password": "root123", "max_idle_conns": 100, "max_open_conns": 900},
    "data_volume": "/data",
    "jobservice": {"max_job_workers": 10},
    "log": {"level": "info", "local": {"rotate_count": 50, "rotate_size": "200M", "location": "/var/log/harbor"}},
    "_version": "2.11.0",
}

PREPARE = textwrap.dedent(f"""\
    #!/usr/bin/env python3
    import os, subprocess, sys, yaml
    config = yaml.safe_load(open("harbor.yml"))
    template = yaml.safe_load(open("harbor.yml.tmpl"))
    missing = [key for key in ("hostname", "http", "harbor_admin_password", "database", "data_volume", "_version")
               if key not in config]
    if missing or config["_version"] != template["_version"]:
        sys.exit(f"harbor.yml: missing {{missing}} or a _version other than the template's")
    if "https" in config:
        for key in ("certificate", "private_key"):
            if not os.access(config["https"][key], os.R_OK):
                sys.exit(f"https.{{key}}: cannot read {{config['https'][key]}}")
    if subprocess.run(["docker", "image", "inspect", "{PREPARE_IMAGE}"], capture_output=True).returncode:
        sys.exit("the prepare image is not loaded")
    open(os.environ["STANDIN_LOG"], "a").write("prepare\\n")
    """)

INSTALL = textwrap.dedent("""\
    #!/usr/bin/env bash
    set -eu
    if [ -e "$STANDIN_LOG.fail-install" ]; then echo "stand-in install.sh failing on purpose" >&2; exit 1; fi
    echo "install $*" >> "$STANDIN_LOG"
    """)


def _add(archive, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    archive.addfile(info, fileobj=io.BytesIO(data))


@pytest.fixture(scope="module")
def prepare_image_archive(tmp_path_factory):
    """A tiny real image, saved the way the installer ships its images; removed from the engine afterwards."""
    workdir = tmp_path_factory.mktemp("prepare-image")
    (workdir / "marker").write_text("stand-in\n")
    with tarfile.open(workdir / "rootfs.tar", "w") as rootfs:
        rootfs.add(workdir / "marker", arcname="marker")
    subprocess.run(["docker", "import", str(workdir / "rootfs.tar"), PREPARE_IMAGE], check=True, capture_output=True)
    saved = subprocess.run(["docker", "save", PREPARE_IMAGE], check=True, capture_output=True).stdout
    subprocess.run(["docker", "rmi", PREPARE_IMAGE], check=True, capture_output=True)
    yield gzip.compress(saved)
    subprocess.run(["docker", "rmi", "-f", PREPARE_IMAGE], capture_output=True, check=False)


@pytest.fixture
def site(tmp_path, prepare_image_archive):
    installer = tmp_path / "harbor-offline-installer-v2.11.0.tgz"
    with tarfile.open(installer, "w:gz") as archive:
        _add(archive, "harbor/harbor.yml.tmpl", yaml.safe_dump(TEMPLATE).encode())
        _add(archive, "harbor/prepare", PREPARE.encode(), 0o755)
        _add(archive, "harbor/install.sh", INSTALL.encode(), 0o755)
        _add(archive, "harbor/harbor.v2.11.0.tar.gz", prepare_image_archive)
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=harbor.example.com",
         "-keyout", str(certs / "server.key"), "-out", str(certs / "server.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    with HarborStandIn({}) as health:
        yield {
            "dir": tmp_path,
            "log": tmp_path / "standin.log",
            "vars": {
                "harbor_installer_src": str(installer),
                "harbor_install_dir": str(tmp_path / "opt-harbor"),
                "harbor_hostname": "harbor.example.com",
                "harbor_tls_certificate": str(certs / "server.crt"),
                "harbor_tls_private_key": str(certs / "server.key"),
                "harbor_admin_password": ADMIN_PASSWORD,
                "harbor_database_password": DATABASE_PASSWORD,
                "harbor_data_volume": str(tmp_path / "data"),
                "harbor_install_options": ["--with-trivy"],
                "harbor_config_overrides": {"jobservice": {"max_job_workers": 4}},
                "harbor_health_url": f"{health.url}/api/v2.0/health",
                "harbor_health_timeout": 10,
            },
        }
    subprocess.run(["docker", "rmi", "-f", PREPARE_IMAGE], capture_output=True, check=False)


def converge(site, *options, **overrides):
    playbook = site["dir"] / "harbor.yml"
    playbook.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
        "  vars: {ansible_python_interpreter: '{{ ansible_playbook_python }}'}\n  roles: [mooring.ops.harbor]\n"
    )
    variables = site["dir"] / "vars.json"
    variables.write_text(json.dumps({**site["vars"], **overrides}))
    process = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", str(playbook), "-e", f"@{variables}", *options],
        capture_output=True, text=True, cwd=REPO_DIR, timeout=600, check=False,
        env=dict(os.environ, STANDIN_LOG=str(site["log"])),
    )  # fmt: skip
    output = process.stdout + process.stderr
    recap = output[output.rfind("PLAY RECAP") :]
    return process.returncode, recap, output


def calls(site):
    return site["log"].read_text().splitlines() if site["log"].exists() else []


def installed_config(site):
    (directory,) = (site["dir"] / "opt-harbor").glob("installer-*")
    path = directory / "harbor.yml"
    return yaml.safe_load(path.read_text()), stat.S_IMODE(path.stat().st_mode)


def test_first_run_installs_once_and_a_second_run_changes_nothing(site):
    code, recap, output = converge(site)
    assert code == 0, output
    assert calls(site) == ["prepare", "install --with-trivy"]
    code, recap, output = converge(site)
    assert code == 0, output
    assert "changed=0" in recap, output
    assert calls(site) == ["prepare", "install --with-trivy"]


def test_harbor_yml_keeps_the_template_and_sets_the_site(site):
    assert converge(site)[0] == 0
    config, mode = installed_config(site)
    assert mode == 0o600
    install_dir = site["vars"]["harbor_install_dir"]
    assert config["hostname"] == "harbor.example.com"
    assert config["https"] == {
        "port": 443,
        "certificate": f"{install_dir}/cert/server.crt",
        "private_key": f"{install_dir}/cert/server.key",
    }
    assert config["harbor_admin_password"] == ADMIN_PASSWORD
    assert config["database"] == {"password": DATABASE_PASSWORD, "max_idle_conns": 100, "max_open_conns": 900}
    assert config["jobservice"]["max_job_workers"] == 4
    assert config["log"]["local"]["rotate_size"] == "200M"
    assert config["_version"] == TEMPLATE["_version"]
    key = site["dir"] / "opt-harbor" / "cert" / "server.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_changed_setting_runs_prepare_and_install_again(site):
    assert converge(site)[0] == 0
    code, _recap, output = converge(site, harbor_http_port=8080)
    assert code == 0, output
    assert calls(site) == ["prepare", "install --with-trivy"] * 2
    assert installed_config(site)[0]["http"]["port"] == 8080


def test_without_https_the_section_is_left_out(site):
    code, _recap, output = converge(site, harbor_https_enabled=False, harbor_tls_certificate="")
    assert code == 0, output
    assert "https" not in installed_config(site)[0]


def test_an_interrupted_installation_is_finished_on_the_next_run(site):
    failing = site["dir"] / "standin.log.fail-install"
    failing.touch()
    code, _recap, output = converge(site)
    assert code != 0
    assert "failing on purpose" in output
    failing.unlink()
    code, _recap, output = converge(site)
    assert code == 0, output
    assert calls(site) == ["prepare", "prepare", "install --with-trivy"]


def test_check_mode_on_a_new_host_writes_nothing(site):
    code, recap, output = converge(site, "--check", "--diff")
    assert code == 0, output
    assert "changed=0" not in recap
    assert not (site["dir"] / "opt-harbor").exists()
    assert calls(site) == []


def test_passwords_and_the_key_stay_out_of_the_output(site):
    code, _recap, output = converge(site, "-v", "--diff")
    assert code == 0, output
    code, _recap, second = converge(site, "-v", "--diff", harbor_http_port=8081)
    assert code == 0, second
    for secret in (ADMIN_PASSWORD, DATABASE_PASSWORD, "PRIVATE KEY"):
        assert secret not in output + second


LOOPBACK = "must be the DNS name or address that clients use, not localhost or a loopback address, got"


@pytest.mark.parametrize(
    ("override", "named", "message"),
    [
        ({"harbor_hostname": "localhost"}, "harbor_hostname", f'harbor_hostname {LOOPBACK} "localhost"'),
        ({"harbor_hostname": "127.0.0.1"}, "harbor_hostname", f'harbor_hostname {LOOPBACK} "127.0.0.1"'),
        (
            {"harbor_hostname": "bad_name!"},
            "harbor_hostname",
            "harbor_hostname must be a DNS name or an IPv4 address (letters, digits, hyphens and dots), got "
            '"bad_name!"',
        ),
        (
            {"harbor_admin_password": "harbor12345"},
            "harbor_admin_password",
            "harbor_admin_password must have 8 to 128 characters with an upper-case letter, a lower-case letter and "
            "a digit (Harbor refuses others)",
        ),
        (
            {"harbor_installer_src": "harbor-offline-installer-v2.11.0.zip"},
            "harbor_installer_src",
            "harbor_installer_src must be the offline installer (harbor-offline-installer-vX.Y.Z.tgz), as a URL or "
            'a path, got "harbor-offline-installer-v2.11.0.zip"',
        ),
        (
            {"harbor_tls_private_key": ""},
            "harbor_tls_private_key",
            "harbor_tls_certificate and harbor_tls_private_key are required while harbor_https_enabled",
        ),
        ({"harbor_https_port": 80}, "harbor_https_port", "harbor_http_port and harbor_https_port must differ"),
        (
            {"harbor_http_port": "eighty"},
            "harbor_http_port",
            "argument 'harbor_http_port' is of type str and we were unable to convert to int",
        ),
        (
            {"harbor_database_password": None},
            "harbor_database_password",
            "harbor_database_password must not be empty",
        ),
    ],
)
def test_bad_input_fails_naming_the_parameter_and_leaves_the_host_alone(site, override, named, message):
    """The specific message, not just the name: Ansible prints every option name on any argument-spec failure."""
    variables = {key: value for key, value in override.items() if value is not None}
    if None in override.values():
        site["vars"].pop(named)
    code, _recap, output = converge(site, **variables)
    assert code != 0
    assert message in " ".join(output.replace("''", "'").split()), output[-3000:]
    assert not (site["dir"] / "opt-harbor").exists()
    assert ADMIN_PASSWORD not in output
