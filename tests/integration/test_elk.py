"""Elasticsearch and Kibana. Elastic's images cannot be pulled or built on this machine, so nothing here runs
them: these tests check what can be checked - the lab's honest skip, the rendered configuration, and the input
checks. A deployment of either has never been tested here."""

import json
import sys

import pytest
import yaml

from conftest import REPO_DIR, failures, lab_node, run

# What the official images listen on inside the container.
ALL_ADDRESSES = "0.0.0.0"  # noqa: S104


def elk_play(*args):
    return run(["ansible-playbook", "-i", "inventory/lab", *args, "playbooks/elk.yml"])


def test_the_lab_play_reports_the_skip_and_deploys_nothing(lab):
    process = elk_play()
    assert process.returncode == 0, failures(process)
    assert "SKIPPED, NOT DEPLOYED: Elasticsearch on node3" in process.stdout
    assert "SKIPPED, NOT DEPLOYED: Kibana on node3" in process.stdout
    names = lab_node("node3", "docker", "ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert "elasticsearch" not in names and "kibana" not in names
    listening = lab_node("node3", "ss", "-Hltn").stdout
    assert ":9200 " not in listening and ":5601 " not in listening
    # vm.max_map_count is a host-wide setting: a skipped node must not have changed it.
    assert lab_node("node3", "test", "-e", "/etc/sysctl.d/60-mooring-elasticsearch.conf").returncode != 0


RENDER_PLAY = """
- name: Render the elasticsearch and kibana roles' configuration with their own defaults and vars
  hosts: localhost
  gather_facts: false
  vars:
    mooring_image_repository: harbor.example.com/mooring
  tasks:
    - name: Load the roles' defaults and vars
      ansible.builtin.include_vars:
        file: "{{ item }}"
      loop:
        - REPO/roles/elasticsearch/defaults/main.yml
        - REPO/roles/elasticsearch/vars/main.yml
        - REPO/roles/kibana/defaults/main.yml
        - REPO/roles/kibana/vars/main.yml
    - name: Render
      ansible.builtin.template:
        src: "REPO/roles/{{ item.role }}/templates/{{ item.name }}.j2"
        dest: "OUT/{{ item.name }}"
        mode: "0600"
      loop:
        - {role: elasticsearch, name: elasticsearch.yml}
        - {role: kibana, name: kibana.yml}
"""


@pytest.mark.parametrize(
    ("extra", "expected_es", "expected_kibana"),
    [
        (
            {"kibana_elasticsearch_password": "kibana-secret", "kibana_elasticsearch_hosts": ["http://10.0.0.5:9200"]},
            {
                "discovery.type": "single-node",
                "http.host": ALL_ADDRESSES,
                "network.host": ALL_ADDRESSES,
                "http.port": 9200,
                "transport.port": 9300,
                "xpack.security.enabled": True,
                "cluster.name": "mooring",
            },
            {
                "elasticsearch.hosts": ["http://10.0.0.5:9200"],
                "elasticsearch.username": "kibana_system",
                "elasticsearch.password": "kibana-secret",
                "server.host": ALL_ADDRESSES,
                "server.port": 5601,
            },
        ),
        (
            {
                "elasticsearch_discovery_type": "",
                "elasticsearch_security_enabled": False,
                "elasticsearch_config_extra": {"discovery.seed_hosts": ["es2", "es3"]},
                "kibana_elasticsearch_password": "x" * 8,
                "kibana_elasticsearch_hosts": ["https://es:9200"],
            },
            {"xpack.security.enabled": False, "discovery.seed_hosts": ["es2", "es3"]},
            {"elasticsearch.hosts": ["https://es:9200"]},
        ),
    ],
)
def test_the_configuration_renders_as_the_official_images_expect(tmp_path, extra, expected_es, expected_kibana):
    play = tmp_path / "render.yml"
    play.write_text(RENDER_PLAY.replace("REPO", str(REPO_DIR)).replace("OUT", str(tmp_path)))
    local = {"ansible_python_interpreter": sys.executable}
    process = run(
        ["ansible-playbook", "-i", "localhost,", "-c", "local", "-e", json.dumps({**extra, **local}), str(play)]
    )
    assert process.returncode == 0, failures(process) + process.stderr[-2000:]
    settings = yaml.safe_load((tmp_path / "elasticsearch.yml").read_text())
    for key, value in expected_es.items():
        assert settings[key] == value, key
    if not extra.get("elasticsearch_discovery_type", "single-node"):
        assert "discovery.type" not in settings
    kibana = yaml.safe_load((tmp_path / "kibana.yml").read_text())
    for key, value in expected_kibana.items():
        assert kibana[key] == value, key


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"elasticsearch_password": ""}, "elasticsearch_password must be at least 6 characters"),
        ({"elasticsearch_heap_max": "lots"}, "elasticsearch_heap_max must be a JVM size such as 512m or 2g"),
        ({"elasticsearch_max_map_count": 65530}, "elasticsearch_max_map_count must be 262144 or more"),
        ({"elasticsearch_discovery_type": "zen"}, "elasticsearch_discovery_type must be single-node"),
    ],
)
def test_bad_elasticsearch_input_fails_first_and_names_the_variable(lab, extra, message):
    process = elk_play("-e", json.dumps(extra))
    assert process.returncode != 0
    assert message in process.stdout, process.stdout[-3000:]
    assert "Pull the image" not in process.stdout


def test_kibana_without_a_password_fails_and_names_the_variable(lab):
    process = elk_play("-e", json.dumps({"kibana_elasticsearch_password": ""}))
    assert process.returncode != 0
    assert "kibana_elasticsearch_password must not be empty" in process.stdout, process.stdout[-3000:]
