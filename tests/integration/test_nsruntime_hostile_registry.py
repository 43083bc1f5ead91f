"""A hostile registry against the runtime's pull (layers.pull through harbor.py's client): a registry on loopback,
written here, that lies - a manifest too large to be one, a blob longer than the manifest says, a layer that
unpacks to more than the store allows. Each pull must fail naming the limit, and leave no blob, layer or image."""

import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import sys
import tarfile
import threading

import pytest

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.harbor import RegistryClient, RegistryError
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.layers import ImageError, Limits, Store, pull


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_of(name, size):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = size
        archive.addfile(info, io.BytesIO(bytes(size)))
    return buffer.getvalue()


@contextlib.contextmanager
def registry(routes):
    """A plain-http registry v2 on 127.0.0.1 answering GET path -> (status, content type, bytes or a generator)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status, kind, body = routes.get(self.path.split("?")[0], (404, "text/plain", b"not here"))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            if isinstance(body, bytes):
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for chunk in body():
                    self.wfile.write(chunk)

        def log_message(self, *_args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def image_routes(layer_blob, layer_raw, told_size=None):
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [sha(layer_raw)]}}).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": sha(layer_blob),
                    "size": len(layer_blob) if told_size is None else told_size}],
    }).encode()  # fmt: skip
    return {
        "/v2/": (200, "application/json", b"{}"),
        "/v2/evil/image/manifests/1": (200, "application/vnd.docker.distribution.manifest.v2+json", manifest),
        f"/v2/evil/image/blobs/{sha(config)}": (200, "application/octet-stream", config),
        f"/v2/evil/image/blobs/{sha(layer_blob)}": (200, "application/octet-stream", layer_blob),
    }


@pytest.fixture
def store(tmp_path):
    result = Store(str(tmp_path / "store"), Limits(max_layer_bytes=16 << 20))
    result.ensure()
    return result


def nothing_kept(store):
    return os.listdir(store.layer_dir) == [] and os.listdir(store.tmp_dir) == [] and store.images() == []


def test_an_honest_image_from_the_same_registry_is_pulled(store):
    raw = tar_of("hello", 100)
    with registry(image_routes(gzip.compress(raw), raw)) as address:
        record = pull(store, RegistryClient(address, validate_certs=False), f"{address}/evil/image:1")
    assert os.path.isfile(os.path.join(store.layer_path(sha(raw)), "hello"))
    assert record["layers"][0]["diff_id"] == sha(raw)


def test_a_manifest_larger_than_any_manifest_is_refused_while_it_streams(store):
    def endless():
        yield b'{"schemaVersion": 2, "pad": "'
        for _chunk in range(64):  # 64 MiB at most, should it ever be read
            yield b"x" * (1 << 20)

    routes = {
        "/v2/": (200, "application/json", b"{}"),
        "/v2/evil/image/manifests/1": (200, "application/vnd.docker.distribution.manifest.v2+json", endless),
    }
    with registry(routes) as address, pytest.raises(RegistryError, match="more than 4194304 bytes"):
        pull(store, RegistryClient(address, validate_certs=False), f"{address}/evil/image:1")
    assert nothing_kept(store)


def test_a_blob_longer_than_its_manifest_says_is_refused(store):
    raw = tar_of("big", 1 << 20)
    blob = gzip.compress(raw)
    with registry(image_routes(blob, raw, told_size=100)) as address, pytest.raises(ImageError, match="longer"):
        pull(store, RegistryClient(address, validate_certs=False), f"{address}/evil/image:1")
    assert nothing_kept(store) and not store.has_blob(sha(blob))


def test_a_layer_that_unpacks_past_the_bound_is_refused(store):
    raw = tar_of("zeros", 64 << 20)
    blob = gzip.compress(raw, compresslevel=1)
    with registry(image_routes(blob, raw)) as address, pytest.raises(ImageError, match="max_layer_bytes"):
        pull(store, RegistryClient(address, validate_certs=False), f"{address}/evil/image:1")
    assert nothing_kept(store)
