"""inventory/example as a site copies it: the inventory parses, site.yml passes --syntax-check with it, every
inventory variable renders for every host once the vault stub is filled in and encrypted, and every role's
argument spec accepts what the inventory gives the hosts of its play. With the stub's placeholders left in,
site.yml refuses before any change. No lab needed: nothing connects to the example's hosts."""

import json
import os
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO_DIR

EXAMPLE = REPO_DIR / "inventory" / "example"
SERVICE_GROUPS = (
    "nginx",
    "nginx_balancer",
    "tomcat",
    "mysql_primary",
    "mysql_replica",
    "redis_cluster",
    "rabbitmq",
    "elasticsearch",
    "kibana",
)
# The site plays: (play file, hosts pattern, roles) as playbooks/*.yml say.
SITE_PLAYS = [
    ("docker_hosts.yml", "docker_hosts", ["docker_host"]),
    ("docker_swarm.yml", "docker_hosts", ["docker_swarm"]),
    ("registry.yml", "harbor", ["harbor"]),
    ("images.yml", "image_factory", ["image_factory"]),
    ("tomcat.yml", "tomcat", ["tomcat"]),
    ("nginx.yml", "nginx", ["nginx"]),
    ("nginx_balancer.yml", "nginx_balancer", ["nginx_balancer"]),
    ("mysql_replication.yml", "mysql_primary:mysql_replica", ["mysql"]),
    ("redis_cluster.yml", "redis_cluster", ["redis_cluster"]),
    ("rabbitmq.yml", "rabbitmq", ["rabbitmq"]),
    ("elk.yml", "elasticsearch", ["elasticsearch"]),
    ("elk.yml", "kibana", ["kibana"]),
]


def ansible(command, inventory, *args, env=None, cwd=None):
    return subprocess.run(
        [command, "-i", str(inventory), *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO_DIR,
        env=env,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def listed():
    process = ansible("ansible-inventory", EXAMPLE, "--list")
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout)


def hosts_of(listed, group):
    entry = listed.get(group, {})
    found = set(entry.get("hosts", []))
    for child in entry.get("children", []):
        found |= hosts_of(listed, child)
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A copy of the example as a site makes it: every placeholder replaced, the vault file encrypted."""
    site = tmp_path_factory.mktemp("site") / "mysite"
    shutil.copytree(EXAMPLE, site)
    vault = site / "group_vars" / "all" / "vault.yml"
    secrets = yaml.safe_load(vault.read_text())
    filled = {name: f"{name.replace('_', '')}0Secret" for name in secrets}
    filled["vault_harbor_installer_checksum"] = "sha256:" + "ab" * 32
    vault.write_text(yaml.safe_dump(filled))
    password_file = site.parent / "vault-password"
    password_file.write_text("mooring-example\n")
    password_file.chmod(0o600)
    encrypted = subprocess.run(
        ["ansible-vault", "encrypt", "--vault-password-file", str(password_file), str(vault)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert encrypted.returncode == 0, encrypted.stderr
    assert vault.read_text().startswith("$ANSIBLE_VAULT;")
    return site, password_file, filled


def test_the_inventory_lists_every_service_group_on_docker_hosts_spread_apart(listed):
    docker_hosts = hosts_of(listed, "docker_hosts")
    for group in (*SERVICE_GROUPS, "harbor", "image_factory"):
        members = hosts_of(listed, group)
        assert members, f"group {group} is empty"
        assert members <= docker_hosts, f"{group} has hosts that are not docker hosts: {members - docker_hosts}"
    assert not hosts_of(listed, "mysql_primary") & hosts_of(listed, "mysql_replica")
    assert len(hosts_of(listed, "redis_cluster")) >= 3
    assert len(hosts_of(listed, "rabbitmq")) % 2 == 1
    assert len(hosts_of(listed, "nginx")) >= 2 and len(hosts_of(listed, "tomcat")) >= 2


def test_site_yml_passes_syntax_check_with_the_example():
    process = ansible("ansible-playbook", EXAMPLE, "site.yml", "--syntax-check")
    assert process.returncode == 0, process.stdout + process.stderr


def test_the_vault_stub_holds_every_vault_variable_the_inventory_uses():
    stub = yaml.safe_load((EXAMPLE / "group_vars" / "all" / "vault.yml").read_text())
    used = set()
    for path in EXAMPLE.rglob("*.yml"):
        if path.name != "vault.yml":
            used |= set(__import__("re").findall(r"\bvault_[a-z0-9_]+", path.read_text()))
    assert used and used == set(stub)
    assert all(str(value).find("CHANGE-ME") >= 0 for value in stub.values())


def test_site_yml_refuses_the_stub_placeholders_before_any_change():
    process = ansible("ansible-playbook", EXAMPLE, "site.yml", "--check")
    assert process.returncode != 0
    assert "still hold the vault stub's CHANGE-ME values" in process.stdout, process.stdout[-3000:]
    assert "vault_mysql_root_password" in process.stdout
    # Refused by the preflight play, before any host was contacted.
    assert "UNREACHABLE" not in process.stdout
    assert "TASK [mooring.ops.docker_host" not in process.stdout


def test_every_variable_resolves_and_every_role_accepts_it_for_every_host(site, listed, tmp_path):
    inventory, password_file, filled = site
    hostvars = listed["_meta"]["hostvars"]
    plays = []
    for playbook, pattern, roles in SITE_PLAYS:
        assert (REPO_DIR / "playbooks" / playbook).read_text().count(f"hosts: {pattern}") == 1, (playbook, pattern)
        tasks = [
            {
                "name": "Render every inventory variable of the host",
                "ansible.builtin.debug": {"msg": "{{ lookup('ansible.builtin.vars', item) | string | length }}"},
                "loop": "{{ inventory_variables[inventory_hostname] }}",
            }
        ]
        for role in roles:
            spec = yaml.safe_load((REPO_DIR / "roles" / role / "meta" / "argument_specs.yml").read_text())
            tasks.append(
                {
                    "name": f"The {role} role accepts what the inventory gives",
                    "ansible.builtin.validate_argument_spec": {
                        "argument_spec": spec["argument_specs"]["main"]["options"]
                    },
                }
            )
        plays.append({"name": playbook, "hosts": pattern, "connection": "local", "gather_facts": False, "tasks": tasks})
    playbook = tmp_path / "resolve.yml"
    playbook.write_text(json.dumps(plays))
    extra = tmp_path / "inventory_variables.json"
    extra.write_text(json.dumps({"inventory_variables": {host: sorted(values) for host, values in hostvars.items()}}))
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    process = ansible(
        "ansible-playbook",
        inventory,
        str(playbook),
        "-e",
        f"@{extra}",
        "--vault-password-file",
        str(password_file),
        env=env,
    )
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-2000:]
    stats = json.loads(process.stdout)["stats"]
    assert set(stats) == set(hostvars), "a host of the example took part in no play"
    assert all(entry["failures"] == 0 and entry["ok"] > 0 for entry in stats.values())
    # The secrets came out of the encrypted file and never into the output.
    assert not any(secret in process.stdout for secret in filled.values())
