"""Hostile images against the runtime's layer store (plugins/module_utils/nsruntime/layers.py, paths.py).

Each layer is crafted the way an attacker would write it: links that point at the host, hardlinks through them,
members that land on earlier links, whiteouts through links, duplicates, device nodes, bombs. Each test unpacks
it for real (as root, on the real file system) and then asserts from the host that the sentinel files outside the
store are byte for byte and stat for stat as they were, whatever the verdict on the layer."""

import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

import pytest

from conftest import REPO_DIR, run_module

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.layers import ImageError, Limits, Store

HOST_PYTHON = "/usr/bin/python3"


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def member(name, kind="file", content="", mode=None, uid=0, gid=0, link="", device=(0, 0)):
    return {"name": name, "kind": kind, "content": content, "mode": mode, "uid": uid, "gid": gid, "link": link,
            "device": device}  # fmt: skip


def layer(members, compress=False):
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
             "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}  # fmt: skip
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for entry in members:
            info = tarfile.TarInfo(entry["name"])
            info.type = types[entry["kind"]]
            info.mode = entry["mode"] if entry["mode"] is not None else (0o755 if entry["kind"] == "dir" else 0o644)
            info.uid, info.gid = entry["uid"], entry["gid"]
            info.linkname = entry["link"]
            info.devmajor, info.devminor = entry["device"]
            data = entry["content"].encode() if entry["kind"] == "file" else b""
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data else None)
    raw = buffer.getvalue()
    return (gzip.compress(raw), raw) if compress else (raw, raw)


@pytest.fixture
def store(tmp_path):
    result = Store(str(tmp_path / "store"))
    result.ensure()
    return result


@pytest.fixture
def host(tmp_path):
    """Sentinels outside the store, like the host files an image must never reach: a directory (0755, root), a
    secret (0600, root) and a file in the directory. Returns their paths; the test checks them afterwards."""
    directory = tmp_path / "host"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    secret = tmp_path / "host-secret"
    secret.write_text("host secret\n")
    secret.chmod(0o600)
    inner = directory / "config"
    inner.write_text("host config\n")
    inner.chmod(0o644)
    return {"dir": str(directory), "secret": str(secret), "inner": str(inner), "tmp": str(tmp_path)}


def snapshot(host):
    """Everything about the sentinels and the tree around them that an escape would change."""
    seen = {}
    for top in (host["dir"], host["secret"]):
        for path in [top] + [os.path.join(d, n) for d, dirs, files in os.walk(top) for n in dirs + files]:
            info = os.lstat(path)
            content = open(path, "rb").read() if stat.S_ISREG(info.st_mode) else None  # noqa: SIM115
            seen[path] = (info.st_mode, info.st_uid, info.st_gid, info.st_size, info.st_nlink, info.st_ino,
                          info.st_mtime_ns, content, sorted(os.listxattr(path, follow_symlinks=False)))  # fmt: skip
    seen["listing"] = sorted(os.listdir(host["tmp"]))
    return seen


def unpack(store, members, diff_id=None, compress=False):
    blob, raw = layer(members, compress)
    store.put_blob(sha(blob), [blob], "hostile layer", len(blob))
    return store.unpack(sha(blob), diff_id or sha(raw), "hostile layer")


def attacks(host):
    """(name, members, what the layer must hold afterwards or None when it must be refused)."""
    outside = host["dir"].lstrip("/")
    return [
        ("a directory member on an earlier symlink to a host directory",
         [member("d", "symlink", link=host["dir"]), member("d", "dir", mode=0o777, uid=4242, gid=4242)],
         {"d": ("dir", 0o777, 4242)}),
        ("a hardlink whose target goes through an in-layer symlink, then chmodded",
         [member("l", "symlink", link=os.path.dirname(host["secret"])),
          member("h", "hardlink", link="l/" + os.path.basename(host["secret"])),
          member("h", "file", content="x", mode=0o4777)],
         None),
        ("a hardlink to an in-layer symlink to a host file, then a member written on it",
         [member("l", "symlink", link=host["secret"]), member("h", "hardlink", link="l"),
          member("h", "file", content="owned", mode=0o4777, uid=4242)],
         {"h": ("file", 0o4777, 4242), "l": ("symlink", None, 0)}),
        ("a file written through a symlinked parent directory",
         [member("l", "symlink", link=host["dir"]), member("l/config", "file", content="owned", mode=0o666)],
         {outside + "/config": ("file", 0o666, 0)}),
        ("a file written through a parent link to / and a path to the host file",
         [member("root", "symlink", link="/"), member("root/" + host["secret"].lstrip("/"), "file", content="o")],
         {host["secret"].lstrip("/"): ("file", 0o644, 0)}),
        ("a file written through a relative link that climbs above the layer",
         [member("up", "symlink", link="../../../../../../../../.."),
          member("up/" + host["dir"].lstrip("/") + "/config", "file", content="owned")],
         {outside + "/config": ("file", 0o644, 0)}),
        ("a whiteout through a link to a host directory",
         [member("l", "symlink", link=host["dir"]), member("l/.wh.config", "file")],
         {outside + "/config": ("char", 0, 0)}),
        ("an opaque marker through a link to a host directory",
         [member("l", "symlink", link=host["dir"]), member("l/.wh..wh..opq", "file")],
         {outside: ("dir", None, 0)}),
        ("a directory replaced by a symlink, then written into",
         [member("d", "dir"), member("d", "symlink", link=host["dir"]), member("d/config", "file", content="o")],
         {outside + "/config": ("file", 0o644, 0), "d": ("symlink", None, 0)}),
        ("duplicate members, the middle one a link to the host file",
         [member("a", "file", content="one"), member("a", "symlink", link=host["secret"]),
          member("a", "file", content="two", mode=0o600)],
         {"a": ("file", 0o600, 0)}),
        ("a device node and a setuid file stay in the layer",
         [member("mem", "char", mode=0o666, device=(1, 1)), member("su", "file", content="#!", mode=0o4755)],
         {"mem": ("char", 0o666, 0), "su": ("file", 0o4755, 0)}),
        ("a symlink loop", [member("a", "symlink", link="b"), member("b", "symlink", link="a"),
                            member("a/x", "file")], None),
        ("a hardlink to a directory", [member("d", "dir"), member("h", "hardlink", link="d")], None),
        ("a hardlink to a member the layer lacks", [member("h", "hardlink", link="etc/shadow")], None),
        ("a member above the layer", [member("../escape", "file")], None),
        ("an absolute member", [member(host["dir"] + "/config", "file", content="owned")], None),
    ]  # fmt: skip


KINDS = {"file": stat.S_ISREG, "dir": stat.S_ISDIR, "symlink": stat.S_ISLNK, "char": stat.S_ISCHR}


@pytest.mark.parametrize("index", range(16))
def test_a_hostile_layer_never_changes_the_host_and_lands_inside_the_layer_or_is_refused(store, host, index):
    name, members, expected = attacks(host)[index]
    before = snapshot(host)
    if expected is None:
        with pytest.raises(ImageError):
            unpack(store, members)
        assert os.listdir(store.layer_dir) == [], name
    else:
        target = unpack(store, members)
        for relative, (kind, mode, uid) in expected.items():
            info = os.lstat(os.path.join(target, relative))
            assert KINDS[kind](info.st_mode), (name, relative, oct(info.st_mode))
            assert mode is None or stat.S_IMODE(info.st_mode) == mode, (name, relative, oct(info.st_mode))
            assert info.st_uid == uid, (name, relative)
    assert snapshot(host) == before, name
    assert os.listdir(store.tmp_dir) == [], name


def test_a_hostile_layer_rejected_by_its_diff_id_changed_nothing_before_the_check(store, host):
    before = snapshot(host)
    hostile = [member("d", "symlink", link=host["dir"]), member("d", "dir", mode=0o777, uid=4242),
               member("l", "symlink", link=host["secret"]), member("h", "hardlink", link="l"),
               member("h", "file", content="x", mode=0o4777)]  # fmt: skip
    with pytest.raises(ImageError, match="uncompressed layer's sha256"):
        unpack(store, hostile, diff_id=sha(b"not this layer"))
    assert snapshot(host) == before
    assert os.listdir(store.layer_dir) == [] and os.listdir(store.tmp_dir) == []


def _bomb(size):
    """A gzip layer of one file of size zero bytes, written in a stream (never whole in memory)."""
    buffer = io.BytesIO()

    class Zeros:
        left = size

        def read(self, amount):
            amount = min(amount, self.left)
            self.left -= amount
            return bytes(amount)

    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1) as compressed,
        tarfile.open(fileobj=compressed, mode="w|") as archive,
    ):
        info = tarfile.TarInfo("zeros")
        info.size = size
        archive.addfile(info, Zeros())
    return buffer.getvalue()


def test_a_decompression_bomb_stops_at_the_bound_and_leaves_nothing(tmp_path, host):
    store = Store(str(tmp_path / "store"), Limits(max_layer_bytes=32 << 20))
    store.ensure()
    blob = _bomb(256 << 20)
    assert len(blob) < 2 << 20
    store.put_blob(sha(blob), [blob], "bomb", len(blob))
    before = snapshot(host)
    with pytest.raises(ImageError, match=r"exceeds 33554432 bytes \(max_layer_bytes\)"):
        store.unpack(sha(blob), sha(b"whatever"), "bomb")
    assert snapshot(host) == before
    assert os.listdir(store.layer_dir) == [] and os.listdir(store.tmp_dir) == []


def test_a_layer_with_more_members_than_the_bound_is_refused(tmp_path):
    store = Store(str(tmp_path / "store"), Limits(max_members=100))
    store.ensure()
    blob, raw = layer([member(f"f{number}", "file", content="x") for number in range(150)])
    store.put_blob(sha(blob), [blob], "many", len(blob))
    with pytest.raises(ImageError, match=r"more than 100 members in one layer \(max_members\)"):
        store.unpack(sha(blob), sha(raw), "many")
    assert os.listdir(store.layer_dir) == [] and os.listdir(store.tmp_dir) == []


def test_a_layer_that_would_fill_the_disk_is_refused_before_writing(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    store = Store(str(tmp_path / "store"), Limits(min_free_bytes=free + (1 << 30)))
    store.ensure()
    blob, raw = layer([member("big", "file", content="x" * 100)])
    with pytest.raises(ImageError, match="min_free_bytes"):
        store.put_blob(sha(blob), [blob], "full", len(blob))
    store.limits.min_free_bytes = 0
    store.put_blob(sha(blob), [blob], "full", len(blob))
    store.limits.min_free_bytes = free + (1 << 30)
    with pytest.raises(ImageError, match="min_free_bytes"):
        store.unpack(sha(blob), sha(raw), "full")
    assert os.listdir(store.layer_dir) == [] and os.listdir(store.tmp_dir) == []


@pytest.mark.parametrize("told", [10, 10_000])
def test_a_blob_longer_or_shorter_than_its_manifest_says_is_rejected(store, told):
    data = b"y" * 1000
    with pytest.raises(ImageError, match=r"manifest says|longer than"):
        store.put_blob(sha(data), [data[:500], data[500:]], "sized", told)
    assert os.listdir(store.blob_dir) == [] and os.listdir(store.tmp_dir) == []


def docker_save(path, tag, layers):
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [sha(raw) for raw in layers]}}).encode()  # fmt: skip
    with tarfile.open(path, "w") as archive:
        files = {"config.json": config}
        files.update({f"l{index}/layer.tar": raw for index, raw in enumerate(layers)})
        files["manifest.json"] = json.dumps(
            [{"Config": "config.json", "RepoTags": [tag], "Layers": [f"l{i}/layer.tar" for i in range(len(layers))]}]
        ).encode()
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.mark.skipif(not os.path.exists(HOST_PYTHON), reason="the host's own Python is not at /usr/bin/python3")
def test_ns_image_imports_under_the_hosts_own_python_and_refuses_a_hostile_archive_there(tmp_path, host):
    """As Ansible runs the module on a managed Debian 12 host: /usr/bin/python3 (3.11.2 here, which predates
    tarfile's extraction filters)."""
    interpreter = ("-e", f"ansible_python_interpreter={HOST_PYTHON}")
    good = layer([member("etc", "dir"), member("etc/os-release", "file", content="ID=test\n"),
                  member("bin", "symlink", link="usr/bin")])[1]  # fmt: skip
    docker_save(tmp_path / "good.tar", "example.com/good:1", [good])
    imported = run_module("mooring.ops.ns_image", {"root": str(tmp_path / "store"),
                                                   "archive": str(tmp_path / "good.tar")}, *interpreter)  # fmt: skip
    assert imported["changed"] is True, imported["_output"]
    assert imported["images"] == ["example.com/good:1"]

    hostile = layer([member("l", "symlink", link=host["secret"]), member("h", "hardlink", link="l"),
                     member("h", "file", content="x", mode=0o4777), member("d", "symlink", link=host["dir"]),
                     member("d/config", "file", content="owned"), member("../x", "file")])[1]  # fmt: skip
    docker_save(tmp_path / "bad.tar", "example.com/bad:1", [good, hostile])
    before = snapshot(host)
    refused = run_module("mooring.ops.ns_image", {"root": str(tmp_path / "store"),
                                                  "archive": str(tmp_path / "bad.tar")}, *interpreter)  # fmt: skip
    assert refused.get("failed") is True, refused["_output"]
    assert "refusing the archive member '../x'" in refused["msg"], refused["msg"]
    assert snapshot(host) == before
    records = os.listdir(tmp_path / "store" / "images")
    assert len(records) == 1, records


@pytest.mark.parametrize(("args", "named"), [({"archive": ""}, "archive"), ({"name": ""}, "name")])
def test_ns_image_names_an_empty_option(tmp_path, args, named):
    failed = run_module("mooring.ops.ns_image", {"root": str(tmp_path / "store"), **args},
                        "-e", f"ansible_python_interpreter={HOST_PYTHON}")  # fmt: skip
    assert failed.get("failed") is True, failed["_output"]
    assert failed["msg"].startswith(f"{named} must be"), failed["msg"]
    assert "NoneType" not in failed["msg"]
