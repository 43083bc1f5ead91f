# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The container's root file system: an overlay of the image's unpacked layers (read-only lower dirs, top layer
first) under the container's own upper and work dirs, as Docker's overlay2 does (lowerdir, upperdir, workdir,
merged)."""

from __future__ import annotations

import os

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import paths, syscalls

# The kernel takes at most a page of mount options; Docker shortens layer paths with symlinks past that.
MAX_OPTIONS = 4000


class OverlayError(Exception):
    """The root file system could not be mounted or unmounted."""


def options(lower_dirs, upper, work, volatile=False):
    text = f"lowerdir={':'.join(lower_dirs)},upperdir={upper},workdir={work}" + (",volatile" if volatile else "")
    if len(text) > MAX_OPTIONS:
        raise OverlayError(f"{len(lower_dirs)} layers make {len(text)} bytes of overlay options (kernel limit 4096)")
    return text


def mount_rootfs(store, record, container_dir, volatile=False):
    """Mount the image's layers under container_dir/merged; return the merged path. volatile (for a container
    whose changes are thrown away, `run --rm`, as podman does) skips the upper layer's syncs, the longest part
    of an unmount on a busy disk."""
    lower = [store.layer_path(layer["diff_id"]) for layer in reversed(record["layers"])]
    missing = [path for path in lower if not os.path.isdir(path)]
    if missing:
        raise OverlayError(f"image {record['name']} lacks unpacked layers {missing}; pull it again (ns_image)")
    paths = {name: os.path.join(container_dir, name) for name in ("upper", "work", "merged")}
    for path in paths.values():
        os.makedirs(path, mode=0o755, exist_ok=True)
    if os.path.ismount(paths["merged"]):
        return paths["merged"]
    try:
        syscalls.mount(
            "overlay", paths["merged"], "overlay", 0, options(lower, paths["upper"], paths["work"], volatile)
        )
    except OSError as exc:
        raise OverlayError(str(exc)) from exc
    return paths["merged"]


def unmount_rootfs(container_dir, keep_changes=False):
    """Unmount the merged dir (lazily: a process that is still exiting may hold it) and, unless asked, drop the
    container's writable layer."""
    merged = os.path.join(container_dir, "merged")
    if os.path.ismount(merged):
        syscalls.umount(merged, syscalls.MNT_DETACH)
    if not keep_changes:
        for name in ("upper", "work", "merged"):
            paths.remove_tree(os.path.join(container_dir, name))
