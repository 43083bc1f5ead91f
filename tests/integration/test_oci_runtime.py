"""bin/mooring-ctr as an OCI runtime over a bundle (create, start, state, kill, delete, features): the contract
runc offers containerd's shim and the OCI validation suite, checked from the host on this kernel. The bundle's
root is the lab's Debian image unpacked once (read-only for every container); each container's output goes to
a file of the test's own, and everything a container had (state, cgroup, processes) is checked gone after it."""

import json
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO_DIR, host_disk, run

IMAGE = "mooring/debian-python:bookworm"
CTR = [sys.executable, str(REPO_DIR / "bin" / "mooring-ctr")]
CAPABILITY_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID"]


@pytest.fixture(scope="module")
def rootfs(lab_registry, tmp_path_factory):
    """The lab's Debian image (with Python) as a plain directory, unpacked with its owners."""
    root = tmp_path_factory.mktemp("oci") / "rootfs"
    root.mkdir()
    created = run(["docker", "create", IMAGE, "true"])
    assert created.returncode == 0, created.stderr
    container = created.stdout.strip()
    try:
        exporter = subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE)
        unpacked = subprocess.run(
            ["tar", "-x", "--numeric-owner", "-C", str(root)], stdin=exporter.stdout, capture_output=True, check=False
        )
        exporter.stdout.close()
        assert exporter.wait() == 0 and unpacked.returncode == 0, unpacked.stderr
    finally:
        run(["docker", "rm", "-f", container])
    return str(root)


@pytest.fixture
def oci(tmp_path):
    """mooring-ctr with a state root of the test's own; every container left is force-deleted at the end and must
    leave nothing (state directory, cgroup) behind."""
    state_root = str(tmp_path / "state")
    calls = iter(range(1 << 30))

    def command(*argv, stdout=None, timeout=60):
        """Files, not pipes, for the output: create hands its stdio to the container's process (as runc does),
        which would hold a pipe open for its whole life."""
        number = next(calls)
        out_path, err_path = tmp_path / f".call{number}.out", tmp_path / f".call{number}.err"
        with open(err_path, "w") as err, open(out_path, "w") as out:
            process = subprocess.run(
                [*CTR, "--root", state_root, *argv], stdout=stdout or out, stderr=err, stdin=subprocess.DEVNULL,
                timeout=timeout, check=False,
            )  # fmt: skip
        return subprocess.CompletedProcess(process.args, process.returncode, out_path.read_text(), err_path.read_text())

    command.root = state_root
    yield command
    left = [name for name in os.listdir(state_root) if not name.startswith(".")] if os.path.isdir(state_root) else []
    for name in left:
        command("delete", "--force", name)
        assert not os.path.exists(cgroup_dir(name)), name
    assert not left, f"containers left by the test: {left}"
    locks = [name for name in os.listdir(state_root) if name.endswith(".lock")] if os.path.isdir(state_root) else []
    assert not locks, f"lock files of containers gone: {locks}"


def cgroup_dir(container_id, parent="mooring-oci"):
    return f"/sys/fs/cgroup/memory/{parent}/{container_id}"


def config(rootfs, args, **changes):
    """A bundle's config.json as `runc spec` writes it (namespaces, mounts, masked and read-only paths), with
    the capabilities of a restricted container, on the shared read-only root."""
    document = {
        "ociVersion": "1.0.2",
        "root": {"path": rootfs, "readonly": True},
        "hostname": "oci-test",
        "process": {
            "args": args, "cwd": "/", "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/root"],
            "user": {"uid": 0, "gid": 0}, "noNewPrivileges": True,
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}],
            "capabilities": {kind: list(DEFAULT_CAPS) for kind in ("bounding", "effective", "permitted")},
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",  # noqa: S108 - inside the container
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",  # noqa: S108 - inside the container
             "options": ["nosuid", "nodev"]},
        ],
        "linux": {
            "namespaces": [{"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "maskedPaths": ["/proc/kcore", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }  # fmt: skip
    for key, value in changes.items():
        target = document
        *parents, last = key.split("__")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
    return document


def bundle(tmp_path, document, name="bundle"):
    directory = tmp_path / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(document))
    return str(directory)


def new_id():
    return "oci-" + uuid.uuid4().hex[:10]


def wait_status(oci, container_id, wanted, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(oci("state", container_id).stdout)
        if state["status"] == wanted or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def test_the_lifecycle_create_start_state_kill_delete(oci, rootfs, tmp_path):
    """create leaves PID 1 waiting (the process has not run: its marker is not there), in the container's cgroup
    and with the pid the pid file names; start runs it; kill signals it; delete removes state and cgroup."""
    marker = tmp_path / "out"
    marker.mkdir()
    document = config(rootfs, ["sh", "-c", "echo started > /out/marker; exec sleep 300"])
    document["mounts"].append({"destination": "/out", "type": "bind", "source": str(marker), "options": ["rbind"]})
    container_id = new_id()
    created = oci("create", "--bundle", bundle(tmp_path, document), "--pid-file", str(tmp_path / "pid"), container_id)
    assert created.returncode == 0, created.stderr
    state = json.loads(oci("state", container_id).stdout)
    assert state["status"] == "created" and state["id"] == container_id and state["ociVersion"].startswith("1.")
    assert state["bundle"] == str(tmp_path / "bundle") and state["annotations"] == {}
    assert int((tmp_path / "pid").read_text()) == state["pid"] > 0
    assert str(state["pid"]) in Path(cgroup_dir(container_id), "cgroup.procs").read_text().split()
    assert not (marker / "marker").exists(), "the process ran before start"
    assert oci("delete", container_id).returncode != 0, "delete of a created container must be refused"
    assert json.loads(oci("state", container_id).stdout)["status"] == "created"

    started = oci("start", container_id)
    assert started.returncode == 0, started.stderr
    assert (marker / "marker").read_text() == "started\n"
    assert json.loads(oci("state", container_id).stdout)["status"] == "running"
    again = oci("start", container_id)
    assert again.returncode != 0 and "running" in again.stderr
    refused = oci("delete", container_id)
    assert refused.returncode != 0 and "running" in refused.stderr
    assert os.path.exists(f"/proc/{state['pid']}")

    assert oci("kill", container_id, "KILL").returncode == 0
    stopped = wait_status(oci, container_id, "stopped")
    assert stopped["status"] == "stopped"
    assert oci("kill", container_id, "TERM").returncode != 0, "kill of a stopped container must be refused"
    deleted = oci("delete", container_id)
    assert deleted.returncode == 0, deleted.stderr
    assert not os.path.exists(cgroup_dir(container_id))
    assert not os.path.exists(os.path.join(oci.root, container_id))
    gone = oci("state", container_id)
    assert gone.returncode != 0 and container_id in gone.stderr


def test_exec_ps_pause_and_resume_as_containerds_shim_calls_them(oci, rootfs, tmp_path):
    """exec --process FILE --detach --pid-file (the shim's call) runs the file's process in the container's
    namespaces and cgroup with the file's user, cwd, env and capabilities; exec without --detach returns the
    process's status; ps lists the cgroup's pids; pause freezes the cgroup and resume thaws it."""
    marker = tmp_path / "out"
    marker.mkdir()
    marker.chmod(0o777)  # the exec'd process writes as nobody
    document = config(rootfs, ["sleep", "300"])
    document["mounts"].append({"destination": "/out", "type": "bind", "source": str(marker), "options": ["rbind"]})
    container_id = new_id()
    assert oci("create", "--bundle", bundle(tmp_path, document), container_id).returncode == 0
    assert oci("start", container_id).returncode == 0
    init = json.loads(oci("state", container_id).stdout)["pid"]
    report = (
        "id -u > /out/uid; pwd > /out/cwd; echo $GREETING > /out/env; hostname > /out/hostname; "
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status > /out/status; exec sleep 300"
    )
    process = {
        "args": ["sh", "-c", report], "cwd": "/usr", "env": ["PATH=/usr/bin:/bin", "GREETING=hello"],
        "user": {"uid": 65534, "gid": 65534}, "noNewPrivileges": True,
        "capabilities": {kind: ["CAP_KILL"] for kind in CAPABILITY_SETS},  # ambient: kept through exec as nobody
    }  # fmt: skip
    (tmp_path / "process.json").write_text(json.dumps(process))
    pid_file = tmp_path / "exec.pid"
    execed = oci("exec", "--process", str(tmp_path / "process.json"), "--detach", "--pid-file", str(pid_file),
                 container_id)  # fmt: skip
    assert execed.returncode == 0, execed.stderr
    pid = int(pid_file.read_text())
    for kind in ("pid", "mnt", "net", "ipc", "uts", "cgroup"):
        assert os.readlink(f"/proc/{pid}/ns/{kind}") == os.readlink(f"/proc/{init}/ns/{kind}"), kind
    assert str(pid) in Path(cgroup_dir(container_id), "cgroup.procs").read_text().split()
    deadline = time.monotonic() + 10
    while not (marker / "status").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (marker / "uid").read_text() == "65534\n" and (marker / "cwd").read_text() == "/usr\n"
    assert (marker / "env").read_text() == "hello\n" and (marker / "hostname").read_text() == "oci-test\n"
    status = dict(line.split(":\t") for line in (marker / "status").read_text().splitlines())
    assert status == {"CapEff": "0000000000000020", "NoNewPrivs": "1"}

    listed = oci("ps", "--format", "json", container_id)
    assert listed.returncode == 0 and sorted(json.loads(listed.stdout)) == sorted([init, pid]), listed.stdout
    assert oci("exec", container_id, "sh", "-c", "exit 7").returncode == 7
    missing = oci("exec", container_id, "/no/such/program")
    assert missing.returncode != 0 and "/no/such/program" in missing.stderr
    assert sorted(json.loads(oci("ps", "--format", "json", container_id).stdout)) == sorted([init, pid])

    assert oci("pause", container_id).returncode == 0
    assert json.loads(oci("state", container_id).stdout)["status"] == "paused"
    assert Path(cgroup_dir(container_id).replace("/memory/", "/freezer/"), "freezer.state").read_text() == "FROZEN\n"
    refused = oci("exec", container_id, "true")
    assert refused.returncode != 0 and "paused" in refused.stderr
    assert oci("pause", container_id).returncode != 0, "pause of a paused container must be refused"
    assert oci("resume", container_id).returncode == 0
    assert json.loads(oci("state", container_id).stdout)["status"] == "running"
    assert oci("resume", container_id).returncode != 0, "resume of a running container must be refused"

    assert oci("kill", container_id, "KILL").returncode == 0
    assert wait_status(oci, container_id, "stopped")["status"] == "stopped"
    stopped = oci("exec", container_id, "true")
    assert stopped.returncode != 0 and "stopped" in stopped.stderr
    assert oci("delete", container_id).returncode == 0
    assert not os.path.exists(f"/proc/{pid}") or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert not os.path.exists(cgroup_dir(container_id))


def test_a_waited_exec_holds_no_lock_and_its_stdin_ends(oci, rootfs, tmp_path):
    """An exec that is waited for (mooring-ctr's, ns_container's) holds no lock of the container's while its
    process runs (it did: the forked side kept the caller's lock descriptor), nor the other end of a pipe given as
    its stdin (the process would never see EOF)."""
    marker = tmp_path / "out"
    marker.mkdir()
    document = config(rootfs, ["sleep", "300"])
    document["mounts"].append({"destination": "/out", "type": "bind", "source": str(marker), "options": ["rbind"]})
    container_id = new_id()
    assert oci("create", "--bundle", bundle(tmp_path, document), container_id).returncode == 0
    assert oci("start", container_id).returncode == 0
    script = "cat > /out/stdin; touch /out/eof; exec sleep 300"
    held = subprocess.Popen(
        [*CTR, "--root", oci.root, "exec", container_id, "sh", "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        held.stdin.write(b"to the end\n")
        held.stdin.close()
        deadline = time.monotonic() + 10
        while not (marker / "eof").exists():
            assert time.monotonic() < deadline, "the exec'd process never saw its stdin end"
            time.sleep(0.05)
        assert (marker / "stdin").read_bytes() == b"to the end\n"
        # Each call below would wait for the sleep (300 s) behind a held lock: the helper's 60 s timeout fails it.
        assert oci("pause", container_id, timeout=30).returncode == 0
        assert oci("resume", container_id, timeout=30).returncode == 0
    finally:
        held.kill()
        held.wait()
    assert oci("kill", container_id, "KILL").returncode == 0
    assert wait_status(oci, container_id, "stopped")["status"] == "stopped"
    assert oci("delete", container_id).returncode == 0


def read_until(master, text, timeout=10):
    """What the pty's master gives until text appears (bounded in time)."""
    seen, deadline = b"", time.monotonic() + timeout
    while text.encode() not in seen and time.monotonic() < deadline:
        ready, _w, _x = select.select([master], [], [], 0.2)
        if ready:
            seen += os.read(master, 4096)
    return seen.decode(errors="replace").replace("\r", "")


def test_a_terminal_goes_to_the_console_socket(oci, rootfs, tmp_path):
    """create --console-socket (docker run -t): a pty of the container's own devpts, its master sent to the socket
    (SCM_RIGHTS), the slave the process's controlling terminal, stdio and /dev/console; exec --tty gets its own.
    A terminal without a socket, or a socket without a terminal, is refused and leaves nothing."""
    console_path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(console_path)
    server.listen(4)
    document = config(rootfs, ["sh", "-c", "tty; ls -l /dev/console; echo created-done; exec sleep 300"])
    document["process"]["terminal"] = True
    path = bundle(tmp_path, document)
    refused = oci("create", "--bundle", path, new_id())
    assert refused.returncode != 0 and "console-socket" in refused.stderr
    container_id = new_id()
    created = oci("create", "--bundle", path, "--console-socket", console_path, container_id)
    assert created.returncode == 0, created.stderr
    connection, _address = server.accept()
    with connection:
        _message, fds, _flags, _address = socket.recv_fds(connection, 1024, 1)
    master = fds[0]
    try:
        assert oci("start", container_id).returncode == 0
        shown = read_until(master, "created-done")
        assert "/dev/pts/0\n" in shown and "136, 0" in shown, shown
        init = json.loads(oci("state", container_id).stdout)["pid"]
        assert os.readlink(f"/proc/{init}/fd/0") == "/dev/pts/0"
        fields = Path(f"/proc/{init}/stat").read_text().rsplit(")", 1)[1].split()
        assert fields[3] == str(init) and fields[4] != "0", "the process leads its session with a terminal"
        assert os.stat(f"/proc/{init}/root/dev/pts").st_dev != os.stat("/dev/pts").st_dev
    finally:
        os.close(master)

    report = "tty; echo exec-done; exec sleep 300"
    execed = oci("exec", "--tty", "--console-socket", console_path, "--detach", "--pid-file",
                 str(tmp_path / "exec.pid"), container_id, "sh", "-c", report)  # fmt: skip
    assert execed.returncode == 0, execed.stderr
    connection, _address = server.accept()
    with connection:
        _message, fds, _flags, _address = socket.recv_fds(connection, 1024, 1)
    try:
        assert "/dev/pts/1\nexec-done" in read_until(fds[0], "exec-done")
    finally:
        os.close(fds[0])
    without = oci("exec", "--console-socket", console_path, container_id, "true")
    assert without.returncode != 0 and "terminal is false" in without.stderr
    server.close()
    assert oci("delete", "--force", container_id).returncode == 0
    assert not os.path.exists(cgroup_dir(container_id))


@pytest.fixture
def reachable(rootfs):
    """A directory every user may traverse, with the shared root bound in at rootfs/: what a user namespace's root
    (an unprivileged host user) must be able to reach, as under runc (pytest's own temporary directory is 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="mooring-userns-"))
    directory.chmod(0o755)
    (directory / "rootfs").mkdir()
    bound = run(["mount", "--bind", rootfs, str(directory / "rootfs")])
    assert bound.returncode == 0, bound.stderr
    yield directory
    run(["umount", str(directory / "rootfs")])
    shutil.rmtree(directory)


def test_a_user_namespace_maps_the_containers_root_to_an_unprivileged_host_user(oci, reachable):
    """linux.uidMappings/gidMappings with a user namespace: root inside is host uid 100000 (what the host sees in
    /proc), owns nothing of the host (a root-owned host directory bound in read-write stays unwritable), gets the
    host's device nodes bound in (none can be made), and exec joins the namespace as the same root."""
    marker, guarded = reachable / "out", reachable / "root-only"
    for mount_point in ("out", "guarded"):  # made by the host's root: the container's may not write the image
        (reachable / "rootfs" / mount_point).mkdir(exist_ok=True)
    marker.mkdir()
    marker.chmod(0o777)
    guarded.mkdir(mode=0o755)
    script = (
        "id -u > /out/uid; cat /proc/self/uid_map > /out/map; (touch /guarded/x 2>/dev/null && echo wrote || "
        "echo refused) > /out/guarded; head -c 4 /dev/zero | wc -c > /out/zero; touch /out/done; exec sleep 300"
    )
    document = config(str(reachable / "rootfs"), ["sh", "-c", script])
    document["linux"]["namespaces"].append({"type": "user"})
    document["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    document["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    document["mounts"] += [
        {"destination": "/out", "type": "bind", "source": str(marker), "options": ["rbind"]},
        {"destination": "/guarded", "type": "bind", "source": str(guarded), "options": ["rbind", "rw"]},
    ]
    container_id = new_id()
    created = oci("create", "--bundle", bundle(reachable, document), container_id)
    assert created.returncode == 0, created.stderr
    assert oci("start", container_id).returncode == 0
    deadline = time.monotonic() + 10
    # Not the files themselves: the shell makes each before the command that fills it has written.
    while not (marker / "done").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (marker / "uid").read_text() == "0\n"
    assert (marker / "map").read_text().split() == ["0", "100000", "65536"]
    assert (marker / "guarded").read_text() == "refused\n" and not (guarded / "x").exists()
    assert (marker / "zero").read_text().strip() == "4"
    init = json.loads(oci("state", container_id).stdout)["pid"]
    host_ids = dict(line.split(":", 1) for line in Path(f"/proc/{init}/status").read_text().splitlines())
    assert host_ids["Uid"].split()[0] == "100000" and host_ids["Gid"].split()[0] == "100000"
    assert os.readlink(f"/proc/{init}/ns/user") != os.readlink("/proc/self/ns/user")
    shown = oci("exec", container_id, "sh", "-c", "id -u; cat /proc/self/uid_map")
    assert shown.returncode == 0 and shown.stdout.split() == ["0", "0", "100000", "65536"], shown.stderr
    assert oci("delete", "--force", container_id).returncode == 0
    assert not os.path.exists(cgroup_dir(container_id))


def test_the_process_gets_the_runtimes_stdio_and_exits_to_stopped(oci, rootfs, tmp_path):
    container_id = new_id()
    path = bundle(tmp_path, config(rootfs, ["sh", "-c", "echo out; echo err >&2"]))
    with open(tmp_path / "stdout", "w") as output:
        created = oci("create", "--bundle", path, container_id, stdout=output)
    assert created.returncode == 0, created.stderr
    assert oci("start", container_id).returncode == 0
    assert wait_status(oci, container_id, "stopped")["status"] == "stopped"
    assert (tmp_path / "stdout").read_text() == "out\n"
    assert oci("delete", container_id).returncode == 0


def test_the_spec_fields_are_applied_as_the_container_sees_them(oci, rootfs, tmp_path):
    """One container reports what it sees: hostname, user and groups, capability sets, no_new_privs, rlimits,
    oom score, a read-only root, masked and read-only /proc paths, a sysctl of its IPC namespace, its loopback
    up, a device node of linux.devices, its own cgroup as /sys/fs/cgroup, and the memory and pids limits."""
    probe = r"""
import json, os, socket, fcntl, struct
def attempt(f):
    try:
        f(); return "ok"
    except OSError as e:
        return e.strerror
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
probe = socket.socket()
lo = struct.unpack("16sH22x", fcntl.ioctl(probe.fileno(), 0x8913, struct.pack("16sH22x", b"lo", 0)))[1]
print(json.dumps({
  "hostname": socket.gethostname(), "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
  "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(), "cap_amb": status["CapAmb"].strip(),
  "no_new_privs": status["NoNewPrivs"].strip(), "nofile": open("/proc/self/limits").read().count("1024"),
  "oom": open("/proc/self/oom_score_adj").read().strip(),
  "write_root": attempt(lambda: open("/probe", "w")), "timer_list": len(open("/proc/timer_list").read()),
  "write_proc_sys": attempt(lambda: open("/proc/sys/kernel/hostname", "w").write("x")),
  "shmmni": open("/proc/sys/kernel/shmmni").read().strip(), "lo_up": bool(lo & 1),
  "device": os.path.exists("/dev/oci-null") and os.major(os.stat("/dev/oci-null").st_rdev),
  "cgroup_procs": sorted(open("/sys/fs/cgroup/memory/cgroup.procs").read().split()),
  "memory": open("/sys/fs/cgroup/memory/memory.limit_in_bytes").read().strip(),
  "pids": open("/sys/fs/cgroup/pids/pids.max").read().strip(),
  "cpu": [open(f"/sys/fs/cgroup/cpu/cpu.cfs_{k}_us").read().strip() for k in ("quota", "period")],
}))
"""
    document = config(rootfs, ["python3", "-c", probe], hostname="probe-host")
    document["process"].update(
        user={"uid": 1000, "gid": 1000, "additionalGids": [5]}, oomScoreAdj=123,
        capabilities={"bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"], "effective": ["CAP_NET_BIND_SERVICE"],
                      "permitted": ["CAP_NET_BIND_SERVICE"], "inheritable": ["CAP_NET_BIND_SERVICE"],
                      "ambient": ["CAP_NET_BIND_SERVICE"]},
    )  # fmt: skip
    document["linux"]["sysctl"] = {"kernel.shmmni": "1234"}
    document["linux"]["devices"] = [{"path": "/dev/oci-null", "type": "c", "major": 1, "minor": 3, "fileMode": 438}]
    document["linux"]["resources"].update(memory={"limit": 64 << 20}, pids={"limit": 32},
                                          cpu={"quota": 25000, "period": 50000})  # fmt: skip
    container_id = new_id()
    with open(tmp_path / "stdout", "w") as output:
        created = oci("create", "--bundle", bundle(tmp_path, document), container_id, stdout=output)
    assert created.returncode == 0, created.stderr
    assert oci("start", container_id).returncode == 0
    assert wait_status(oci, container_id, "stopped")["status"] == "stopped"
    seen = json.loads((tmp_path / "stdout").read_text())
    net_bind = f"{1 << 10:016x}"
    assert seen["hostname"] == "probe-host" and (seen["uid"], seen["gid"], seen["groups"]) == (1000, 1000, [5])
    assert seen["cap_eff"] == seen["cap_amb"] == net_bind, seen
    assert seen["cap_bnd"] == f"{(1 << 10) | (1 << 5):016x}"
    assert seen["no_new_privs"] == "1" and seen["nofile"] >= 2 and seen["oom"] == "123"
    assert seen["write_root"] == "Read-only file system" and seen["timer_list"] == 0
    assert seen["write_proc_sys"] == "Read-only file system"
    assert seen["shmmni"] == "1234" and seen["lo_up"] is True and seen["device"] == 1
    assert seen["cgroup_procs"] == ["1"], "the cgroup mount must show the container's own cgroup"
    assert seen["memory"] == str(64 << 20) and seen["pids"] == "32" and seen["cpu"] == ["25000", "50000"]
    assert run(["sysctl", "-n", "kernel.shmmni"]).stdout.strip() != "1234", "the sysctl reached the host"
    assert oci("delete", container_id).returncode == 0


def test_block_io_throttles_are_applied_and_what_the_host_lacks_is_refused_by_name(oci, rootfs, tmp_path):
    """linux.resources.blockIO's throttles reach the container's blkio cgroup (read from the host); a weight or a
    huge page limit that this host cannot apply (no proportional I/O scheduler, no hugetlb hierarchy here) is
    refused naming the field, with nothing left; where the host has them, they are applied and checked."""
    device = host_disk()
    if device is None or not os.path.isdir("/sys/fs/cgroup/blkio"):
        pytest.skip("this host has no disk or no blkio hierarchy")
    _name, major, minor = device
    document = config(rootfs, ["sleep", "300"])
    document["linux"]["resources"]["blockIO"] = {
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1 << 20}],
        "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}],
    }
    container_id = new_id()
    created = oci("create", "--bundle", bundle(tmp_path, document), container_id)
    assert created.returncode == 0, created.stderr
    blkio = cgroup_dir(container_id).replace("/memory/", "/blkio/")
    assert Path(blkio, "blkio.throttle.read_bps_device").read_text() == f"{major}:{minor} {1 << 20}\n"
    assert Path(blkio, "blkio.throttle.write_iops_device").read_text() == f"{major}:{minor} 100\n"
    assert Path(blkio, "blkio.throttle.read_iops_device").read_text() == ""
    init = json.loads(oci("state", container_id).stdout)["pid"]
    assert str(init) in Path(blkio, "cgroup.procs").read_text().split()
    assert oci("delete", "--force", container_id).returncode == 0
    assert not os.path.exists(blkio)

    # What this host can apply decides which answer is right: a weight where the blkio hierarchy has a weight
    # file (BFQ's, here), a device's weight where the disk uses BFQ (mq-deadline here), huge page limits where the
    # hugetlb hierarchy is mounted (not here).
    bfq_disk = "[bfq]" in Path(f"/sys/block/{_name}/queue/scheduler").read_text()
    hugetlb = os.path.exists("/sys/fs/cgroup/hugetlb/hugetlb.2MB.limit_in_bytes")
    for field, value, applied in (
        ("blockIO", {"weight": 500}, lambda group: Path(group, "blkio.bfq.weight").read_text().split()[-1] == "500"),
        ("blockIO", {"weightDevice": [{"major": major, "minor": minor, "weight": 300}]}, bfq_disk or None),
        ("hugepageLimits", [{"pageSize": "2MB", "limit": 2 << 20}], hugetlb or None),
    ):
        document = config(rootfs, ["sleep", "300"])
        document["linux"]["resources"][field] = value
        container_id = new_id()
        created = oci("create", "--bundle", bundle(tmp_path, document, name=container_id), container_id)
        group = cgroup_dir(container_id).replace("/memory/", "/blkio/")
        if created.returncode == 0:
            assert applied is not None, f"{value} was accepted on a host that cannot apply it"
            assert applied is True or applied(group), f"{value} is not in {group}"
            assert oci("delete", "--force", container_id).returncode == 0
        else:
            assert applied is None or callable(applied), f"{value} was refused: {created.stderr}"
            assert f"linux.resources.{field}" in created.stderr, created.stderr
        assert not os.path.exists(os.path.join(oci.root, container_id))
        for hierarchy in ("memory", "blkio", "hugetlb"):
            assert not os.path.exists(cgroup_dir(container_id).replace("/memory/", f"/{hierarchy}/")), hierarchy


def test_update_changes_the_limits_of_a_running_container_and_refuses_bad_ones(oci, rootfs, tmp_path):
    """update (runc's options, or --resources FILE with linux.resources) rewrites the cgroup's limits of a
    running container, seen from the host, and records them in its config.json; a bad value changes nothing; a
    stopped container is refused."""
    document = config(rootfs, ["sleep", "300"])
    document["linux"]["resources"].update(memory={"limit": 64 << 20}, pids={"limit": 32})
    container_id = new_id()
    assert oci("create", "--bundle", bundle(tmp_path, document), container_id).returncode == 0
    assert oci("start", container_id).returncode == 0
    memory, pids = Path(cgroup_dir(container_id)), Path(cgroup_dir(container_id).replace("/memory/", "/pids/"))
    cpu = Path(cgroup_dir(container_id).replace("/memory/", "/cpu/"))

    updated = oci("update", "--memory", str(128 << 20), "--pids-limit", "64", container_id)
    assert updated.returncode == 0, updated.stderr
    assert (memory / "memory.limit_in_bytes").read_text() == f"{128 << 20}\n"
    assert (pids / "pids.max").read_text() == "64\n"
    (tmp_path / "resources.json").write_text(json.dumps({"cpu": {"quota": 20000, "period": 100000}}))
    assert oci("update", "--resources", str(tmp_path / "resources.json"), container_id).returncode == 0
    assert [(cpu / f"cpu.cfs_{key}_us").read_text() for key in ("quota", "period")] == ["20000\n", "100000\n"]
    recorded = json.loads(Path(oci.root, container_id, "config.json").read_text())["linux"]["resources"]
    assert (recorded["memory"]["limit"], recorded["pids"]["limit"], recorded["cpu"]["quota"]) == (128 << 20, 64, 20000)

    for argv, message in (
        (["--memory", "lots"], "--memory takes a number"),
        (["--resources", str(tmp_path / "bad.json")], "linux.resources.pids.limit must be a number"),
        ([], "give --resources FILE or a limit"),
    ):
        (tmp_path / "bad.json").write_text(json.dumps({"pids": {"limit": True}, "memory": {"limit": 1 << 20}}))
        refused = oci("update", *argv, container_id)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr
    assert (memory / "memory.limit_in_bytes").read_text() == f"{128 << 20}\n", "a refused update changed a limit"

    assert oci("kill", container_id, "KILL").returncode == 0
    assert wait_status(oci, container_id, "stopped")["status"] == "stopped"
    stopped = oci("update", "--pids-limit", "10", container_id)
    assert stopped.returncode != 0 and "update needs a created, running or paused one" in stopped.stderr
    assert oci("delete", container_id).returncode == 0


def test_preserve_fds_passes_the_callers_descriptors_from_3_on_and_no_more(oci, rootfs, tmp_path):
    """create --preserve-fds 2 gives the process the caller's descriptors 3 and 4 (files of the host, opened by a
    shell, as containerd's shim passes its pipes) but not 5; exec --preserve-fds 1 gives its process 3; a count
    whose descriptors are not open is refused naming the option, with nothing left."""
    files = {number: tmp_path / f"fd{number}" for number in (3, 4, 5)}
    script = "echo three >&3; echo four >&4; (echo five >&5) 2>/dev/null || echo no-five; exec sleep 300"
    container_id = new_id()
    path = bundle(tmp_path, config(rootfs, ["sh", "-c", script]))
    opens = " ".join(f"{number}>{file}" for number, file in files.items())
    create = shlex.join([*CTR, "--root", oci.root, "create", "--preserve-fds", "2", "--bundle", path, container_id])
    shell = f"exec {opens}; exec {create} > {tmp_path / 'out'} 2> {tmp_path / 'err'}"
    created = subprocess.run(["sh", "-c", shell], stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert created.returncode == 0, (tmp_path / "err").read_text()
    assert oci("start", container_id).returncode == 0
    deadline = time.monotonic() + 10
    while "no-five" not in (tmp_path / "out").read_text():
        assert time.monotonic() < deadline, (tmp_path / "out").read_text() + (tmp_path / "err").read_text()
        time.sleep(0.05)
    assert [files[number].read_text() for number in (3, 4, 5)] == ["three\n", "four\n", ""]

    execute = shlex.join([*CTR, "--root", oci.root, "exec", "--preserve-fds", "1", container_id, "sh", "-c",
                          "echo from-exec >&3; (echo x >&4) 2>/dev/null || echo no-four >&3"])  # fmt: skip
    execed = subprocess.run(["sh", "-c", f"exec 3>{tmp_path / 'exec3'}; exec {execute}"], timeout=60, check=False)
    assert execed.returncode == 0
    assert (tmp_path / "exec3").read_text() == "from-exec\nno-four\n"

    refused = oci("create", "--preserve-fds", "2", "--bundle", path, new_id())
    assert refused.returncode != 0 and "--preserve-fds 2: descriptor 3 is not open" in refused.stderr, refused.stderr
    assert oci("kill", container_id, "KILL").returncode == 0
    assert wait_status(oci, container_id, "stopped")["status"] == "stopped"
    assert oci("delete", container_id).returncode == 0


def test_hooks_run_in_order_with_the_state_on_stdin(oci, rootfs, tmp_path):
    """prestart and createRuntime at create (the environment made, PID 1's pid known), createContainer in the
    container's mount namespace before the pivot, startContainer in the container before the process,
    poststart after it started, poststop after delete; each gets the container's state on stdin."""
    log = tmp_path / "hooks"
    log.mkdir()
    document = config(rootfs, ["sleep", "300"], annotations={"org.example/owner": "tests"})
    document["mounts"].append({"destination": "/hooks", "type": "bind", "source": str(log), "options": ["rbind"]})
    hooks = {}
    for kind in ("prestart", "createRuntime", "createContainer", "poststart", "poststop"):
        target = f"{log}/{kind}.json"
        script = f"cat > {target}; echo {kind} >> {log}/order"
        hooks[kind] = [{"path": "/bin/sh", "args": ["sh", "-c", script]}]
    hooks["startContainer"] = [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /hooks/startContainer.json"]}]
    document["hooks"] = hooks
    container_id = new_id()
    created = oci("create", "--bundle", bundle(tmp_path, document), container_id)
    assert created.returncode == 0, created.stderr
    pid = json.loads(oci("state", container_id).stdout)["pid"]
    ran = (log / "order").read_text().split()
    assert ran == ["prestart", "createRuntime", "createContainer"]
    assert not (log / "startContainer.json").exists()
    assert oci("start", container_id).returncode == 0
    assert oci("kill", container_id, "9").returncode == 0
    wait_status(oci, container_id, "stopped")
    assert oci("delete", container_id).returncode == 0
    ran = (log / "order").read_text().split()
    assert ran == ["prestart", "createRuntime", "createContainer", "poststart", "poststop"]
    for kind in ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"):
        state = json.loads((log / f"{kind}.json").read_text())
        assert state["id"] == container_id and state["bundle"] == str(tmp_path / "bundle"), kind
        assert state["annotations"] == {"org.example/owner": "tests"}, kind
        if kind != "poststop":
            assert state["pid"] == pid, kind
    assert json.loads((log / "poststart.json").read_text())["status"] == "running"
    assert json.loads((log / "poststop.json").read_text())["status"] == "stopped"


def test_a_hostile_root_cannot_turn_the_bundles_mounts_onto_the_host(oci, rootfs, tmp_path):
    """The bundle is the caller's, the root is the image's: links in the root that point at host paths (absolute,
    and through /..) are followed inside the root, so the spec's tmpfs, bind, cgroup and device targets land
    there, and the host directories they name stay as they were, with nothing mounted on them."""
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (host_dir / "keep").write_text("host\n")
    upper, work, merged = (tmp_path / name for name in ("upper", "work", "merged"))
    for directory in (upper, work, merged):
        directory.mkdir()
    mounted = run(["mount", "-t", "overlay", "overlay", "-o",
                   f"lowerdir={rootfs},upperdir={upper},workdir={work}", str(merged)])  # fmt: skip
    assert mounted.returncode == 0, mounted.stderr
    try:
        for name, target in (("scratch", str(host_dir)), ("data", "/../../../.." + str(host_dir)),
                             ("cg", str(host_dir)), ("devs", str(host_dir))):  # fmt: skip
            os.symlink(target, merged / name)
        before = sorted(os.listdir(host_dir))
        document = config(str(merged), ["sh", "-c", "touch /scratch/x /data/y; ls /cg > /dev/null"])
        document["root"]["readonly"] = False
        document["mounts"] += [
            {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/data", "type": "bind", "source": str(tmp_path / "work"), "options": ["rbind"]},
            {"destination": "/cg", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
        ]
        document["linux"]["devices"] = [{"path": "/devs/null2", "type": "c", "major": 1, "minor": 3}]
        container_id = new_id()
        created = oci("create", "--bundle", bundle(tmp_path, document), container_id)
        assert created.returncode == 0, created.stderr
        assert oci("start", container_id).returncode == 0
        assert wait_status(oci, container_id, "stopped")["status"] == "stopped"
        assert oci("delete", container_id).returncode == 0
        assert sorted(os.listdir(host_dir)) == before
        assert (host_dir / "keep").read_text() == "host\n"
        assert not os.path.ismount(host_dir)
        assert str(host_dir) not in Path("/proc/self/mountinfo").read_text()
        assert (upper / "scratch").is_symlink(), "the link itself must stay a link in the root"
    finally:
        run(["umount", str(merged)])


def mounts_under(path):
    """The mount points at or below path in this process's mount namespace (mountinfo's fifth field)."""
    with open("/proc/self/mountinfo") as mountinfo:
        return [line.split()[4] for line in mountinfo if (line.split()[4] + "/").startswith(path + "/")]


def root_propagation():
    with open("/proc/self/mountinfo") as mountinfo:
        return [line.split(" - ")[0].split()[6:] for line in mountinfo if line.split()[4] == "/"]


def test_without_a_mount_namespace_the_container_is_chrooted_in_the_runtimes_and_delete_takes_its_mounts(
    oci, rootfs, tmp_path
):
    """The spec: a namespace type that linux.namespaces does not list is the runtime's (the OCI suite's
    linux_ns_itype). The root is then bound onto itself in the runtime's mount namespace, privately (nothing
    mounted in it propagates anywhere), mounted in, and chrooted into (pivot_root would move the root of every
    process there), as runc does; exec'd processes join that root; delete detaches it all. The host's mounts and
    its root's propagation are as they were, also after a create that failed half way."""
    before, propagation = mounts_under(rootfs), root_propagation()
    kinds = ("pid", "network", "ipc", "uts", "cgroup")
    document = config(rootfs, ["sleep", "60"], linux__namespaces=[{"type": kind} for kind in kinds])
    container_id = new_id()
    created = oci("create", "--bundle", bundle(tmp_path, document), container_id)
    assert created.returncode == 0, created.stderr
    pid = json.loads(oci("state", container_id).stdout)["pid"]
    assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    assert os.readlink(f"/proc/{pid}/root") == rootfs
    assert {rootfs, f"{rootfs}/proc", f"{rootfs}/dev", f"{rootfs}/sys"} <= set(mounts_under(rootfs))
    assert oci("start", container_id).returncode == 0
    ran = oci("exec", container_id, "sh", "-c", "cat /etc/debian_version; readlink /proc/1/root")
    with open(f"{rootfs}/etc/debian_version") as version:
        assert (ran.returncode, ran.stdout) == (0, version.read() + "/\n"), ran.stderr
    assert oci("kill", container_id, "KILL").returncode == 0
    wait_status(oci, container_id, "stopped")
    deleted = oci("delete", container_id)
    assert deleted.returncode == 0, deleted.stderr
    assert mounts_under(rootfs) == before
    assert root_propagation() == propagation
    failing = config(rootfs, ["/no/such/binary"], linux__namespaces=[{"type": kind} for kind in kinds])
    failed = oci("create", "--bundle", bundle(tmp_path, failing, name="failing"), new_id())
    assert failed.returncode != 0 and "no such executable" in failed.stderr, failed.stderr
    assert mounts_under(rootfs) == before


def test_a_failing_prestart_hook_fails_create_and_leaves_nothing(oci, rootfs, tmp_path):
    document = config(rootfs, ["sleep", "300"], hooks={"prestart": [{"path": "/bin/false"}]})
    container_id = new_id()
    created = oci("create", "--bundle", bundle(tmp_path, document), container_id)
    assert created.returncode != 0 and "prestart hook /bin/false failed" in created.stderr
    assert oci("state", container_id).returncode != 0
    assert not os.path.exists(cgroup_dir(container_id))
    assert run(["pgrep", "-f", container_id]).stdout == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ociVersion": "2.0.0"}, "ociVersion '2.0.0' is not a 1.x version"),
        ({"root__path": "/nonexistent/rootfs"}, "root.path '/nonexistent/rootfs' is not a directory"),
        ({"process__cwd": "relative"}, "process.cwd must be an absolute path"),
        ({"process__args": []}, "process.args must be a non-empty list"),
        ({"process__capabilities__bounding": ["CAP_BOGUS"]}, "unknown capability 'CAP_BOGUS'"),
        ({"linux__namespaces": [{"type": "mount"}, {"type": "bogus"}]}, "linux.namespaces[1].type 'bogus'"),
        ({"linux__namespaces": [{"type": "mount"}]}, "hostname is set but linux.namespaces has no uts namespace"),
        ({"linux__sysctl": {"kernel.panic": "1"}}, "linux.sysctl 'kernel.panic' is not namespaced"),
        (
            {
                "linux__sysctl": {"net.ipv4.ip_forward": "1"},
                "linux__namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")],
            },
            "linux.sysctl 'net.ipv4.ip_forward' needs a network namespace",
        ),
        ({"linux__cgroupsPath": "system.slice:docker:x"}, "linux.cgroupsPath"),
        ({"hooks__prestart": [{"path": "relative/hook"}]}, "hooks.prestart[0].path must be an absolute path"),
        ({"process__args": ["/no/such/binary"]}, "process.args[0] '/no/such/binary': no such executable"),
        ({"linux__resources__blockIO": {"weight": 5}}, "linux.resources.blockIO.weight must be a number from 10"),
        (
            {"linux__resources__blockIO": {"throttleReadBpsDevice": [{"major": 8, "rate": 1}]}},
            "linux.resources.blockIO.throttleReadBpsDevice[0] must have major, minor and rate",
        ),
        (
            {"linux__resources__hugepageLimits": [{"pageSize": "2XB", "limit": 1}]},
            "linux.resources.hugepageLimits[0].pageSize must be a size such as 2MB",
        ),
    ],
)
def test_a_bad_bundle_is_refused_naming_the_field_and_leaves_nothing(oci, rootfs, tmp_path, change, message):
    container_id = new_id()
    created = oci("create", "--bundle", bundle(tmp_path, config(rootfs, ["true"], **change)), container_id)
    assert created.returncode != 0
    assert message in created.stderr, created.stderr
    assert not os.path.exists(os.path.join(oci.root, container_id))
    assert not os.path.exists(cgroup_dir(container_id))


def test_bad_calls_are_refused_and_change_nothing(oci, rootfs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = oci("create", "--bundle", str(empty), new_id())
    assert missing.returncode != 0 and "has no config.json" in missing.stderr
    container_id = new_id()
    path = bundle(tmp_path, config(rootfs, ["sleep", "300"]))
    assert oci("create", "--bundle", path, container_id).returncode == 0
    duplicate = oci("create", "--bundle", path, container_id)
    assert duplicate.returncode != 0 and "already exists" in duplicate.stderr
    for argv in (("kill", container_id, "SIGBOGUS"), ("kill", container_id, "99")):
        refused = oci(*argv)
        assert refused.returncode != 0 and "signal" in refused.stderr
    for verb in ("start", "state", "kill", "delete"):
        unknown = oci(verb, "no-such-container")
        assert unknown.returncode != 0 and "no-such-container does not exist" in unknown.stderr, verb
    assert oci("create", "--bundle", path, "../escape").returncode != 0
    assert oci("--systemd-cgroup", "create", "--bundle", path, new_id()).returncode != 0
    assert json.loads(oci("state", container_id).stdout)["status"] == "created"
    assert oci("delete", "--force", container_id).returncode == 0
    assert not os.path.exists(cgroup_dir(container_id))


def test_errors_go_to_the_log_as_json_lines_for_containerds_shim(oci, tmp_path):
    log = tmp_path / "log.json"
    failed = oci("--log", str(log), "--log-format", "json", "state", "no-such-container")
    assert failed.returncode != 0
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "no-such-container does not exist" in entry["msg"]


def test_features_lists_what_is_supported(oci):
    shown = oci("features")
    assert shown.returncode == 0, shown.stderr
    features = json.loads(shown.stdout)
    assert features["ociVersionMin"] == "1.0.0" and "poststop" in features["hooks"]
    assert {"mount", "user"} <= set(features["linux"]["namespaces"]) and "time" not in features["linux"]["namespaces"]
    assert features["linux"]["cgroup"]["systemd"] is False
