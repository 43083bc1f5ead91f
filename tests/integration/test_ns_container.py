"""mooring.ops.ns_container and the ns_container connection plugin: containers run by mooring's own runtime on
this kernel (namespaces, cgroup v1, overlayfs, a bridge, iptables), from the lab's Debian image imported with
ns_image. Every test checks that what it made is gone afterwards."""

import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from conftest import LAB_DIR, REPO_DIR, run, run_module, runtime_residue

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import cgroups, network
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.container import Runtime

IMAGE = "mooring/debian-python:bookworm"
BRIDGE, SUBNET = "mooringt1", "10.90.0.0/24"
GATEWAY = "10.90.0.1"
SERVE = "python3 -m http.server 8000 --bind 0.0.0.0 --directory /etc"


@pytest.fixture(scope="module")
def runtime(lab, tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime")
    archive = root / "image.tar"
    assert run(["docker", "save", "-o", str(archive), IMAGE]).returncode == 0
    settings = {"root": str(root / "store"), "run_dir": str(root / "run"), "bridge": BRIDGE, "subnet": SUBNET}
    imported = run_module("mooring.ops.ns_image", {"root": settings["root"], "archive": str(archive), "name": "debian"})
    assert imported["changed"] is True, imported["_output"]
    archive.unlink()
    yield settings
    network.Network(bridge=BRIDGE, subnet=SUBNET).remove_bridge()


def container(runtime, name=None, **options):
    return run_module("mooring.ops.ns_container", {**runtime, "name": name or "c" + uuid.uuid4().hex[:8], **options})


def residue(runtime, name):
    return runtime_residue(name, runtime["run_dir"])


@pytest.fixture
def named(runtime):
    names = []

    def make():
        names.append("c" + uuid.uuid4().hex[:8])
        return names[-1]

    yield make
    for name in names:
        # sleep as PID 1 has no SIGTERM handler: the kernel ignores the signal, so only SIGKILL stops it.
        removed = container(runtime, name, state="absent", stop_timeout=1)
        assert removed.get("failed") is not True, removed["_output"]
        assert residue(runtime, name) == []


def rt(runtime):
    return Runtime(runtime["root"], runtime["run_dir"], runtime["bridge"], runtime["subnet"])


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_isolation_seen_from_inside_and_from_the_host(runtime, named):
    name = named()
    started = container(runtime, name, image="debian", command="sleep 120", hostname="isolated")
    assert started["changed"] is True, started["_output"]
    info = started["container"]
    assert info["state"] == "running" and info["ip"].startswith("10.90.0.")
    script = "hostname; ls /proc | grep -c '^[0-9]'; tail -n +3 /proc/net/dev | cut -d: -f1; echo --; cat /proc/mounts"
    code, out, _err = rt(runtime).exec(name, ["/bin/sh", "-c", script])
    assert code == 0
    text = out.decode()
    lines = text.splitlines()
    assert lines[0] == "isolated"
    # sleep (PID 1), sh, ls and grep: no host process is visible.
    assert int(lines[1]) <= 5
    assert sorted(line.strip() for line in text.split("--")[0].splitlines()[2:]) == ["eth0", "lo"]
    mounts = text.split("--\n")[1]
    assert str(REPO_DIR) not in mounts and "/sys/fs/cgroup" not in mounts
    pid = info["pid"]
    for kind in ("pid", "net", "uts", "mnt", "ipc"):
        assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
    with open(f"/proc/{pid}/status") as status:
        nspid = status.read().split("NSpid:")[1].split("\n")[0].split()
    assert nspid[-1] == "1"


def test_memory_above_the_limit_is_oom_killed_and_reported(runtime, named):
    name = named()
    options = {
        "image": "debian",
        "memory": "64m",
        "command": ["python3", "-c", "import time; time.sleep(1); b = bytearray(256 * 1024 * 1024); time.sleep(30)"],
    }
    started = container(runtime, name, **options)
    assert started["changed"] is True, started["_output"]
    wait_for(lambda: rt(runtime).state(name)["status"] == "exited", 30, "not killed")
    # state=present reports the container as it is, without starting it again.
    reported = container(runtime, name, **options, state="present")
    assert reported["changed"] is False
    assert reported["container"]["state"] == "exited"
    assert reported["container"]["exit_code"] == 137 and reported["container"]["oom_killed"] is True


def test_pids_limit_stops_a_fork_bomb(runtime, named):
    name = named()
    bomb = (
        "import os, time\nmade = 0\nfor _ in range(300):\n    try:\n        pid = os.fork()\n    except OSError:\n"
        "        continue\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    made += 1\n"
        "print('made', made, flush=True)\ntime.sleep(30)\n"
    )
    started = container(runtime, name, image="debian", pids_limit=30, command=["python3", "-c", bomb])
    assert started["changed"] is True, started["_output"]
    wait_for(lambda: b"made" in rt(runtime).logs(name), 20, "the bomb did not report")
    made = int(rt(runtime).logs(name).split(b"made")[1].split()[0])
    assert 0 < made < 30
    assert len(cgroups.CgroupV1(name).procs()) <= 30


def test_half_a_cpu_is_enforced(runtime, named):
    name = named()
    started = container(runtime, name, image="debian", cpus=0.5, command=["python3", "-c", "while True: pass"])
    assert started["changed"] is True, started["_output"]
    group = cgroups.CgroupV1(name)
    time.sleep(0.5)
    before, clock = group.cpu_usage_ns(), time.monotonic()
    time.sleep(2)
    share = (group.cpu_usage_ns() - before) / ((time.monotonic() - clock) * 1e9)
    assert 0.3 < share < 0.6, share


def test_pause_then_resume(runtime, named):
    name = named()
    assert container(runtime, name, image="debian", command="sleep 120")["changed"] is True
    paused = container(runtime, name, image="debian", command="sleep 120", state="paused")
    assert paused["changed"] is True and paused["container"]["state"] == "paused"
    assert cgroups.CgroupV1(name).frozen()
    resumed = container(runtime, name, image="debian", command="sleep 120", state="started")
    assert resumed["changed"] is True and resumed["container"]["state"] == "running"
    assert not cgroups.CgroupV1(name).frozen()


def test_stop_escalates_to_sigkill_for_a_process_that_ignores_sigterm(runtime, named):
    name = named()
    command = ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 1; done"]
    assert container(runtime, name, image="debian", command=command)["changed"] is True
    began = time.monotonic()
    stopped = container(runtime, name, image="debian", command=command, state="stopped", stop_timeout=2)
    took = time.monotonic() - began
    assert stopped["changed"] is True
    assert stopped["container"]["state"] == "exited" and stopped["container"]["exit_code"] == 137
    assert 2 <= took < 15


def test_restart_on_failure_restarts_up_to_n_times(runtime, named):
    name = named()
    command = ["/bin/sh", "-c", "sleep 0.5; exit 3"]
    started = container(runtime, name, image="debian", command=command, restart_policy="on-failure:2")
    assert started["changed"] is True, started["_output"]
    runtime_view = rt(runtime)
    wait_for(
        lambda: (
            (runtime_view.state(name) or {}).get("status") == "exited"
            and runtime_view.state(name).get("restart_count") == 2
        ),
        30,
        "not restarted twice",
    )
    time.sleep(2)
    state = runtime_view.state(name)
    assert state["restart_count"] == 2 and state["exit_code"] == 3


def test_a_published_port_answers_and_two_containers_reach_each_other(runtime, named):
    server, client = named(), named()
    port = 19000 + os.getpid() % 500
    started = container(runtime, server, image="debian", command=SERVE, published_ports=[f"{port}:8000"])
    assert started["changed"] is True, started["_output"]

    def answers(url):
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - the test's own container
                return answer.read().decode().strip()
        except OSError:
            return None

    wait_for(lambda: answers(f"http://{GATEWAY}:{port}/hostname") == server, 20, "published port silent")
    assert container(runtime, client, image="debian", command="sleep 120")["changed"] is True
    fetch = f"import urllib.request as u; print(u.urlopen('http://{started['container']['ip']}:8000/hostname').read().decode())"
    code, out, err = rt(runtime).exec(client, ["python3", "-c", fetch])
    assert code == 0, err
    assert out.decode().strip() == server


def test_a_second_identical_task_changes_nothing_and_a_changed_env_recreates_with_its_values_hidden(runtime, named):
    name = named()
    secret = "s3cr3t-" + os.urandom(4).hex()
    options = {"image": "debian", "command": "sleep 120", "env": {"MODE": "one", "TOKEN": secret}, "memory": "128m",
               "stop_timeout": 1}  # fmt: skip
    first = container(runtime, name, **options)
    assert first["changed"] is True
    again = container(runtime, name, **options)
    assert again["changed"] is False, again
    changed = container(runtime, name, **{**options, "env": {"MODE": "two", "TOKEN": secret}})
    assert changed["changed"] is True and changed["actions"] == ["remove", "create", "start"]
    # The diff names the keys and which changed, never a value; the state files are root's alone.
    after, before = changed["diff"]["after"]["env"], changed["diff"]["before"]["env"]
    assert after["MODE"] == "******** (changed)" and after["TOKEN"] == "********" and "PATH" in after
    assert set(before.values()) == {"********"} and set(after.values()) == {"********", "******** (changed)"}
    assert secret not in json.dumps(changed["diff"]) and "two" not in json.dumps(changed["diff"])
    for path in (
        os.path.join(runtime["run_dir"], "containers", name),
        os.path.join(runtime["root"], "containers", name),
    ):
        for entry in os.listdir(path):
            if entry.endswith(".json"):
                assert stat.S_IMODE(os.stat(os.path.join(path, entry)).st_mode) == 0o600, entry
    _code, out, _err = rt(runtime).exec(name, ["/bin/sh", "-c", "echo $MODE"])
    assert out.decode().strip() == "two"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"memory": "lots"}, "memory must be a size"),
        ({"image": "nope/never:1"}, "image nope/never:1 is not in the runtime's store"),
        ({"volumes": ["/does/not/exist:/data"]}, "volumes: the host path /does/not/exist does not exist"),
        ({"restart_policy": "sometimes"}, "restart_policy must be"),
        ({"published_ports": ["99999:80"]}, "published_ports:"),
    ],
)
def test_bad_input_fails_naming_the_option_and_leaves_nothing(runtime, options, message):
    name = "bad" + uuid.uuid4().hex[:6]
    failed = container(runtime, name, **{"image": "debian", "command": "sleep 60", **options})
    assert failed.get("failed") is True
    assert message in failed["msg"], failed["msg"]
    assert residue(runtime, name) == []


def test_an_invalid_name_is_refused(runtime):
    failed = container(runtime, "../x", image="debian", command="sleep 60")
    assert failed.get("failed") is True and failed["msg"].startswith("name must be")
    assert not os.path.exists(os.path.join(runtime["run_dir"], "x"))


def test_a_taken_port_fails_naming_the_option_and_leaves_nothing(runtime):
    name = "taken" + uuid.uuid4().hex[:6]
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", 0))  # noqa: S104
        squatter.listen()
        port = squatter.getsockname()[1]
        failed = container(runtime, name, image="debian", command="sleep 60", published_ports=[f"{port}:80"])
    assert failed.get("failed") is True
    assert f"published_ports: host port {port} is taken" in failed["msg"]
    assert residue(runtime, name) == []


def test_the_connection_plugin_runs_a_role_inside_a_container(runtime, named, tmp_path):
    name = named()
    assert container(runtime, name, image="debian", command="sleep 300")["changed"] is True
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        json.dumps(
            {"all": {"hosts": {name: {
                "ansible_connection": "mooring.ops.ns_container",
                "ansible_ns_container_root": runtime["root"],
                "ansible_ns_container_run_dir": runtime["run_dir"],
                "ansible_python_interpreter": "/usr/bin/python3",
            }}}}
        )
    )  # fmt: skip
    play = tmp_path / "play.yml"
    play.write_text("- hosts: all\n  gather_facts: true\n  roles:\n    - role: ns_probe\n")
    roles = tmp_path / "roles" / "ns_probe" / "tasks"
    roles.mkdir(parents=True)
    (roles / "main.yml").write_text(
        '- name: Write a page\n  ansible.builtin.copy:\n    content: "served by {{ ansible_hostname }}\\n"\n'
        "    dest: /srv/index.html\n    mode: '0644'\n"
        "- name: Read it back\n  ansible.builtin.slurp:\n    src: /srv/index.html\n  register: page\n"
        "- name: Check it\n  ansible.builtin.assert:\n"
        "    that: (page.content | b64decode) is search(inventory_hostname)\n"
    )
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(tmp_path / "roles"))
    first = run_playbook(inventory, play, env)
    assert first.returncode == 0, first.stdout[-3000:]
    again = run_playbook(inventory, play, env)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]
    _code, out, _err = rt(runtime).exec(name, ["cat", "/srv/index.html"])
    assert out.decode().strip() == f"served by {name}"


def run_playbook(inventory, play, env):
    return subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(play)],
        capture_output=True, text=True, env=env, cwd=REPO_DIR, timeout=600, check=False,
    )  # fmt: skip


NGINX_ROLE = """
- name: Run nginx from the registry in an ns_container, with limits and a published port
  mooring.ops.ns_container:
    name: "{{ web_name }}"
    image: harbor.lab/mooring/nginx:1.22
    memory: 64m
    cpus: 0.5
    pids_limit: 100
    published_ports: ["{{ web_port }}:80"]
    stop_timeout: 2
    root: "{{ web_root }}"
    run_dir: "{{ web_run_dir }}"
    bridge: "{{ web_bridge }}"
    subnet: "{{ web_subnet }}"

- name: Know the container as a host of the inventory
  ansible.builtin.add_host:
    name: "{{ web_name }}"
    ansible_connection: mooring.ops.ns_container
    ansible_ns_container_root: "{{ web_root }}"
    ansible_ns_container_run_dir: "{{ web_run_dir }}"
  changed_when: false

# The image has no Python: raw goes through the connection plugin's exec alone, as the image's user (www-data
# owns the content directory; the image's own index.html belongs to root).
- name: Write a page inside the container
  ansible.builtin.raw: printf 'configured through the connection plugin\\n' > /usr/share/nginx/html/connection.html
  delegate_to: "{{ web_name }}"
  changed_when: true
"""


def test_a_role_runs_nginx_configures_it_through_the_connection_and_removes_it_without_residue(runtime, tmp_path):
    name = "web" + uuid.uuid4().hex[:6]
    credentials = {
        "username": "mooring",
        "password": (LAB_DIR / "registry-password").read_text().strip(),
        "ca_cert": str(LAB_DIR / "ca" / "ca.crt"),
    }
    pulled = run_module(
        "mooring.ops.ns_image", {"root": runtime["root"], "name": "harbor.lab/mooring/nginx:1.22", **credentials}
    )
    assert pulled.get("failed") is not True, pulled["_output"]
    port = 19500 + os.getpid() % 400
    role = tmp_path / "roles" / "ns_nginx" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(NGINX_ROLE)
    play = tmp_path / "play.yml"
    play.write_text("- hosts: localhost\n  gather_facts: false\n  roles:\n    - role: ns_nginx\n")
    settings = {
        "web_name": name, "web_port": port, "web_root": runtime["root"], "web_run_dir": runtime["run_dir"],
        "web_bridge": runtime["bridge"], "web_subnet": runtime["subnet"],
        "ansible_python_interpreter": sys.executable,
    }  # fmt: skip
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(tmp_path / "roles"))
    try:
        process = subprocess.run(
            ["ansible-playbook", "-i", "localhost,", "-c", "local", "-e", json.dumps(settings), str(play)],
            capture_output=True, text=True, env=env, cwd=REPO_DIR, timeout=600, check=False,
        )  # fmt: skip
        assert process.returncode == 0, process.stdout[-3000:]

        def page():
            try:
                with urllib.request.urlopen(f"http://{GATEWAY}:{port}/connection.html", timeout=2) as answer:
                    return answer.read().decode().strip()
            except OSError:
                return None

        wait_for(lambda: page() == "configured through the connection plugin", 20, f"nginx answered {page()!r}")
        group = cgroups.CgroupV1(name)
        with open(os.path.join(group.paths["memory"], "memory.limit_in_bytes")) as limit:
            assert int(limit.read()) == 64 << 20
    finally:
        removed = container(runtime, name, state="absent", stop_timeout=2)
    assert removed["changed"] is True, removed["_output"]
    assert residue(runtime, name) == []
    assert page() is None
