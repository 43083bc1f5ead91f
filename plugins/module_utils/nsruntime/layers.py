# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image layers, the first step of a container's birth: a content-addressed store under the runtime root.

    <root>/blobs/sha256/<hex>      manifests, configs and layer archives, each stored once, by digest, and only
                                   after its bytes were hashed and matched the digest they were asked for
    <root>/layers/<diff_id hex>/   each layer unpacked once (by its uncompressed digest, so a pulled and an
                                   imported copy of the same layer share it), OCI whiteouts turned into
                                   overlayfs whiteouts so that the directories stack as overlay lower dirs
    <root>/images/<hex>.json       one record an image: its name, manifest, config and layers

Images come from a registry v2 (module_utils/harbor.py's client: basic or bearer auth, TLS with a CA) or from a
`docker save` archive. Removing an image and collecting garbage drops what no other image uses.
"""

from __future__ import annotations

import os
import stat

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import fastjson, paths
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.lean import suppress
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.state import name_digest, write_json

DIGEST_PREFIX = "sha256:"
CHUNK = 1 << 20
PLATFORM = ("linux", "amd64")
INDEX_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def _sha256(data=b""):
    """hashlib's, imported when a digest is computed (pull, load): not on a container's start."""
    import hashlib  # noqa: PLC0415

    return hashlib.sha256(data)


def _rmtree(*args, **kwargs):
    import shutil  # noqa: PLC0415 - not on a container's start

    return shutil.rmtree(*args, **kwargs)


class ImageError(Exception):
    """Pulling, importing or unpacking an image failed; the message says which image and blob."""


def _hex(digest):
    algorithm, _sep, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ImageError(f"not a sha256 digest: {digest!r}")
    return value


def parse_reference(reference):
    """'harbor.lab/mooring/nginx:1.22' -> ('harbor.lab', 'mooring/nginx', '1.22'); a digest works as the tag."""
    name, at, digest = reference.partition("@")
    last = name.rsplit("/", 1)[-1]
    name, tag = name.rsplit(":", 1) if ":" in last else (name, "latest")
    if at:  # name:tag@digest pulls the digest, as docker does; the tag is only a label
        tag = digest
    registry, _slash, repository = name.partition("/")
    if not repository or ("." not in registry and ":" not in registry and registry != "localhost"):
        raise ImageError(f"image {reference!r} must name its registry, e.g. harbor.example.com/project/name:tag")
    return registry, repository, tag


class _Hashing:
    """A file object that hashes what is read through it, and stops past a bound on the bytes read."""

    def __init__(self, raw, limit, what):
        self.raw = raw
        self.sha = _sha256()
        self.count = 0
        self.limit = limit
        self.what = what

    def read(self, size=-1):
        data = self.raw.read(size)
        self.count += len(data)
        if self.count > self.limit:
            raise ImageError(
                f"{self.what}: the uncompressed layer exceeds {self.limit} bytes (max_layer_bytes); rejected"
            )
        self.sha.update(data)
        return data

    def drain(self):
        while self.read(CHUNK):
            pass
        return DIGEST_PREFIX + self.sha.hexdigest()


class Limits:
    """Bounds on what one image may make the store hold, each named in the error that enforces it. A registry
    or an archive is not trusted to be small: a 1 MB gzip blob can unpack to terabytes."""

    def __init__(self, max_layer_bytes=64 << 30, max_members=1_000_000, min_free_bytes=512 << 20):
        self.max_layer_bytes = max_layer_bytes
        self.max_members = max_members
        self.min_free_bytes = min_free_bytes

    def check_space(self, path, size, what):
        info = os.statvfs(path)
        free = info.f_bavail * info.f_frsize
        if free - size < self.min_free_bytes:
            raise ImageError(
                f"{what}: writing {size} bytes would leave less than {self.min_free_bytes} bytes free under "
                f"{path} ({free} free; min_free_bytes)"
            )


class Store:
    def __init__(self, root, limits=None):
        self.root = root
        self.limits = limits or Limits()
        self.blob_dir = os.path.join(root, "blobs", "sha256")
        self.layer_dir = os.path.join(root, "layers")
        self.image_dir = os.path.join(root, "images")
        self.tmp_dir = os.path.join(root, "tmp")

    def ensure(self):
        for path in (self.root, self.blob_dir, self.layer_dir, self.image_dir, self.tmp_dir):
            os.makedirs(path, mode=0o700, exist_ok=True)

    # -- blobs ------------------------------------------------------------------------------------------------
    def blob_path(self, digest):
        return os.path.join(self.blob_dir, _hex(digest))

    def has_blob(self, digest):
        return os.path.exists(self.blob_path(digest))

    def put_blob(self, digest, chunks, what, size=None):
        """Write chunks to a temporary file, check their sha256 against digest (and their length against size,
        the manifest's word for it), then move it into place."""
        target = self.blob_path(digest)
        if os.path.exists(target):
            return target
        if size is not None:
            self.limits.check_space(self.tmp_dir, size, what)
        import tempfile  # noqa: PLC0415 - only a pull or an import writes; `run` reads

        handle, temporary = tempfile.mkstemp(dir=self.tmp_dir)
        sha = _sha256()
        written = 0
        try:
            with os.fdopen(handle, "wb") as output:
                for chunk in chunks:
                    written += len(chunk)
                    if size is not None and written > size:
                        raise ImageError(
                            f"{what}: the blob is longer than the {size} bytes its manifest says; rejected"
                        )
                    sha.update(chunk)
                    output.write(chunk)
            if size is not None and written != size:
                raise ImageError(f"{what}: the blob has {written} bytes, its manifest says {size}; rejected")
            actual = DIGEST_PREFIX + sha.hexdigest()
            if actual != digest:
                raise ImageError(f"{what}: the blob's sha256 is {actual}, not {digest}; rejected")
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return target

    def read_blob(self, digest):
        with open(self.blob_path(digest), "rb") as blob:
            return blob.read()

    # -- layers -----------------------------------------------------------------------------------------------
    def layer_path(self, diff_id):
        return os.path.join(self.layer_dir, _hex(diff_id))

    def unpack(self, blob_digest, diff_id, what):
        """Unpack a layer blob into layers/<diff_id>, checking the uncompressed stream against diff_id."""
        target = self.layer_path(diff_id)
        if os.path.isdir(target):
            return target
        # Imported here, as in import_archive: `mooring-ctr run` reads the store without paying for them.
        import gzip  # noqa: PLC0415
        import tarfile  # noqa: PLC0415
        import tempfile  # noqa: PLC0415 - only a pull or an import writes; `run` reads

        staging = tempfile.mkdtemp(dir=self.tmp_dir)
        try:
            with open(self.blob_path(blob_digest), "rb") as raw:
                compressed = raw.read(2) == b"\x1f\x8b"
                raw.seek(0)
                stream = _Hashing(gzip.GzipFile(fileobj=raw) if compressed else raw, self.limits.max_layer_bytes, what)
                with tarfile.open(fileobj=stream, mode="r|") as archive:
                    _extract(archive, staging, what, self.limits)
                actual = stream.drain()
            if actual != diff_id:
                raise ImageError(f"{what}: the uncompressed layer's sha256 is {actual}, not {diff_id}; rejected")
            # The layer's top is the container's /: world-readable like any root directory.
            os.chmod(staging, 0o755)  # noqa: S103
            os.rename(staging, target)
        except (OSError, EOFError, tarfile.TarError, gzip.BadGzipFile) as exc:
            raise ImageError(f"{what}: cannot unpack: {exc}") from exc
        finally:
            if os.path.isdir(staging):
                _rmtree(staging)
        return target

    # -- image records ----------------------------------------------------------------------------------------
    def _record_path(self, name):
        return os.path.join(self.image_dir, name_digest(name) + ".json")

    def image(self, name):
        try:
            with open(self._record_path(name)) as record:
                return fastjson.load(record)
        except FileNotFoundError:
            return None

    def images(self):
        records = []
        for entry in sorted(os.listdir(self.image_dir)) if os.path.isdir(self.image_dir) else []:
            with open(os.path.join(self.image_dir, entry)) as record:
                records.append(fastjson.load(record))
        return records

    def save_image(self, record):
        write_json(self._record_path(record["name"]), record)

    def remove_image(self, name):
        path = self._record_path(name)
        if os.path.exists(path):
            os.unlink(path)
            return True
        return False

    def reference_layers(self, container_dir, record):
        """Record in a container's directory under the store the layers it stands on (see collect_garbage)."""
        write_json(os.path.join(container_dir, "layers.json"), [layer["diff_id"] for layer in record["layers"]])

    def _container_layers(self):
        found = set()
        directory = os.path.join(self.root, "containers")
        for name in os.listdir(directory) if os.path.isdir(directory) else []:
            with (
                suppress(FileNotFoundError, ValueError),
                open(os.path.join(directory, name, "layers.json")) as handle,
            ):
                found.update(fastjson.load(handle))
        return found

    def collect_garbage(self):
        """Remove the blobs and layer directories that no image record names and no container stands on (a
        running container's overlay has them as lower dirs); return what went."""
        blobs, layers = set(), self._container_layers()
        for record in self.images():
            blobs.update([record["manifest_digest"], record["config_digest"]])
            blobs.update(layer["blob"] for layer in record["layers"])
            layers.update(layer["diff_id"] for layer in record["layers"])
        removed = []
        for name in os.listdir(self.blob_dir):
            if DIGEST_PREFIX + name not in blobs:
                os.unlink(os.path.join(self.blob_dir, name))
                removed.append(DIGEST_PREFIX + name)
        for name in os.listdir(self.layer_dir):
            if DIGEST_PREFIX + name not in layers:
                _rmtree(os.path.join(self.layer_dir, name))
                removed.append("layer " + DIGEST_PREFIX + name)
        return removed


def _safe_name(name, what):
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise ImageError(f"{what}: refusing the archive member {name!r} (outside the layer)")
    return "/".join(parts)


def _clear(directory, name, keep_directory=False):
    """Make room for a member: what stands at name (never followed) goes, unless it is a directory to keep."""
    try:
        info = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(info.st_mode):
        if keep_directory:
            return True
        _rmtree(name, dir_fd=directory)
    else:
        os.unlink(name, dir_fd=directory)
    return False


class _LayerWriter:
    """Writes one layer's members into its staging directory. Every path is resolved inside the layer (paths.py),
    every attribute is set on a descriptor or without following links, and hardlinks may only point at what the
    layer itself holds: whatever the archive says, nothing outside the staging directory is touched."""

    def __init__(self, root, what, limits):
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.root = root
        self.what = what
        self.limits = limits
        self.members = 0

    def close(self):
        os.close(self.root_fd)

    def write(self, archive, member):
        self.members += 1
        if self.members > self.limits.max_members:
            raise ImageError(f"{self.what}: more than {self.limits.max_members} members in one layer (max_members)")
        relative = _safe_name(member.name, self.what)
        if not relative:
            return
        directory, name = paths.parent(self.root_fd, relative, make_dirs=True)
        try:
            self._member(archive, member, directory, name)
        finally:
            os.close(directory)

    def _member(self, archive, member, directory, name):
        if name == OPAQUE:
            os.setxattr(directory, "trusted.overlay.opaque", b"y")
            return
        if name.startswith(WHITEOUT):
            hidden = name[len(WHITEOUT) :]
            _clear(directory, hidden)
            os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=directory)
            return
        if member.isdir():
            if not _clear(directory, name, keep_directory=True):
                os.mkdir(name, 0o700, dir_fd=directory)
            handle = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
            try:
                self._attributes(handle, member)
            finally:
                os.close(handle)
            return
        _clear(directory, name)
        if member.isreg():
            self._file(archive, member, directory, name)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=directory)
            os.chown(name, member.uid, member.gid, dir_fd=directory, follow_symlinks=False)
            os.utime(name, (member.mtime, member.mtime), dir_fd=directory, follow_symlinks=False)
        elif member.islnk():
            self._hardlink(member, directory, name)
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=directory)
            handle = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
            try:
                # chown clears set-id bits: mode after owner, on the node itself (an O_PATH descriptor).
                os.chown(paths.fd_path(handle), member.uid, member.gid)
                os.chmod(paths.fd_path(handle), stat.S_IMODE(member.mode))
            finally:
                os.close(handle)
        else:
            raise ImageError(f"{self.what}: {member.name!r} is of an unknown tar type {member.type!r}")

    def _file(self, archive, member, directory, name):
        self.limits.check_space(self.root, member.size, self.what)
        handle = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=directory)  # fmt: skip
        try:
            source = archive.extractfile(member)
            while chunk := source.read(CHUNK):
                os.write(handle, chunk)
            self._attributes(handle, member)
        finally:
            os.close(handle)

    def _hardlink(self, member, directory, name):
        target = _safe_name(member.linkname, self.what)
        # The target's directories are resolved inside the layer; the target itself is never followed, so a link
        # to a symlink links the symlink, as link(2) does.
        source, source_name = paths.parent(self.root_fd, target)
        try:
            info = os.stat(source_name, dir_fd=source, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                raise ImageError(f"{self.what}: refusing {member.name!r}, a hardlink to the directory {target!r}")
            os.link(source_name, name, src_dir_fd=source, dst_dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            raise ImageError(f"{self.what}: {member.name!r} links to {target!r}, which the layer lacks") from None
        finally:
            os.close(source)

    @staticmethod
    def _attributes(handle, member):
        os.fchown(handle, member.uid, member.gid)
        os.fchmod(handle, stat.S_IMODE(member.mode))
        os.utime(handle, (member.mtime, member.mtime))


def _extract(archive, root, what, limits):
    """Extract a layer tar into root, turning OCI whiteouts into overlayfs ones (0/0 char devices and the
    trusted.overlay.opaque xattr) so that the directory works as an overlay lower dir."""
    writer = _LayerWriter(root, what, limits)
    try:
        for member in archive:
            try:
                writer.write(archive, member)
            except OSError as exc:
                raise ImageError(f"{what}: cannot unpack {member.name!r}: {exc}") from exc
    finally:
        writer.close()


# -- getting images ---------------------------------------------------------------------------------------------
def _chunks(answer):
    yield from answer.iter_content(CHUNK)


def pull(store, client, reference, platform=PLATFORM):
    """Pull reference through client (a RegistryClient for its registry) into store; return the image record."""
    _registry, repository, tag = parse_reference(reference)
    found = client.manifest_raw(repository, tag)
    if found is None:
        raise ImageError(f"the registry {client.registry} has no image {repository}:{tag} (option name)")
    raw, media_type = found
    digest = DIGEST_PREFIX + _sha256(raw).hexdigest()
    if tag.startswith(DIGEST_PREFIX) and digest != tag:
        raise ImageError(f"{reference}: the manifest's sha256 is {digest}; rejected")
    manifest = fastjson.loads(raw)
    index_digest = None
    if media_type in INDEX_TYPES or "manifests" in manifest:
        index_digest = digest
        chosen = [
            entry["digest"]
            for entry in manifest.get("manifests", [])
            if (entry.get("platform", {}).get("os"), entry.get("platform", {}).get("architecture")) == platform
        ]
        if not chosen:
            raise ImageError(f"{reference} has no {'/'.join(platform)} image")
        raw, media_type = client.manifest_raw(repository, chosen[0])
        digest = DIGEST_PREFIX + _sha256(raw).hexdigest()
        if digest != chosen[0]:
            raise ImageError(f"{reference}: the platform manifest's sha256 is {digest}, not {chosen[0]}; rejected")
        manifest = fastjson.loads(raw)
    store.put_blob(digest, [raw], f"{reference} manifest")
    config_digest = manifest["config"]["digest"]
    store.put_blob(
        config_digest, _chunks(client.blob(repository, config_digest)), f"{reference} config",
        _size(manifest["config"], f"{reference} config"),
    )  # fmt: skip
    config = fastjson.loads(store.read_blob(config_digest))
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(manifest["layers"]):
        raise ImageError(
            f"{reference}: the config lists {len(diff_ids)} layers, the manifest {len(manifest['layers'])}"
        )
    layers = []
    for layer, diff_id in zip(manifest["layers"], diff_ids):
        what = f"{reference} layer {layer['digest']}"
        if not os.path.isdir(store.layer_path(diff_id)) and not store.has_blob(layer["digest"]):
            store.put_blob(layer["digest"], _chunks(client.blob(repository, layer["digest"])), what, _size(layer, what))
        store.unpack(layer["digest"], diff_id, what)
        layers.append({"blob": layer["digest"], "diff_id": diff_id})
    record = _record(reference, digest, config_digest, config, layers)
    if index_digest:
        # What the tag names when it names a manifest list or an index: force_pull compares against it.
        record["index_digest"] = index_digest
    return record


def _size(descriptor, what):
    size = descriptor.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what}: the manifest gives no valid size ({size!r}); rejected")
    return size


def import_archive(store, path, name=None):
    """Import a `docker save` archive (Docker's layout, or the OCI layout of Docker 25+); return the records."""
    import tarfile  # noqa: PLC0415

    records = []
    try:
        with tarfile.open(path) as archive:
            index = fastjson.load(archive.extractfile("manifest.json"))
            for entry in index:
                config_raw = archive.extractfile(entry["Config"]).read()
                config_digest = DIGEST_PREFIX + _sha256(config_raw).hexdigest()
                store.put_blob(config_digest, [config_raw], f"{path} config")
                config = fastjson.loads(config_raw)
                diff_ids = config.get("rootfs", {}).get("diff_ids", [])
                if len(diff_ids) != len(entry["Layers"]):
                    raise ImageError(
                        f"{path}: the config lists {len(diff_ids)} layers, manifest.json {len(entry['Layers'])}"
                    )
                layers = []
                for member_name, diff_id in zip(entry["Layers"], diff_ids):
                    member = archive.extractfile(member_name)
                    store.put_blob(
                        diff_id, iter(lambda member=member: member.read(CHUNK), b""), f"{path} {member_name}",
                        archive.getmember(member_name).size,
                    )  # fmt: skip
                    store.unpack(diff_id, diff_id, f"{path} {member_name}")
                    layers.append({"blob": diff_id, "diff_id": diff_id})
                manifest = fastjson.dumps({"config": config_digest, "layers": entry["Layers"]}, sort_keys=True).encode()
                manifest_digest = DIGEST_PREFIX + _sha256(manifest).hexdigest()
                store.put_blob(manifest_digest, [manifest], f"{path} manifest")
                for tag in (entry.get("RepoTags") or []) if name is None else [name]:
                    records.append(_record(tag, manifest_digest, config_digest, config, layers))
    except (KeyError, ValueError, tarfile.TarError) as exc:
        raise ImageError(f"{path} is not a docker save archive: {exc}") from exc
    return records


def _record(name, manifest_digest, config_digest, config, layers):
    return {
        "name": name,
        "manifest_digest": manifest_digest,
        "config_digest": config_digest,
        "layers": layers,
        "config": config.get("config", {}),
    }
