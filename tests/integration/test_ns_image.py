"""mooring.ops.ns_image and the runtime's layer store (plugins/module_utils/nsruntime/layers.py): real files,
real overlay mounts of the unpacked layers, a real registry (harbor.lab) and a real `docker save` archive."""

import contextlib
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import uuid

import pytest
import requests

from conftest import LAB_DIR, REPO_DIR, free_port, run, run_module

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.layers import (
    ImageError,
    Store,
)

PROBE = "harbor.lab/library/debian-python:bookworm"
REGISTRY = "mooring-lab-registry"


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(entries):
    """A layer tar from (name, kind, content) entries: kind file, dir or symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind, content in entries:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, content
                archive.addfile(info)
            else:
                data = content.encode()
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def stored(store, data):
    digest = sha(data)
    store.put_blob(digest, [data], "test layer")
    return store.unpack(digest, digest, "test layer")


@pytest.fixture
def store(tmp_path):
    result = Store(str(tmp_path / "store"))
    result.ensure()
    return result


def test_layers_stack_as_overlay_lower_dirs_with_whiteouts_and_opaque_dirs(store, tmp_path):
    lower = stored(
        store,
        layer(
            [
                ("a", "dir", None),
                ("a/gone", "file", "deleted above"),
                ("a/kept", "file", "kept"),
                ("c", "dir", None),
                ("c/old", "file", "hidden by the opaque dir above"),
                ("b", "file", "b"),
            ]
        ),
    )
    upper = stored(
        store,
        layer([("a/.wh.gone", "file", ""), ("c", "dir", None), ("c/.wh..wh..opq", "file", ""), ("c/new", "file", "n")]),
    )
    whiteout = os.lstat(os.path.join(upper, "a", "gone"))
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0
    assert os.getxattr(os.path.join(upper, "c"), "trusted.overlay.opaque") == b"y"

    merged = tmp_path / "merged"
    merged.mkdir()
    mount = run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={upper}:{lower}", str(merged)])
    assert mount.returncode == 0, mount.stderr
    try:
        assert sorted(os.listdir(merged / "a")) == ["kept"]
        assert sorted(os.listdir(merged / "c")) == ["new"]
        assert (merged / "b").read_text() == "b"
    finally:
        assert run(["umount", str(merged)]).returncode == 0


def test_a_blob_whose_bytes_do_not_match_its_digest_is_rejected_and_not_kept(store):
    data = layer([("x", "file", "x")])
    with pytest.raises(ImageError, match="rejected"):
        store.put_blob(sha(b"something else"), [data], "test layer")
    assert os.listdir(store.blob_dir) == [] and os.listdir(store.tmp_dir) == []


def test_a_layer_whose_content_does_not_match_its_diff_id_is_rejected(store):
    data = layer([("x", "file", "x")])
    store.put_blob(sha(data), [data], "test layer")
    with pytest.raises(ImageError, match="uncompressed layer's sha256"):
        store.unpack(sha(data), sha(b"another layer"), "test layer")
    assert os.listdir(store.layer_dir) == [] and os.listdir(store.tmp_dir) == []


@pytest.mark.parametrize(
    "entries",
    [
        [("../escape", "file", "x")],
        [("/etc/escape", "file", "x")],
    ],
)
def test_members_that_would_land_outside_the_layer_are_refused(store, entries):
    with pytest.raises(ImageError, match="refusing"):
        stored(store, layer(entries))
    assert not os.path.exists("/etc/escape")
    assert os.listdir(store.layer_dir) == [] and os.listdir(store.tmp_dir) == []


def test_a_member_under_a_link_to_an_absolute_path_lands_inside_the_layer(store):
    """As under a chroot at the layer's root (Docker unpacks in one): the link is followed inside the layer."""
    unpacked = stored(store, layer([("link", "symlink", "/etc"), ("link/escape", "file", "x")]))
    assert not os.path.exists("/etc/escape")
    assert open(os.path.join(unpacked, "etc", "escape")).read() == "x"  # noqa: SIM115


def docker_save_archive(path, tag, layers):
    """A `docker save` archive in Docker's own layout (manifest.json, <id>/layer.tar, <config>.json)."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha(data) for data in layers]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    with tarfile.open(path, "w") as archive:
        members = {config_name: config}
        for index, data in enumerate(layers):
            members[f"layer{index}/layer.tar"] = data
        members["manifest.json"] = json.dumps(
            [{"Config": config_name, "RepoTags": [tag], "Layers": [f"layer{i}/layer.tar" for i in range(len(layers))]}]
        ).encode()
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_an_archive_imports_shares_layers_and_is_collected_when_removed(tmp_path):
    root = tmp_path / "store"
    base = layer([("etc", "dir", None), ("etc/os-release", "file", "ID=test")])
    docker_save_archive(tmp_path / "one.tar", "example.com/one:1", [base, layer([("one", "file", "1")])])
    docker_save_archive(tmp_path / "two.tar", "example.com/two:1", [base, layer([("two", "file", "2")])])
    args = {"root": str(root)}
    first = run_module("mooring.ops.ns_image", {**args, "archive": str(tmp_path / "one.tar")})
    assert first["changed"] is True, first["_output"]
    assert first["images"] == ["example.com/one:1"]
    again = run_module(
        "mooring.ops.ns_image", {**args, "archive": str(tmp_path / "one.tar"), "name": "example.com/one:1"}
    )
    assert again["changed"] is False, again["_output"]
    second = run_module("mooring.ops.ns_image", {**args, "archive": str(tmp_path / "two.tar")})
    assert second["changed"] is True
    # Three distinct layers: the shared base is unpacked once.
    assert len(os.listdir(root / "layers")) == 3

    removed = run_module("mooring.ops.ns_image", {**args, "name": "example.com/one:1", "state": "absent"})
    assert removed["changed"] is True
    assert len(os.listdir(root / "layers")) == 2
    assert os.path.isdir(root / "layers" / sha(base).split(":")[1])
    gone = run_module("mooring.ops.ns_image", {**args, "name": "example.com/one:1", "state": "absent"})
    assert gone["changed"] is False


def registry_args(root):
    return {
        "root": str(root),
        "username": "mooring",
        "password": (LAB_DIR / "registry-password").read_text().strip(),
        "ca_cert": str(LAB_DIR / "ca" / "ca.crt"),
    }


def test_a_pull_from_harbor_lab_verifies_and_unpacks_then_changes_nothing(lab_registry, tmp_path):
    args = registry_args(tmp_path / "store")
    checked = run_module("mooring.ops.ns_image", {**args, "name": PROBE}, "--check")
    assert checked["changed"] is True, checked["_output"]
    assert not (tmp_path / "store" / "images").exists() or not os.listdir(tmp_path / "store" / "images")

    pulled = run_module("mooring.ops.ns_image", {**args, "name": PROBE})
    assert pulled["changed"] is True, pulled["_output"]
    local = json.loads(run(["docker", "image", "inspect", PROBE]).stdout)[0]
    assert pulled["image"]["config_digest"] == local["Id"]
    assert [entry["diff_id"] for entry in pulled["image"]["layers"]] == local["RootFS"]["Layers"]
    layers = [tmp_path / "store" / "layers" / entry["diff_id"].split(":")[1] for entry in pulled["image"]["layers"]]
    assert (layers[0] / "etc" / "debian_version").exists()
    assert any(
        (path / "usr" / "bin" / "python3").exists() or (path / "usr" / "bin" / "python3").is_symlink()
        for path in layers
    )

    again = run_module("mooring.ops.ns_image", {**args, "name": PROBE})
    assert again["changed"] is False
    forced = run_module("mooring.ops.ns_image", {**args, "name": PROBE, "force_pull": True})
    assert forced["changed"] is False

    # The same image from `docker save`: the layers are already unpacked, and are shared.
    archive = tmp_path / "probe.tar"
    assert run(["docker", "save", "-o", str(archive), PROBE]).returncode == 0
    imported = run_module(
        "mooring.ops.ns_image", {"root": args["root"], "archive": str(archive), "name": "offline/probe:1"}
    )
    assert imported["changed"] is True, imported["_output"]
    assert len(os.listdir(tmp_path / "store" / "layers")) == len(layers)

    removed = run_module("mooring.ops.ns_image", {**args, "name": PROBE, "state": "absent"})
    assert removed["changed"] is True
    assert len(os.listdir(tmp_path / "store" / "layers")) == len(layers)
    run_module("mooring.ops.ns_image", {**args, "name": "offline/probe:1", "state": "absent"})
    assert os.listdir(tmp_path / "store" / "layers") == []
    assert os.listdir(tmp_path / "store" / "blobs" / "sha256") == []


def test_a_corrupted_blob_in_the_registry_is_rejected(lab_registry, tmp_path):
    """Corrupt a layer's bytes in the registry's own storage (same size): the registry serves them, the
    module's sha256 check must refuse them. The image has a layer of its own, so no other image is harmed."""
    args = registry_args(tmp_path / "store")
    name = f"harbor.lab/library/corrupt-test:{uuid.uuid4().hex[:8]}"
    content = tmp_path / "content"
    content.mkdir()
    (content / "unique").write_bytes(os.urandom(4096))
    archive = tmp_path / "content.tar"
    with tarfile.open(archive, "w") as output:
        output.add(content / "unique", arcname="unique")
    assert run(["docker", "import", str(archive), name]).returncode == 0
    pushed = run(["docker", "push", name])
    assert pushed.returncode == 0, pushed.stderr
    registry_dir = "/var/lib/docker-registry/docker/registry/v2"
    try:
        manifest = requests.get(
            f"https://harbor.lab/v2/library/corrupt-test/manifests/{name.rsplit(':', 1)[1]}",
            auth=("mooring", args["password"]),
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            verify=args["ca_cert"],
            timeout=30,
        ).json()
        digest = manifest["layers"][0]["digest"]
        hex_digest = digest.split(":")[1]
        blob = f"{registry_dir}/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"
        # 16 random bytes over the same size: the blob changes (checked), the registry still serves it.
        corrupt = run(
            ["docker", "exec", REGISTRY, "sh", "-c",
             f"head -c 16 /dev/urandom | dd of={blob} bs=1 seek=100 conv=notrunc && sha256sum {blob}"]
        )  # fmt: skip
        assert corrupt.returncode == 0, corrupt.stderr
        assert corrupt.stdout.split()[0] != hex_digest, "the blob was not corrupted"

        failed = run_module("mooring.ops.ns_image", {**args, "name": name})
        assert failed.get("failed") is True, failed["_output"]
        assert digest in failed["msg"] and "rejected" in failed["msg"], failed["msg"]
        assert os.listdir(tmp_path / "store" / "images") == []
        assert os.listdir(tmp_path / "store" / "tmp") == []
    finally:
        run(["docker", "rmi", name])
        run(["docker", "exec", REGISTRY, "rm", "-rf", f"{registry_dir}/repositories/library/corrupt-test"])


def _put_multi_platform(args, target, media_type):
    """In harbor.lab, the repository target gets the probe's linux/amd64 manifest and a linux/arm64 one of its own
    (the same layers, a config that says arm64), then two tags: `multi`, a list of both with arm64 first, and
    `armonly`. Blobs are mounted from the probe's repository, as a registry client would. Returns the amd64
    manifest's digest and config digest."""
    auth, ca, base = ("mooring", args["password"]), args["ca_cert"], "https://harbor.lab/v2"
    source = "library/debian-python"
    fetched = requests.get(
        f"{base}/{source}/manifests/bookworm",
        auth=auth, verify=ca, timeout=30, headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )  # fmt: skip
    assert fetched.status_code == 200, fetched.text
    raw, manifest_type = fetched.content, fetched.headers["Content-Type"]
    manifest = json.loads(raw)

    def put_manifest(reference, body, content_type):
        answer = requests.put(
            f"{base}/{target}/manifests/{reference}",
            data=body, auth=auth, verify=ca, timeout=30, headers={"Content-Type": content_type},
        )  # fmt: skip
        assert answer.status_code == 201, answer.text

    for blob in [manifest["config"], *manifest["layers"]]:
        mounted = requests.post(
            f"{base}/{target}/blobs/uploads/",
            params={"mount": blob["digest"], "from": source}, auth=auth, verify=ca, timeout=60,
        )  # fmt: skip
        assert mounted.status_code == 201, mounted.text
    put_manifest(sha(raw), raw, manifest_type)

    config = requests.get(f"{base}/{source}/blobs/{manifest['config']['digest']}", auth=auth, verify=ca, timeout=30)
    arm_config = json.dumps({**config.json(), "architecture": "arm64"}).encode()
    started = requests.post(f"{base}/{target}/blobs/uploads/", auth=auth, verify=ca, timeout=30)
    assert started.status_code == 202, started.text
    finished = requests.put(
        requests.compat.urljoin(f"{base}/", started.headers["Location"]),
        params={"digest": sha(arm_config)}, data=arm_config, auth=auth, verify=ca, timeout=30,
        headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert finished.status_code == 201, finished.text
    arm_raw = json.dumps(
        {**manifest, "config": {**manifest["config"], "digest": sha(arm_config), "size": len(arm_config)}}
    ).encode()
    put_manifest(sha(arm_raw), arm_raw, manifest_type)

    def entry(body, architecture):
        platform = {"os": "linux", "architecture": architecture}
        return {"mediaType": manifest_type, "digest": sha(body), "size": len(body), "platform": platform}

    for tag, entries in (
        ("multi", [entry(arm_raw, "arm64"), entry(raw, "amd64")]),
        ("armonly", [entry(arm_raw, "arm64")]),
    ):
        put_manifest(tag, json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}), media_type)
    return sha(raw), manifest["config"]["digest"]


@pytest.mark.parametrize(
    "media_type",
    ["application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.index.v1+json"],
)
def test_a_manifest_list_or_an_image_index_yields_its_linux_amd64_image(lab_registry, tmp_path, media_type):
    args = registry_args(tmp_path / "store")
    repository = f"library/multi-{uuid.uuid4().hex[:8]}"
    try:
        manifest_digest, config_digest = _put_multi_platform(args, repository, media_type)
        name = f"harbor.lab/{repository}:multi"
        pulled = run_module("mooring.ops.ns_image", {**args, "name": name})
        assert pulled["changed"] is True, pulled["_output"]
        assert pulled["image"]["manifest_digest"] == manifest_digest
        assert pulled["image"]["config_digest"] == config_digest
        assert pulled["image"]["index_digest"] != manifest_digest
        forced = run_module("mooring.ops.ns_image", {**args, "name": name, "force_pull": True}, "--check")
        assert forced["changed"] is False, forced["_output"]

        failed = run_module("mooring.ops.ns_image", {**args, "name": f"harbor.lab/{repository}:armonly"})
        assert failed.get("failed") is True
        assert f"harbor.lab/{repository}:armonly has no linux/amd64 image" in failed["msg"]
    finally:
        registry_dir = "/var/lib/docker-registry/docker/registry/v2"
        run(["docker", "exec", REGISTRY, "rm", "-rf", f"{registry_dir}/repositories/{repository}"])


def test_an_insecure_registry_is_pulled_from_over_plain_http_only_when_asked(lab_registry, tmp_path):
    """The course notes' registry without TLS: validate_certs=false reaches it as docker's insecure-registries
    would (https first, then http); the default refuses and says what to set. The engine pushes to it on
    127.0.0.1, which docker treats as insecure without any daemon.json change."""
    port = free_port()
    container = f"mooring-test-plain-registry-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "registry"
    config.mkdir()
    config.chmod(0o755)
    (config / "config.yml").write_text(
        "version: 0.1\nstorage:\n  filesystem: {rootdirectory: /var/lib/docker-registry}\nhttp:\n  addr: :5000\n"
    )
    (config / "config.yml").chmod(0o644)
    name = f"127.0.0.1:{port}/library/probe:plain"
    try:
        started = run(
            ["docker", "run", "-d", "--name", container, "-p", f"127.0.0.1:{port}:5000",
             "-v", f"{config}:/etc/docker/registry:ro", "mooring/lab-registry:bookworm"]
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        for _attempt in range(60):
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=5).status_code == 200:
                    break
            time.sleep(0.5)
        assert run(["docker", "tag", "mooring/debian-python:bookworm", name]).returncode == 0
        pushed = run(["docker", "push", name])
        assert pushed.returncode == 0, pushed.stderr

        refused = run_module("mooring.ops.ns_image", {"root": str(tmp_path / "store"), "name": name})
        assert refused.get("failed") is True
        assert "does not speak TLS" in refused["msg"] and "validate_certs=false" in refused["msg"], refused["msg"]

        pulled = run_module(
            "mooring.ops.ns_image", {"root": str(tmp_path / "store"), "name": name, "validate_certs": False}
        )
        assert pulled["changed"] is True, pulled["_output"]
        local = run(["docker", "image", "inspect", "--format", "{{.Id}}", name]).stdout.strip()
        assert pulled["image"]["config_digest"] == local
    finally:
        run(["docker", "rm", "-f", "-v", container])
        run(["docker", "rmi", name])
