"""Where a host's published services are reached (plugins/filter/service.py): the one rule every service role
uses, pinned on plain dicts and once through ansible-playbook's own hostvars."""

import json
import subprocess
import sys

import pytest
from ansible.errors import AnsibleFilterError

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.filter.service import service_address

FACTS = {"default_ipv4": {"address": "10.0.0.5"}}


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"mooring_service_address": "192.0.2.1", "ansible_facts": FACTS, "ansible_host": "h.example"}, "192.0.2.1"),
        ({"mooring_service_address": "", "ansible_facts": FACTS, "ansible_host": "h.example"}, "10.0.0.5"),
        ({"ansible_facts": {}, "ansible_host": "h.example"}, "h.example"),
        ({"ansible_facts": {"default_ipv4": {}}}, "web1"),
        ({}, "web1"),
    ],
    ids=["service-address-first", "then-default-ipv4", "then-ansible-host", "then-the-name", "nothing-set"],
)
def test_the_address_falls_back_in_one_order(variables, expected):
    assert service_address("web1", {"web1": variables}) == expected


@pytest.mark.parametrize("host", ["", None, ["web1"]])
def test_a_host_that_is_not_a_name_is_refused(host):
    with pytest.raises(AnsibleFilterError, match="expected an inventory host name"):
        service_address(host, {"web1": {}})


def test_a_host_outside_the_inventory_is_refused_by_name():
    with pytest.raises(AnsibleFilterError, match="'db9' is not a host of the inventory"):
        service_address("db9", {"web1": {}})


def test_through_ansible_the_inventory_templates_are_resolved(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        "web1": {"lab_address": "172.30.0.11", "mooring_service_address": "{{ lab_address }}"},
                        "web2": {"ansible_host": "web2.example"},
                        "web3": {},
                    },
                    "vars": {"ansible_connection": "local"},
                }
            }
        )
    )
    process = subprocess.run(
        [
            "ansible", "web1", "-i", str(inventory), "-m", "ansible.builtin.debug",
            "-a", "msg={{ groups.all | map('mooring.ops.service_address', hostvars) | join(',') }}",
        ],
        capture_output=True, text=True, check=False, cwd=REPO_DIR,
    )  # fmt: skip
    assert process.returncode == 0, process.stdout + process.stderr
    assert "msg: 172.30.0.11,web2.example,web3\n" in process.stdout
