"""Stage collection tarballs for an offline execution-environment build.

Usage: stage_collections.py COLLECTION_TARBALL OUTPUT_DIR [COLLECTIONS_PATH...]

COLLECTION_TARBALL is the collection itself, from `ansible-galaxy collection build`. Each collection its
MANIFEST.json depends on, and each of theirs in turn, is packed from its installed copy (the directory with
MANIFEST.json and FILES.json that ansible-galaxy or pip installed) in the artifact format that
`ansible-galaxy collection install` verifies against FILES.json. OUTPUT_DIR ends up holding exactly these
tarballs and a requirements.yml listing them.

The tarballs are written canonically (sorted members, fixed times and owners, gzip without a timestamp), so the
same content gives the same bytes and the image build's cache holds when nothing changed. Prints a JSON summary
and whether OUTPUT_DIR changed; exits non-zero naming the first dependency that is not installed.
"""

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import yaml


def canonical_tarball(members):
    """members: (name, bytes or None for a directory), in any order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(members, key=lambda member: member[0]):
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def from_built_tarball(path):
    with tarfile.open(path) as tar:
        members = [
            (member.name, None if member.isdir() else tar.extractfile(member).read())
            for member in tar.getmembers()
            if member.isdir() or member.isfile()
        ]
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())
    return manifest, members


def from_installed(collection_dir):
    """The installed copy as it is: the `ansible` pip package leaves out the tests and CI files its FILES.json
    lists, so FILES.json (and its checksum in MANIFEST.json) is rewritten to what is there."""
    manifest = json.loads((collection_dir / "MANIFEST.json").read_text())
    files = json.loads((collection_dir / "FILES.json").read_text())
    members, present = [], []
    for entry in files["files"]:
        path = collection_dir / entry["name"]
        if entry["name"] == ".":
            present.append(entry)
        elif entry["ftype"] == "dir" and path.is_dir():
            members.append((entry["name"], None))
            present.append(entry)
        elif entry["ftype"] == "file" and path.is_file():
            members.append((entry["name"], path.read_bytes()))
            present.append(entry)
    files_json = json.dumps({**files, "files": present}, indent=4).encode()
    manifest["file_manifest_file"]["chksum_sha256"] = hashlib.sha256(files_json).hexdigest()
    members.append(("FILES.json", files_json))
    members.append(("MANIFEST.json", json.dumps(manifest, indent=4).encode()))
    return manifest, members


def installed_collection(fqcn, search_paths):
    namespace, name = fqcn.split(".", 1)
    for root in search_paths:
        candidate = Path(root) / "ansible_collections" / namespace / name
        if (candidate / "MANIFEST.json").is_file():
            return candidate
    return None


def main(argv):
    collection_tarball, output_dir, *search_paths = argv
    # Ansible also finds collections in ansible_collections packages on its Python's path (the `ansible` pip
    # package): this script runs with the controller's Python.
    search_paths += [entry for entry in sys.path if entry]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staged = {}
    manifest, members = from_built_tarball(collection_tarball)
    pending = [(manifest, members)]
    seen = set()
    while pending:
        manifest, members = pending.pop()
        info = manifest["collection_info"]
        staged[f"{info['namespace']}-{info['name']}-{info['version']}.tar.gz"] = canonical_tarball(members)
        for fqcn in info.get("dependencies") or {}:
            if fqcn in seen:
                continue
            seen.add(fqcn)
            collection_dir = installed_collection(fqcn, search_paths)
            if collection_dir is None:
                sys.exit(f"{fqcn}: not installed under any of {', '.join(search_paths)}")
            pending.append(from_installed(collection_dir))
    requirements = {"collections": [{"name": f"collections/{name}", "type": "file"} for name in sorted(staged)]}
    staged["requirements.yml"] = yaml.safe_dump(requirements, sort_keys=False).encode()
    changed = False
    for stale in output_dir.iterdir():
        if stale.name not in staged:
            stale.unlink()
            changed = True
    for name, data in staged.items():
        target = output_dir / name
        if not target.is_file() or target.read_bytes() != data:
            target.write_bytes(data)
            changed = True
    json.dump({"changed": changed, "dependencies": sorted(seen), "artifacts": sorted(staged)}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
