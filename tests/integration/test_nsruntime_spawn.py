"""A container's birth on this kernel, as root, without dockerd or runc: the image's layers imported from a real
`docker save` of the lab's Debian image, an overlay over them, new namespaces, pivot_root, /proc, /dev and /sys,
capabilities dropped to Docker's set. Checked from inside (what the process sees) and from the host."""

import os
import sys
import uuid

import pytest

from conftest import REPO_DIR, oci_started, runtime_residue

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import oci, overlay, spec

# Docker's default bounding set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE
# NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
DOCKER_CAPBND = "00000000a80425fb"


def document(merged, argv, hostname, user=None, **config):
    """The OCI document for a container of these settings, as the runtime builds it (spec.py)."""
    settings = {"image": "debian", "argv": argv, "env": {"PATH": spec.DEFAULT_PATH}, "hostname": hostname,
                "network": "none", **spec.options_config({}), **config}  # fmt: skip
    return spec.build(settings, merged, user=spec.resolve_user(merged, user))


def run_container(image, container_dir, settings):
    store, record = image
    # A name of its own: the residue check looks for it in the host's mount table, where a short one such as c1
    # is also part of other mounts (the lab's docker layers, when make test runs this beside the lab).
    container_dir = container_dir.with_name(f"{container_dir.name}-{uuid.uuid4().hex[:8]}")
    container_dir.mkdir()
    merged = overlay.mount_rootfs(store, record, str(container_dir))
    read_end, write_end = os.pipe()
    try:
        with open(os.devnull, "rb") as null:
            started = oci_started(
                document(merged, **settings), container_dir, container_dir.name, (null.fileno(), write_end, write_end)
            )
            with started as container:
                os.close(write_end)
                write_end = None
                host_view = {
                    kind: os.readlink(f"/proc/{container.pid}/ns/{kind}") for kind in ("pid", "net", "uts", "mnt")
                }
                output = b""
                while chunk := os.read(read_end, 65536):
                    output += chunk
                return container.wait(), output.decode(), host_view
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)
        overlay.unmount_rootfs(str(container_dir))
        assert not os.path.ismount(os.path.join(container_dir, "merged"))
        assert runtime_residue(container_dir.name, str(container_dir)) == []


def test_the_container_is_isolated_seen_from_inside_and_from_the_host(debian_image, tmp_path):
    script = (
        "echo pid=$$; echo host=$(hostname); echo procs=$(ls /proc | grep -c '^[0-9]');"
        "echo nets=$(ls /sys/class/net); grep CapBnd /proc/self/status; echo mounts; cat /proc/mounts; sleep 0.3"
    )
    code, output, host_view = run_container(
        debian_image, tmp_path / "c1", {"argv": ["/bin/sh", "-c", script], "hostname": "box1"}
    )
    assert code == 0, output
    assert "pid=1\n" in output
    assert "host=box1\n" in output
    assert "nets=lo\n" in output
    # sh, ls and grep at most: no host process is visible.
    assert int(output.split("procs=")[1].split()[0]) <= 4
    assert DOCKER_CAPBND in output
    mounts = output.split("mounts\n")[1]
    assert str(REPO_DIR) not in mounts and "/sys/fs/cgroup" not in mounts
    assert mounts.splitlines()[0].split()[1] == "/"
    for kind, link in host_view.items():
        assert link != os.readlink(f"/proc/self/ns/{kind}"), kind


def test_a_failing_exec_is_reported_and_leaves_no_mount(debian_image, tmp_path):
    with pytest.raises(oci.OciError, match=r"process.args\[0\] 'no-such-program': no such executable"):
        run_container(debian_image, tmp_path / "c2", {"argv": ["no-such-program"], "hostname": "box2"})


def test_read_only_root_user_and_volume(debian_image, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from the host\n")
    # The sleep keeps PID 1 alive while the host reads its namespaces (without it the race was lost once, under load).
    script = "cat /data/in; touch /x 2>/dev/null && echo writable || echo read-only; id -u; touch /data/out; sleep 0.3"
    code, output, _view = run_container(
        debian_image,
        tmp_path / "c3",
        {
            "argv": ["/bin/sh", "-c", script],
            "hostname": "box3",
            "read_only": True,
            "user": "65534",
            "volumes": [{"source": str(shared), "target": "/data", "read_only": True}],
        },
    )
    assert code == 0, output
    assert output.splitlines()[:3] == ["from the host", "read-only", "65534"]
    assert not (shared / "out").exists()
