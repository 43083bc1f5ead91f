"""The nginx and tomcat roles on the lab, as `make lab` deployed them with site.yml: nginx on node1 and node2,
Tomcat on node2 and node3, images from harbor.lab; the page and the proxy are asked from this machine over the
lab network, the way a client would."""

import itertools
import json
import re
import tarfile
import time
import uuid
import zipfile

import pytest
import requests
from lab_clients import WebLoad

from conftest import LAB_DIR, changes, failures, report, run, run_module

NODES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}
SPARE = "node3"
BALANCER = "node3"
NGINX_HOSTS = ["node1", "node2"]
TOMCAT_HOSTS = ["node2", "node3"]


def get(url):
    return requests.get(url, timeout=10)


def started_at(node, container):
    inspected = run(["docker", "exec", f"mooring-lab-{node}", "docker", "inspect", container])
    assert inspected.returncode == 0, inspected.stderr
    return json.loads(inspected.stdout)[0]["State"]["StartedAt"]


def playbook(name, *args):
    return run(["ansible-playbook", "-i", "inventory/lab", f"playbooks/{name}.yml", *args])


@pytest.mark.parametrize("node", NGINX_HOSTS)
def test_the_page_is_served_from_every_nginx_host(lab, node):
    answer = get(f"http://{NODES[node]}/")
    assert answer.status_code == 200
    assert "Served by mooring's nginx role" in answer.text


@pytest.mark.parametrize("node", TOMCAT_HOSTS)
def test_tomcat_answers_on_8080(lab, node):
    answer = get(f"http://{NODES[node]}:8080/")
    assert answer.status_code == 200
    assert f"mooring tomcat on {node}" in answer.text


@pytest.mark.parametrize("node", NGINX_HOSTS)
def test_the_tomcat_page_is_served_through_nginx_from_every_tomcat_host(lab, node):
    served_by = set()
    for _request in range(8):
        answer = get(f"http://{NODES[node]}/app/")
        assert answer.status_code == 200
        assert "scheme http" in answer.text
        served_by.add(answer.text.split()[3])
    assert served_by == set(TOMCAT_HOSTS)


def test_changed_content_is_served_without_a_restart(lab, tmp_path):
    marker = f"content {uuid.uuid4().hex}"
    (tmp_path / "index.html").write_text(f"<p>{marker}</p>\n")
    before = {node: started_at(node, "nginx") for node in NGINX_HOSTS}
    try:
        changed = playbook("nginx", "-e", json.dumps({"nginx_content_dir": str(tmp_path)}))
        assert changed.returncode == 0, changed.stdout[-3000:]
        for node in NGINX_HOSTS:
            assert marker in get(f"http://{NODES[node]}/").text
            assert started_at(node, "nginx") == before[node]
    finally:
        restored = playbook("nginx")
        assert restored.returncode == 0, restored.stdout[-3000:]
    assert marker not in get(f"http://{NODES['node1']}/").text


def test_a_broken_configuration_fails_the_check_and_the_old_one_keeps_serving(lab):
    live = ["docker", "exec", "mooring-lab-node1", "cat", "/srv/mooring/nginx/conf/conf.d/mooring.conf"]
    config_before = run(live).stdout
    before = started_at("node1", "nginx")
    broken = playbook("nginx", "--limit", "node1", "-e", json.dumps({"nginx_server_extra": "no_such_directive on;"}))
    assert broken.returncode != 0
    assert 'unknown directive "no_such_directive"' in broken.stdout
    assert run(live).stdout == config_before
    assert started_at("node1", "nginx") == before
    assert get(f"http://{NODES['node1']}/app/").status_code == 200
    fixed = playbook("nginx", "--limit", "node1")
    assert fixed.returncode == 0, fixed.stdout[-3000:]


def test_a_changed_server_xml_restarts_tomcat_and_a_second_run_changes_nothing(lab):
    before = started_at("node3", "tomcat")
    proxied = {"tomcat_proxy_name": "shop.lab", "tomcat_proxy_port": 8443, "tomcat_proxy_scheme": "https"}
    try:
        changed = playbook("tomcat", "--limit", "node3", "-e", json.dumps(proxied))
        assert changed.returncode == 0, changed.stdout[-3000:]
        assert started_at("node3", "tomcat") != before
        answer = get(f"http://{NODES['node3']}:8080/")
        assert "server name shop.lab:8443, scheme https" in answer.text
        again = playbook("tomcat", "--limit", "node3", "-e", json.dumps(proxied))
        assert not any(changes(again).values()), again.stdout[-3000:]
    finally:
        restored = playbook("tomcat", "--limit", "node3")
        assert restored.returncode == 0, restored.stdout[-3000:]


def roll_under_load(*args):
    load = WebLoad()
    load.start()
    time.sleep(1)
    rolled = playbook("tomcat", *args)
    sent = load.stop()
    report(f"tomcat roll: {sent} requests through nginx, {len(load.failed)} failed")
    assert rolled.returncode == 0, failures(rolled)
    assert sent < load.limit, "the load loop ended before the roll did"
    return load


def alone_serving(served_by, at_least=20):
    """The Tomcats that served `at_least` requests in a row (the other one out meanwhile), in order."""
    return [node for node, group in itertools.groupby(served_by) if len(list(group)) >= at_least]


def test_a_changed_tomcat_rolls_one_host_at_a_time_and_no_request_through_nginx_fails(lab):
    """A changed setting recreates both Tomcats (as a new image does), one after the other: while the load loop
    runs through both nginx hosts, each Tomcat alone serves for a while, and not one request fails."""
    before = {node: started_at(node, "tomcat") for node in TOMCAT_HOSTS}
    marker = {"tomcat_env": {"MOORING_ROLL": uuid.uuid4().hex}}
    try:
        load = roll_under_load("-e", json.dumps(marker))
        assert load.failed == [], load.failed[:10]
        assert all(started_at(node, "tomcat") != before[node] for node in TOMCAT_HOSTS)
        # In inventory order: node2 is replaced while node3 alone serves, then the other way round.
        assert alone_serving(load.served_by) == ["node3", "node2"], alone_serving(load.served_by, 1)[-40:]
        again = playbook("tomcat", "-e", json.dumps(marker))
        assert not any(changes(again).values()), again.stdout[-3000:]
    finally:
        load = roll_under_load()
        assert load.failed == [], load.failed[:10]


@pytest.mark.parametrize("name", ["tomcat", "nginx"])
def test_check_mode_on_the_converged_lab_reports_no_change(lab, name):
    checked = playbook(name, "--check")
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert not any(changes(checked).values()), checked.stdout[-3000:]


@pytest.mark.parametrize(
    ("name", "variables", "message"),
    [
        ("nginx", {"nginx_proxy_location": "app"}, 'nginx_proxy_location must start and end with /, got "app"'),
        (
            "nginx",
            {"nginx_upstream_servers": ["node2"]},
            'nginx_upstream_servers must be host:port items, got ["node2"]',
        ),
        (
            "nginx",
            {"nginx_tls_certificate": "files/server.crt"},
            "nginx_tls_certificate and nginx_tls_private_key go together",
        ),
        ("tomcat", {"tomcat_heap": "lots"}, 'tomcat_heap must look like 512m or 2g, got "lots"'),
        ("tomcat", {"tomcat_war": "app.zip"}, 'tomcat_war must be a .war file, got "app.zip"'),
        (
            "tomcat",
            {"tomcat_proxy_scheme": "ftp"},
            "value of tomcat_proxy_scheme must be one of: http, https, got: ftp",
        ),
    ],
)
def test_bad_input_fails_naming_the_variable_and_leaves_the_service_alone(lab, name, variables, message):
    """The specific message, not just the name: Ansible prints every option name on any argument-spec failure."""
    node = "node2"
    before = started_at(node, name)
    failed = playbook(name, "--limit", node, "-e", json.dumps(variables))
    assert failed.returncode != 0
    assert message in " ".join(failed.stdout.split()), failures(failed)
    assert started_at(node, name) == before


def test_an_image_missing_from_the_registry_is_built_and_pushed_through_image_factory(lab):
    """Delete tomcat:10.1 from harbor.lab (the manifest, so its version tag goes too); the tomcat play finds
    it missing, has image_factory on the image_factory host supply it, and pulls it."""
    registry = {
        "registry": "harbor.lab",
        "project": "mooring",
        "username": "mooring",
        "password": (LAB_DIR / "registry-password").read_text().strip(),
        "ca_cert": str(LAB_DIR / "ca" / "ca.crt"),
    }
    removed = run_module("mooring.ops.harbor_image", dict(registry, repository="tomcat", tag="10.1", state="absent"))
    assert removed["changed"] is True, removed["_output"]
    supplied = playbook("tomcat", "--limit", "node3")
    assert supplied.returncode == 0, supplied.stdout[-4000:]
    assert "Build and push on the image_factory host the missing image tomcat" in supplied.stdout
    again = run_module(
        "mooring.ops.harbor_image", dict(registry, repository="tomcat", tag="10.1", state="absent"), "--check"
    )
    assert again["changed"] is True  # the tag is back in the registry
    assert f"mooring tomcat on {SPARE}" in get(f"http://{NODES[SPARE]}:8080/").text


def test_tls_and_content_from_an_archive(lab, tmp_path):
    """nginx on node2 with a certificate from the lab CA and its content from a .tar.gz; then back to plain http."""
    marker = f"archived {uuid.uuid4().hex}"
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(f"<p>{marker}</p>\n")
    with tarfile.open(tmp_path / "site.tar.gz", "w:gz") as archive:
        archive.add(site / "index.html", arcname="index.html")
    key = tmp_path / "server.key"
    cert = tmp_path / "server.crt"
    made = run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=shop.lab",
         "-addext", f"subjectAltName=DNS:shop.lab,IP:{NODES['node2']}", "-keyout", str(key), "-out", str(cert)]
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    variables = {
        "nginx_tls_certificate": str(cert),
        "nginx_tls_private_key": str(key),
        "nginx_content_archive": str(tmp_path / "site.tar.gz"),
    }
    try:
        secured = playbook("nginx", "--limit", "node2", "--diff", "-e", json.dumps(variables))
        assert secured.returncode == 0, secured.stdout[-3000:]
        assert "PRIVATE KEY" not in secured.stdout
        page = requests.get(f"https://{NODES['node2']}/", verify=str(cert), timeout=10)
        assert marker in page.text
        assert "mooring tomcat on" in requests.get(f"https://{NODES['node2']}/app/", verify=str(cert), timeout=10).text
        redirect = requests.get(f"http://{NODES['node2']}/", allow_redirects=False, timeout=10)
        assert redirect.status_code == 301
        assert redirect.headers["Location"].startswith(f"https://{NODES['node2']}")
        again = playbook("nginx", "--limit", "node2", "-e", json.dumps(variables))
        assert not any(changes(again).values()), again.stdout[-3000:]
    finally:
        restored = playbook("nginx", "--limit", "node2")
        assert restored.returncode == 0, restored.stdout[-3000:]
    assert get(f"http://{NODES['node2']}/").status_code == 200


def test_a_war_is_deployed_as_root_with_the_heap_given(lab, tmp_path):
    """A second Tomcat on node3 (its own name, directory and port) from a WAR, with a 300m heap."""
    war = tmp_path / "shop.war"
    with zipfile.ZipFile(war, "w") as archive:
        archive.writestr(
            "index.jsp", '<%@ page contentType="text/plain" %>shop war on <%= System.getenv("MOORING_HOST") %>\n'
        )
    variables = {
        "tomcat_container_name": "tomcat-war",
        "tomcat_base_dir": "/srv/mooring/tomcat-war",
        "tomcat_port": 8081,
        "tomcat_war": str(war),
        "tomcat_heap": "300m",
    }
    try:
        deployed = playbook("tomcat", "--limit", SPARE, "-e", json.dumps(variables))
        assert deployed.returncode == 0, deployed.stdout[-3000:]
        assert f"shop war on {SPARE}" in get(f"http://{NODES[SPARE]}:8081/").text
        java = run(["docker", "exec", f"mooring-lab-{SPARE}", "docker", "exec", "tomcat-war", "cat", "/proc/1/cmdline"])
        assert "-Xmx300m" in java.stdout.split("\0")
        again = playbook("tomcat", "--limit", SPARE, "-e", json.dumps(variables))
        assert not any(changes(again).values()), again.stdout[-3000:]
    finally:
        run(["docker", "exec", f"mooring-lab-{SPARE}", "docker", "rm", "-f", "tomcat-war"])
        run(["docker", "exec", f"mooring-lab-{SPARE}", "rm", "-rf", "/srv/mooring/tomcat-war"])


def test_a_javax_application_runs_on_the_tomcat_9_line_that_image_factory_builds_from_debian_11(lab, tmp_path):
    """tomcat_image asks for tomcat:9.0, which harbor.lab does not hold: image_factory finds the release that
    gives Tomcat 9 among the lab's line bases (Debian 11's tomcat9), builds and pushes it, and a WAR written
    against javax.servlet (gone from Tomcat 10) is served by it, from the same role and mounts."""
    war = tmp_path / "legacy.war"
    with zipfile.ZipFile(war, "w") as archive:
        archive.writestr(
            "index.jsp",
            '<%@ page contentType="text/plain" import="javax.servlet.http.HttpServletRequest" %>'
            "<% HttpServletRequest legacy = request; %>javax on <%= application.getServerInfo() %>\n",
        )
    variables = {
        "tomcat_image": "harbor.lab/mooring/tomcat:9.0",
        "tomcat_container_name": "tomcat9",
        "tomcat_base_dir": "/srv/mooring/tomcat9",
        "tomcat_port": 8082,
        "tomcat_war": str(war),
    }
    try:
        deployed = playbook("tomcat", "--limit", SPARE, "-e", json.dumps(variables))
        assert deployed.returncode == 0, failures(deployed)
        assert "javax on Apache Tomcat/9.0." in get(f"http://{NODES[SPARE]}:8082/").text
        again = playbook("tomcat", "--limit", SPARE, "-e", json.dumps(variables))
        assert not any(changes(again).values()), again.stdout[-3000:]
    finally:
        run(["docker", "exec", f"mooring-lab-{SPARE}", "docker", "rm", "-f", "tomcat9"])
        run(["docker", "exec", f"mooring-lab-{SPARE}", "rm", "-rf", "/srv/mooring/tomcat9"])


def test_a_tomcat_version_that_no_release_gives_fails_naming_the_variable_before_any_change(lab):
    before = started_at(SPARE, "tomcat")
    failed = playbook("tomcat", "--limit", SPARE, "-e", json.dumps({"tomcat_image": "harbor.lab/mooring/tomcat:8.5"}))
    assert failed.returncode != 0
    said = " ".join(failed.stdout.split())  # the YAML callback folds long messages
    assert (
        "tomcat_image: harbor.lab/mooring/tomcat:8.5 is not in the registry, and no Debian release that "
        "image_factory builds from gives tomcat 8.5; they give 10.1." in said
    ), failures(failed)
    assert started_at(SPARE, "tomcat") == before


def served_version(node, container, command):
    return run(["docker", "exec", f"mooring-lab-{node}", "docker", "exec", container, *command]).stdout


def test_tomcat_rolls_between_its_lines_9_0_and_10_1_with_no_request_failed(lab):
    """The drill for Tomcat: Debian 12 and 13 give the same Tomcat (10.1.60 both, measured on 2026-12-03), so it
    rolls between the lines that differ, Debian 11's 9.0 (built on demand) and 10.1: both Tomcats go to 9.0 one
    after the other under the load loop, 0 requests failed, a re-run changes nothing, and back to 10.1 the same
    way (a stateless service may go either way)."""
    older = {"tomcat_image": "harbor.lab/mooring/tomcat:9.0"}
    try:
        load = roll_under_load("-e", json.dumps(older))
        assert load.failed == [], load.failed[:10]
        for node in TOMCAT_HOSTS:
            said = served_version(node, "tomcat", ["/usr/share/tomcat/bin/version.sh"])
            assert "Apache Tomcat/9.0." in said, said
        again = playbook("tomcat", "-e", json.dumps(older))
        assert not any(changes(again).values()), again.stdout[-3000:]
    finally:
        load = roll_under_load()
        assert load.failed == [], load.failed[:10]
    for node in TOMCAT_HOSTS:
        assert "Apache Tomcat/10.1." in served_version(node, "tomcat", ["/usr/share/tomcat/bin/version.sh"])


def nginx_roll_through_the_balancer(*args):
    """The nginx play under a load loop through the balancer on node3 (the nginx_balancer role): the loop's
    record, and the hosts the play took out of the balancer's upstream."""
    load = WebLoad(limit=30000, entries=(BALANCER,))
    rolled = load.during(lambda: playbook("nginx", *args))
    report(f"nginx roll: {load.sent} requests through the balancer, {len(load.failed)} failed")
    assert rolled.returncode == 0, failures(rolled)
    assert not load.ran_out(), "the load loop ended before the roll did"
    taken_out = re.findall(
        r"Take the nginx host out of every balancer's upstream, or put it back - (node\d)", rolled.stdout
    )
    return load, taken_out


def test_the_balancer_proxies_every_path_to_both_nginx_hosts(lab):
    assert "Served by mooring's nginx role" in get(f"http://{NODES[BALANCER]}/").text
    served_by = {get(f"http://{NODES[BALANCER]}/app/").text.split()[3] for _request in range(8)}
    assert served_by == set(TOMCAT_HOSTS)


def test_nginx_rolls_to_debian_13s_1_26_and_back_behind_the_balancer_with_no_request_failed(lab):
    """The upgrade drill for nginx: the 1.26 line (Debian 13, built on demand) replaces both nginx hosts one
    after the other, each out of the balancer's upstream (and nothing in flight to it) while it is replaced and
    healthy before the next; the load loop through the balancer sees no failure. A re-run changes nothing; back
    to 1.22 the same way."""
    newer = {"nginx_image": "harbor.lab/mooring/nginx:1.26"}
    try:
        load, taken_out = nginx_roll_through_the_balancer("-e", json.dumps(newer))
        assert load.failed == [], load.failed[:10]
        # Out before and back in after each host's replacement, one host after the other.
        assert taken_out == ["node1", "node1", "node2", "node2"], taken_out
        for node in NGINX_HOSTS:
            assert "nginx/1.26." in served_version(node, "nginx", ["sh", "-c", "nginx -v 2>&1"])
        again = playbook("nginx", "-e", json.dumps(newer))
        assert not any(changes(again).values()), again.stdout[-3000:]
    finally:
        load, taken_out = nginx_roll_through_the_balancer()
        assert load.failed == [], load.failed[:10]
    for node in NGINX_HOSTS:
        assert "nginx/1.22." in served_version(node, "nginx", ["sh", "-c", "nginx -v 2>&1"])
