"""A hostile container against mooring's runtime: root inside, with Docker's capability set, trying what
turns root in a container into root on the host; an image whose links point at the host; the connection plugin
used against links planted in a running container; and racing lifecycle calls. Every verdict is read from the
host (host files, the host's mount table) or from the kernel's own view of the process, not from the container's
word."""

import ctypes
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from conftest import REPO_DIR, container, rt, run, run_module, wait_for

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import spec
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.layers import Store

CTR = [sys.executable, str(REPO_DIR / "bin" / "mooring-ctr")]

PROBE = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    result = getattr(libc, name)(*args)
    return 0 if result == 0 else ctypes.get_errno()
def syscall(number, *args):
    result = libc.syscall(number, *args)
    return 0 if result == 0 else ctypes.get_errno()
def in_child(function, *args):
    # Each attempt in a child of its own: one that succeeds (unshare) must not change what the next one tries.
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, str(function(*args)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    return os.read(read, 100).decode()
print("keyctl", in_child(syscall, 250, 0, 0, 0, 0, 0))                 # KEYCTL_GET_KEYRING_ID: the host's keyrings
print("unshare_user", in_child(call, "unshare", 0x10000000))            # CLONE_NEWUSER
print("unshare_mount", in_child(call, "unshare", 0x00020000))           # CLONE_NEWNS
print("mount", in_child(call, "mount", b"none", b"/mnt", b"tmpfs", 0, None))
print("socket_vsock", 0 if libc.socket(40, 1, 0) >= 0 else ctypes.get_errno())
try:
    with open("/proc/sys/kernel/core_pattern", "w") as f:
        f.write("|/tmp/pwn %p")
    print("core_pattern", 0)
except OSError as e:
    print("core_pattern", e.errno)
os.mknod("/tmp/kmsg", 0o600 | 0o020000, os.makedev(1, 11))
try:
    fd = os.open("/tmp/kmsg", os.O_WRONLY)
    os.write(fd, b"mooring hostile container\n")
    print("kmsg", 0)
except OSError as e:
    print("kmsg", e.errno)
for path in ("/proc/keys", "/proc/timer_list", "/proc/kcore", "/proc/sched_debug"):
    try:
        print("read", path, len(open(path, "rb").read(4096)))
    except OSError as e:
        print("read", path, "errno", e.errno)
print("firmware", len(os.listdir("/sys/firmware")) if os.path.isdir("/sys/firmware") else 0)
for line in open("/proc/self/status"):
    if line.startswith(("Cap", "Seccomp", "NoNewPrivs")):
        print(line.strip().replace(":\t", " ").replace("\t", " "))
"""


def probe(lines):
    """'key value...' lines -> {key: value} (the last word), and {path: ...} for the read lines."""
    found = {}
    for line in lines.splitlines():
        words = line.split()
        if words and words[0] == "read":
            found[words[1]] = " ".join(words[2:])
        elif len(words) >= 2:
            found[words[0]] = words[-1]
    return found


def test_root_in_a_container_with_dockers_capabilities_cannot_reach_the_host(runtime, named):
    name = named()
    core_pattern = open("/proc/sys/kernel/core_pattern").read()  # noqa: SIM115
    started = container(runtime, name, image="debian", command="sleep 300")
    assert started["changed"] is True, started["_output"]
    code, out, err = rt(runtime).exec(name, ["python3", "-c", PROBE])
    assert code == 0, err.decode()
    seen = probe(out.decode())
    assert seen["core_pattern"] in ("30", "13"), seen  # EROFS (read-only /proc/sys) or EACCES
    assert open("/proc/sys/kernel/core_pattern").read() == core_pattern  # noqa: SIM115
    assert seen["kmsg"] == "1", seen  # EPERM from the device cgroup: made with mknod, but never opened
    for call in ("keyctl", "unshare_user", "unshare_mount", "mount", "socket_vsock"):
        assert seen[call] == "1", (call, seen)  # EPERM from the seccomp filter
    assert seen["Seccomp"] == "2" and seen["NoNewPrivs"] == "1", seen
    for path in ("/proc/keys", "/proc/timer_list", "/proc/kcore", "/proc/sched_debug"):
        # Masked: empty inside wherever the host has it (this kernel has no /proc/kcore).
        assert seen[path] == "0" if os.path.exists(path) else seen[path] == "errno 2", (path, seen)
    assert seen["firmware"] == "0"
    assert seen["CapInh"] == "0000000000000000" and seen["CapAmb"] == "0000000000000000", seen
    assert seen["CapBnd"] == seen["CapEff"] == "00000000a80425fb", seen
    # The same from the kernel's view of PID 1, read on the host.
    status = open(f"/proc/{started['container']['pid']}/status").read()  # noqa: SIM115
    assert "Seccomp:\t2" in status and "CapInh:\t0000000000000000" in status and "CapAmb:\t0000000000000000" in status


def _with_inheritable_sys_admin():
    """preexec_fn: the launcher holds CAP_SYS_ADMIN in its inheritable and ambient sets, as a careless wrapper
    (a systemd unit's AmbientCapabilities, capsh) would leave it."""
    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    assert libc.capget(ctypes.byref(header), data) == 0
    data[0].inheritable |= 1 << 21
    assert libc.capset(ctypes.byref(header), data) == 0
    assert libc.prctl(47, 2, 21, 0, 0) == 0  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN


def test_a_launcher_with_inheritable_and_ambient_sys_admin_hands_on_nothing(runtime):
    script = "grep -E '^Cap(Inh|Amb|Eff)' /proc/self/status; mount -t tmpfs none /mnt && echo MOUNTED || true"
    process = subprocess.run(
        [*CTR, "--root", runtime["root"], "--run-dir", runtime["run_dir"], "--bridge", runtime["bridge"],
         "--subnet", runtime["subnet"], "run", "--rm", "--network", "none", "debian", "/bin/sh", "-c", script],
        capture_output=True, text=True, timeout=120, check=False, preexec_fn=_with_inheritable_sys_admin,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    assert "CapInh:\t0000000000000000" in process.stdout, process.stdout
    assert "CapAmb:\t0000000000000000" in process.stdout, process.stdout
    assert "MOUNTED" not in process.stdout


def test_seccomp_unconfined_and_privileged_loosen_only_what_they_name(runtime, named):
    name = named()
    started = container(runtime, name, image="debian", command="sleep 300", security_opts=["seccomp=unconfined"])
    assert started["changed"] is True, started["_output"]
    code, out, err = rt(runtime).exec(name, ["python3", "-c", PROBE])
    assert code == 0, err.decode()
    seen = probe(out.decode())
    assert seen["Seccomp"] == "0" and seen["keyctl"] != "1"
    assert seen["core_pattern"] in ("30", "13") and seen["kmsg"] == "1"  # the other defences stay


def test_a_profile_file_in_dockers_format_is_applied(runtime, named, tmp_path):
    profile = spec.seccomp.default_profile()
    profile["syscalls"][0]["names"].remove("getcwd")
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    name = named()
    command = ["python3", "-c", "import os\ntry:\n os.getcwd(); print('cwd ok')\nexcept OSError as e: print(e.errno)"]
    started = container(runtime, name, image="debian", command=command, security_opts=[f"seccomp={path}"])
    assert started["changed"] is True or started.get("failed"), started["_output"]
    wait_for(lambda: rt(runtime).logs(name), 20, "no output")
    assert rt(runtime).logs(name).decode().strip() == "1"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"capabilities": ["NOT_A_CAP"]}, "capabilities: unknown capabilities NOT_A_CAP"),
        ({"cap_drop": ["BOGUS"]}, "cap_drop: unknown capabilities BOGUS"),
        ({"security_opts": ["seccomp=/nonexistent/profile.json"]}, "security_opts: seccomp=/nonexistent"),
        ({"security_opts": ["apparmor=docker-default"]}, "security_opts: 'apparmor=docker-default'"),
        ({"sysctls": {"kernel.core_pattern": "|/x"}}, "sysctls: kernel.core_pattern is not namespaced"),
        ({"sysctls": {"vm.max_map_count": "262144"}}, "sysctls: vm.max_map_count is not namespaced"),
        ({"devices": ["/dev/does-not-exist"]}, "devices: the host device /dev/does-not-exist does not exist"),
        ({"devices": ["/etc/passwd"]}, "devices: /etc/passwd is not a character or block device"),
        ({"ulimits": ["nofile:1048576:1048576"]}, "ulimits: 'nofile:1048576:1048576': the hard limit is above"),
        ({"ulimits": ["files:10"]}, "ulimits: 'files:10' is not name:soft[:hard]"),
        ({"oom_score_adj": 2000}, "oom_score_adj must be from -1000 to 1000, got 2000"),
    ],
)
def test_bad_security_options_fail_before_anything_is_created(runtime, named, options, message):
    name = named()
    failed = container(runtime, name, image="debian", command="sleep 30", **options)
    assert failed.get("failed") is True, failed["_output"]
    assert message in failed["msg"], failed["msg"]
    assert rt(runtime).state(name) is None
    assert not os.path.exists(os.path.join(runtime["root"], "containers", name))


def test_sysctls_ulimits_and_devices_reach_the_container(runtime, named):
    name = named()
    started = container(
        runtime, name, image="debian", command="sleep 300", sysctls={"net.ipv4.ip_forward": "1"},
        ulimits=["nofile:512:2048"], devices=["/dev/null:/dev/extra-null:rw"], oom_score_adj=500,
    )  # fmt: skip
    assert started["changed"] is True, started["_output"]
    script = (
        "cat /proc/sys/net/ipv4/ip_forward; ulimit -Sn; ulimit -Hn; echo x > /dev/extra-null && echo writable;"
        " cat /proc/self/oom_score_adj"
    )
    code, out, err = rt(runtime).exec(name, ["/bin/sh", "-c", script])
    assert code == 0, err.decode()
    assert out.decode().split() == ["1", "512", "2048", "writable", "500"]


def _image_with_layer(runtime, name, members):
    """Save in the store, as name, the Debian image with one more layer on top: members are (path, link target)
    symlinks, or (path, None) empty files. Returns the new layer's digest."""
    store = Store(runtime["root"])
    record = store.image("debian")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, target in members:
            info = tarfile.TarInfo(path)
            if target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    raw = buffer.getvalue()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    store.put_blob(digest, [raw], name, len(raw))
    store.unpack(digest, digest, name)
    store.save_image({**record, "name": name, "layers": [*record["layers"], {"blob": digest, "diff_id": digest}]})
    return digest


def _hostile_image(runtime, host_dir, host_file):
    """The Debian image with a layer on top whose /etc/hostname, /data (a volume target) and /scratch (a tmpfs
    target) are absolute links to host paths, and whose /etc/hosts links through /.. to a host file."""
    _image_with_layer(runtime, "hostile", [
        ("etc/hostname", host_file), ("data", host_dir), ("scratch", host_dir + "/tmpfs"),  # noqa: S108
        ("etc/hosts", "/../../../../.." + host_dir + "/keep"),
    ])  # fmt: skip


def _host_state(paths):
    return {path: (os.lstat(path), open(path, "rb").read() if os.path.isfile(path) else sorted(os.listdir(path)))
            for path in paths}  # fmt: skip


def test_an_image_with_links_to_the_host_starts_without_touching_the_host(runtime, named, tmp_path):
    host_dir, host_file = tmp_path / "host-dir", tmp_path / "host-file"
    host_dir.mkdir()
    (host_dir / "keep").write_text("host\n")
    host_file.write_text("host file\n")
    _hostile_image(runtime, str(host_dir), str(host_file))
    volume = tmp_path / "volume"
    volume.mkdir()
    before = _host_state([str(host_dir), str(host_dir / "keep"), str(host_file)])
    name = named()
    started = container(
        runtime, name, image="hostile", command="sleep 300", volumes=[f"{volume}:/data"], tmpfs=["/scratch"],
        hostname="inside",
    )  # fmt: skip
    assert started["changed"] is True, started["_output"]
    code, out, _err = rt(runtime).exec(name, ["/bin/sh", "-c", f"cat /etc/hostname; ls {host_dir}; touch /data/x"])
    assert code == 0
    assert out.decode().splitlines()[0] == "inside"
    assert _host_state([str(host_dir), str(host_dir / "keep"), str(host_file)]) == before
    mounts = open("/proc/self/mountinfo").read()  # noqa: SIM115
    assert str(host_dir) not in mounts and str(host_file) not in mounts
    assert (volume / "x").exists()  # the volume landed where the container's link points, inside its root


def test_a_writable_layer_too_deep_for_recursion_is_removed_whole_without_following_its_links(runtime, named, tmp_path):
    """A container may nest directories as deep as it likes and plant links to host paths among them: its removal
    must neither stop half way (shutil.rmtree recursed a level a frame: RecursionError past ~1000, which left the
    data directory behind and failed the removal) nor follow a link out of the layer."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("the host's\n")
    name = named()
    started = container(runtime, name, image="debian", command="sleep 300")
    assert started["changed"] is True, started["_output"]
    nest = (
        'my $top = shift; symlink($top, "to-host") or die; for (1..3000) { mkdir("d") or die; chdir("d") or die } '
        'symlink($top, "to-host") or die; symlink("$top/keep", "keep") or die; print "nested\\n"'
    )
    try:
        code, out, err = rt(runtime).exec(name, ["perl", "-e", nest, str(victim)])
        assert (code, out) == (0, b"nested\n"), err
        removed = container(runtime, name, state="absent", stop_timeout=1)
        assert removed["changed"] is True and not removed.get("failed"), removed["_output"]
        assert not os.path.exists(rt(runtime).data_dir(name))
        assert sorted(os.listdir(victim)) == ["keep"] and (victim / "keep").read_text() == "the host's\n"
    finally:
        # What a failed removal left: pytest's clean-up of old temporary directories recurses (shutil.rmtree) and
        # would fail every later session on this tree. GNU rm walks it without recursion.
        container(runtime, name, state="absent", stop_timeout=1)
        run(["rm", "-rf", "--one-file-system", rt(runtime).data_dir(name)])


def test_the_connection_plugin_never_follows_a_planted_link_to_the_host(runtime, named, tmp_path):
    host_file = tmp_path / "host-secret"
    host_file.write_text("host secret\n")
    host_file.chmod(0o600)
    before = _host_state([str(host_file)])
    name = named()
    assert container(runtime, name, image="debian", command="sleep 300")["changed"] is True
    plant = f"mkdir -p {tmp_path}; ln -s {host_file} /tmp/out; ln -s {host_file} /tmp/in; ln -s / /tmp/root"
    assert rt(runtime).exec(name, ["/bin/sh", "-c", plant])[0] == 0
    inventory = tmp_path / "inventory"
    inventory.write_text(
        f"{name} ansible_connection=mooring.ops.ns_container ansible_ns_container_root={runtime['root']} "
        f"ansible_ns_container_run_dir={runtime['run_dir']} ansible_python_interpreter=/usr/bin/python3\n"
    )
    payload = tmp_path / "payload"
    payload.write_text("from the controller\n")
    fetched = tmp_path / "fetched"
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        f"- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.copy: {{src: {payload}, dest: /tmp/out}}\n"
        f"    - ansible.builtin.copy: {{src: {payload}, dest: /tmp/root{host_file}}}\n"
        f"    - ansible.builtin.fetch: {{src: /tmp/in, dest: {fetched}, flat: true, fail_on_missing: false}}\n"
    )
    played = run(["ansible-playbook", "-i", str(inventory), str(playbook)])
    assert _host_state([str(host_file)]) == before, played.stdout[-3000:]
    assert "host secret" not in (fetched.read_text() if fetched.exists() else "")
    # The writes went where the container's links lead inside the container.
    code, out, _err = rt(runtime).exec(name, ["cat", str(host_file)])
    assert code == 0 and out.decode() == "from the controller\n", played.stdout[-3000:]


def test_parallel_start_stop_and_exec_leave_a_valid_state_every_time(runtime, named):
    name = named()
    runtime_api = rt(runtime)
    assert container(runtime, name, image="debian", command="sleep 300", stop_timeout=1)["changed"] is True
    errors = []

    def exec_loop():
        for _round in range(10):
            try:
                runtime_api.exec(name, ["true"])
            except Exception as exc:
                errors.append(str(exc))

    for _round in range(8):
        worker = threading.Thread(target=exec_loop)
        worker.start()
        with runtime_api.lock(name):
            runtime_api.stop(name, timeout=1)
        state = json.load(open(os.path.join(runtime["run_dir"], "containers", name, "state.json")))  # noqa: SIM115
        assert state["status"] == "exited" and state["stop_requested"] is True, state
        with runtime_api.lock(name):
            runtime_api.start(name)
        worker.join(60)
        state = json.load(open(os.path.join(runtime["run_dir"], "containers", name, "state.json")))  # noqa: SIM115
        assert state["status"] == "running" and state["stop_requested"] is False, state
    assert all("is not running" in error for error in errors), errors
    leftovers = [entry for entry in os.listdir(os.path.join(runtime["run_dir"], "containers", name))
                 if entry.startswith(".")]  # fmt: skip
    assert leftovers == []


def test_a_container_whose_shim_died_is_removed_with_all_its_processes(runtime, named):
    name = named()
    started = container(runtime, name, image="debian", command="sh -c 'sleep 300 & sleep 300'")
    assert started["changed"] is True, started["_output"]
    state = rt(runtime).state(name)
    os.kill(state["shim_pid"], 9)
    wait_for(lambda: rt(runtime).state(name)["status"] == "exited", 10, "the shim did not die")
    pids = [int(pid) for pid in open(os.path.join(state["cgroup"], "cgroup.procs")).read().split()]  # noqa: SIM115
    assert pids
    removed = container(runtime, name, state="absent", stop_timeout=1)
    assert removed["changed"] is True, removed["_output"]
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]  # noqa: SIM115


def test_garbage_collection_keeps_the_layers_of_a_container_whose_image_was_removed(runtime, named):
    store = Store(runtime["root"])
    digest = _image_with_layer(runtime, "debian-copy", [("unique-" + os.urandom(6).hex(), None)])
    name = named()
    started = container(runtime, name, image="debian-copy", command="sleep 300")
    assert started["changed"] is True, started["_output"]
    removed = run_module("mooring.ops.ns_image", {"root": runtime["root"], "name": "debian-copy", "state": "absent"})
    assert removed["changed"] is True, removed["_output"]
    assert os.path.isdir(store.layer_path(digest)), removed["removed"]
    assert rt(runtime).exec(name, ["true"])[0] == 0


@pytest.mark.parametrize(("security_opts", "euid"), [([], "65534"), (["no-new-privileges=false"], "0")])
def test_a_setuid_root_program_gives_a_non_root_user_nothing_under_no_new_privs(runtime, named, security_opts, euid):
    """Root plants a setuid-root copy of id; the container's non-root user runs it. Under no_new_privs (the
    default) the effective uid stays 65534; with it turned off, the same program says 0, which shows the test
    can tell the two apart."""
    name = named()
    started = container(
        runtime, name, image="debian", command="sleep 300", user="65534:65534", security_opts=security_opts
    )
    assert started["changed"] is True, started["_output"]
    plant = "cp /usr/bin/id /usr/local/bin/id-setuid && chmod 4755 /usr/local/bin/id-setuid"
    planted = rt(runtime).exec(name, ["/bin/sh", "-c", plant], user="0")
    assert planted[0] == 0, planted[2].decode()
    code, out, err = rt(runtime).exec(name, ["/usr/local/bin/id-setuid", "-u"])
    assert code == 0, err.decode()
    assert out.decode().strip() == euid


def test_a_stop_is_never_lost_against_a_container_that_restarts_itself(runtime, named):
    """The shim records each exit and decides on a restart while stop asks for the end: 30 stops, each timed
    against a container (restart_policy always) that exits and is restarted every few milliseconds. Every stop
    must leave it exited, and it must stay so."""
    name = named()
    started = container(runtime, name, image="debian", command="sleep 0.02", restart_policy="always", stop_timeout=1)
    assert started.get("failed") is not True, started["_output"]
    runtime_api = rt(runtime)
    for trial in range(30):
        with runtime_api.lock(name):
            state = runtime_api.state(name)
            if state["status"] not in ("running", "starting"):
                runtime_api.start(name)
            time.sleep(0.005 * (trial % 7))
            runtime_api.stop(name, timeout=1)
        state = runtime_api.state(name)
        assert state["status"] == "exited" and state["stop_requested"] is True, (trial, state)
    time.sleep(1)
    assert runtime_api.state(name)["status"] == "exited"
    assert not _alive_shim(runtime_api.state(name).get("shim_pid"))


def test_a_start_during_the_restart_back_off_leaves_the_restart_to_the_shim_that_is_there(runtime, named):
    """Between two runs the shim sleeps (restart back-off) with the container exited. A start then must not fork
    a second shim beside it: two would set up and tear down the same container's network at once (that race
    once failed the test above with "RTNETLINK answers: No such device")."""
    name = named()
    started = container(runtime, name, image="debian", command="sleep 0.02", restart_policy="always", stop_timeout=1)
    assert started.get("failed") is not True, started["_output"]
    runtime_api = rt(runtime)
    deadline = time.monotonic() + 60
    with runtime_api.lock(name):
        while True:
            state = runtime_api.state(name)
            # Exited, its shim alive, no stop asked for: the policy (always) has it sleeping before the next run.
            if state["status"] == "exited" and _alive_shim(state.get("shim_pid")) and state["restart_count"] >= 3:
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.01)
        shim = state["shim_pid"]
        restarted = runtime_api.start(name)
        assert restarted["status"] in ("running", "exited"), restarted
        assert restarted["shim_pid"] == shim
        assert not restarted.get("error"), restarted
        stopped = runtime_api.stop(name, timeout=1)
    assert stopped["status"] == "exited" and not _alive_shim(shim), stopped


def _alive_shim(pid):
    return bool(pid) and os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
