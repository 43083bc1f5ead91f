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

from conftest import (
    HOST_PYTHON,
    LAB_DIR,
    REPO_DIR,
    RUNTIME_GATEWAY,
    container,
    free_port,
    residue,
    rt,
    run_module,
    wait_for,
)

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import cgroups

GATEWAY = RUNTIME_GATEWAY
SERVE = "python3 -m http.server 8000 --bind 0.0.0.0 --directory /etc"


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


def test_half_a_cpu_is_a_cfs_quota_that_throttles_a_spinning_process(runtime, named):
    """The mechanism, read from the cgroup: the quota and period the kernel enforces, and the kernel's own count
    of the periods in which it throttled the container. (How much CPU that comes to is bench/'s business.)"""
    name = named()
    started = container(runtime, name, image="debian", cpus=0.5, command=["python3", "-c", "while True: pass"])
    assert started["changed"] is True, started["_output"]
    group = cgroups.CgroupV1(name)
    cpu = group.paths["cpu"]
    assert open(os.path.join(cpu, "cpu.cfs_quota_us")).read().strip() == "50000"  # noqa: SIM115
    assert open(os.path.join(cpu, "cpu.cfs_period_us")).read().strip() == "100000"  # noqa: SIM115

    def throttled():
        stats = dict(line.split() for line in open(os.path.join(cpu, "cpu.stat")))  # noqa: SIM115
        return int(stats["nr_throttled"]) > 0 and int(stats["throttled_time"]) > 0

    wait_for(throttled, 20, "the kernel never throttled the spinning container")


def test_pause_then_resume(runtime, named):
    name = named()
    assert container(runtime, name, image="debian", command="sleep 120")["changed"] is True
    paused = container(runtime, name, image="debian", command="sleep 120", state="paused")
    assert paused["changed"] is True and paused["container"]["state"] == "paused"
    assert cgroups.CgroupV1(name).frozen()
    resumed = container(runtime, name, image="debian", command="sleep 120", state="started")
    assert resumed["changed"] is True and resumed["container"]["state"] == "running"
    assert not cgroups.CgroupV1(name).frozen()


def test_a_paused_container_is_thawed_by_its_stop_and_ends_on_sigterm(runtime, named):
    name = named()
    command = ["/bin/sh", "-c", "trap 'echo got TERM; exit 3' TERM; while true; do sleep 0.2; done"]
    assert container(runtime, name, image="debian", command=command)["changed"] is True
    assert container(runtime, name, image="debian", command=command, state="paused")["changed"] is True
    stopped = container(runtime, name, image="debian", command=command, state="stopped", stop_timeout=10)
    assert stopped["changed"] is True, stopped["_output"]
    # Thawed first (through the OCI runtime's resume), so SIGTERM reached the handler, not a SIGKILL later.
    assert stopped["container"]["state"] == "exited" and stopped["container"]["exit_code"] == 3
    assert b"got TERM" in rt(runtime).logs(name)


def test_stop_escalates_to_sigkill_for_a_process_that_ignores_sigterm(runtime, named):
    name = named()
    command = ["/bin/sh", "-c", "trap 'echo got TERM' TERM; while true; do sleep 0.2; done"]
    assert container(runtime, name, image="debian", command=command)["changed"] is True
    stopped = container(runtime, name, image="debian", command=command, state="stopped", stop_timeout=2)
    assert stopped["changed"] is True
    # SIGTERM came first (the shell said so), and only SIGKILL ended it (137 = 128 + 9).
    assert b"got TERM" in rt(runtime).logs(name)
    assert stopped["container"]["state"] == "exited" and stopped["container"]["exit_code"] == 137


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
    port = free_port()
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
    options = {"image": "debian", "command": "sleep 120", "env": {"MODE": "one", "SESSION_VALUE": secret},
               "memory": "128m", "stop_timeout": 1}  # fmt: skip
    first = container(runtime, name, **options)
    assert first["changed"] is True
    again = container(runtime, name, **options)
    assert again["changed"] is False, again
    changed = container(runtime, name, **{**options, "env": {"MODE": "two", "SESSION_VALUE": secret}})
    assert changed["changed"] is True and changed["actions"] == ["remove", "create", "start"]
    # The diff names the keys and which changed, never a value; the state files are root's alone.
    after, before = changed["diff"]["after"]["env"], changed["diff"]["before"]["env"]
    assert after["MODE"] == "******** (changed)" and after["SESSION_VALUE"] == "********" and "PATH" in after
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


def test_a_role_runs_nginx_configures_it_through_the_connection_and_removes_it_without_residue(lab, runtime, tmp_path):
    """Needs the lab: the nginx image is image_factory's, pushed to harbor.lab by site.yml."""
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
    port = free_port()
    role = tmp_path / "roles" / "ns_nginx" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(NGINX_ROLE)
    play = tmp_path / "play.yml"
    play.write_text("- hosts: localhost\n  gather_facts: false\n  roles:\n    - role: ns_nginx\n")
    settings = {
        "web_name": name, "web_port": port, "web_root": runtime["root"], "web_run_dir": runtime["run_dir"],
        "web_bridge": runtime["bridge"], "web_subnet": runtime["subnet"],
        "ansible_python_interpreter": HOST_PYTHON,
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
        limits = {("memory", "memory.limit_in_bytes"): str(64 << 20), ("cpu", "cpu.cfs_quota_us"): "50000",
                  ("cpu", "cpu.cfs_period_us"): "100000", ("pids", "pids.max"): "100"}  # fmt: skip
        for (controller, key), expected in limits.items():
            with open(os.path.join(group.paths[controller], key)) as limit:
                assert limit.read().strip() == expected, key
    finally:
        removed = container(runtime, name, state="absent", stop_timeout=2)
    assert removed["changed"] is True, removed["_output"]
    assert residue(runtime, name) == []
    assert page() is None


def test_every_option_reaches_the_container_and_check_mode_creates_nothing(runtime, named, tmp_path):
    name = named()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from the host\n")
    script = (
        "id -u; id -g; pwd; touch /x 2>/dev/null && echo rw || echo ro; touch /scratch/y && echo tmpfs; cat /data/in;"
        " touch /data/out 2>/dev/null || echo data-ro; ls /sys/class/net; grep CapBnd /proc/self/status; sleep 300"
    )
    options = {
        "image": "debian", "entrypoint": ["/bin/sh", "-c"], "command": [script], "working_dir": "/srv",
        "user": "65534:65534", "read_only": True, "tmpfs": ["/scratch"], "volumes": [f"{shared}:/data:ro"],
        "network": "none", "memory": "64m", "memory_swap": "128m", "cpu_shares": 512, "cpuset_cpus": "0",
        "capabilities": ["NET_ADMIN"], "cap_drop": ["CHOWN"], "stop_timeout": 1,
    }  # fmt: skip
    checked = container(runtime, name, **options, check=True)
    assert checked["changed"] is True and checked["actions"] == ["create", "start"], checked["_output"]
    assert rt(runtime).state(name) is None
    started = container(runtime, name, **options)
    assert started["changed"] is True, started["_output"]
    wait_for(lambda: b"CapBnd" in rt(runtime).logs(name), 20, "no output")
    lines = rt(runtime).logs(name).decode().split()
    # Default set less CHOWN (bit 0), plus NET_ADMIN (bit 12).
    assert lines == ["65534", "65534", "/srv", "ro", "tmpfs", "from", "the", "host", "data-ro", "lo", "CapBnd:",
                     "00000000a80435fa"], lines  # fmt: skip
    assert not (shared / "out").exists()
    group = cgroups.CgroupV1(name)

    def read(controller, key):
        return open(os.path.join(group.paths[controller], key)).read().strip()

    assert read("memory", "memory.limit_in_bytes") == str(64 << 20)
    if os.path.exists(os.path.join(group.paths["memory"], "memory.memsw.limit_in_bytes")):
        assert read("memory", "memory.memsw.limit_in_bytes") == str(128 << 20)
    assert read("cpu", "cpu.shares") == "512"
    assert read("cpuset", "cpuset.cpus") == "0"
    again = container(runtime, name, **options, check=True)
    assert again["changed"] is False, again["_output"]
