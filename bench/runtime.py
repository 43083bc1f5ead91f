"""Runtime benchmark: mooring's daemonless runtime against docker, podman, runc, crun and a shell floor, in one run.

For the same image (the lab's mooring/debian:bookworm, imported into mooring's store from `docker save`), times
`... run --rm IMAGE /bin/true` N times each, interleaved pair by pair so that the machine's load hits all alike:

  docker          docker run --rm IMAGE /bin/true                        (bridge network, the daemon's path)
  docker-mooring  docker run --rm --runtime mooring IMAGE /bin/true      (the same engine and shim, mooring's
                                                                         runtime as roles/oci_runtime installs it)
  podman          podman run --rm --network none IMAGE /bin/true         (the daemonless peer; Debian's package)
  mooring         mooring-ctr run --rm IMAGE /bin/true                   (bridge network: netns, veth, lease)
  mooring-none    mooring-ctr run --rm --network none IMAGE /bin/true    (loopback only)
  mooring-before  the same as mooring-none from another commit (--before REF, e.g. the one before a change)
  runc, crun      run on an OCI bundle over the same overlay rootfs      (the peers: no network, no daemon)
  floor           sh: overlay mount, unshare pid/mnt/uts/ipc/net, chroot, /bin/true, umount

Then where mooring's start-up time goes: the host's Python started isolated with nothing imported, the shim's
cheapest call (`delete --force` of a container already gone) and `features`, and the imports of that call
(`-X importtime`, the largest modules).

A peer that is not installed, or that refuses this host (Debian 12's crun 1.8.1 refuses a hybrid cgroup layout),
is reported with its own words and left out of the table. Prints the medians and each one's ratio to docker.
Needs root, the engine, and the image (make images). Leaves nothing behind but the collection's byte-compiled
modules (__pycache__, ignored by git).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import overlay  # noqa: E402
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.layers import Store  # noqa: E402

CTR = str(REPO_DIR / "bin" / "mooring-ctr")
# mooring-ctr as a host runs it (the oci_runtime role's command does the same): the host's Python, isolated.
HOST_PYTHON = ["/usr/bin/python3", "-I", "-S"] if os.path.exists("/usr/bin/python3") else [sys.executable]
OCI_RUNTIME = "/usr/local/bin/mooring-runtime"  # roles/oci_runtime; what dockerd runs


def refusal(argv):
    """None when argv runs; else what it said (a peer that this host cannot run is reported, not timed)."""
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} is not installed"
    process = subprocess.run(argv, capture_output=True, check=False, timeout=120)
    if process.returncode != 0:
        return (process.stderr.decode() or process.stdout.decode()).strip().splitlines()[-1][:200]
    return None


def timed(argv, **kwargs):
    started = time.perf_counter()
    process = subprocess.run(argv, capture_output=True, check=False, **kwargs)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {process.stderr.decode()[-2000:]}")
    return elapsed


def _before(revision, image, work):
    """mooring-ctr of another commit, from a worktree of its own, with a store of its own: its run argv."""
    before = work / "before"
    subprocess.run(["git", "-C", str(REPO_DIR), "worktree", "add", "--detach", str(before), revision],
                   check=True, capture_output=True)  # fmt: skip
    ctr = [*HOST_PYTHON, str(before / "bin" / "mooring-ctr"), "--root", str(work / "store-before"), "--run-dir",
           str(work / "run-before")]  # fmt: skip
    subprocess.run([*HOST_PYTHON, "-m", "compileall", "-q", str(before / "plugins" / "module_utils")],
                   check=True, capture_output=True)  # fmt: skip
    archive = work / "before.tar"
    subprocess.run(["docker", "save", "-o", str(archive), image], check=True)
    subprocess.run([*ctr, "load", "-i", str(archive), "--name", "bench"], check=True, capture_output=True)
    archive.unlink()
    return [*ctr, "run", "--rm", "--network", "none", "bench", "/bin/true"]


def _report(results, options):
    docker = statistics.median(results["docker"])
    print(
        f"{'run --rm IMAGE /bin/true':<28}{'median ms':>11}{'x docker':>10}   ({options.runs} runs each, interleaved)"
    )
    for name, timings in results.items():
        median = statistics.median(timings)
        print(f"{name:<28}{median * 1000:>11.1f}{median / docker:>10.2f}")
    if "docker-mooring" in results:
        ratio = statistics.median(results["docker-mooring"]) / docker
        print(f"docker --runtime mooring against --runtime runc (docker): {ratio:.2f}x")
    if "mooring-before" in results:
        cost = statistics.median(results["mooring-none"]) - statistics.median(results["mooring-before"])
        print(f"mooring-none against {options.before}: {cost * 1000:+.1f} ms on the median start")


def _startup(runs):
    """Medians (ms) of the Python floor and of one OCI call, and the largest imports of that call."""
    python = Path(OCI_RUNTIME).read_text().split("exec ", 1)[1].split()[0] if Path(OCI_RUNTIME).exists() else None
    if python is None:
        print(f"start-up: {OCI_RUNTIME} is not installed (roles/oci_runtime)")
        return
    # The shim's last call of every `docker run --rm` (the container is gone by then): the runtime's floor.
    hot = ["--root", tempfile.mkdtemp(prefix="mooring-bench-root-"), "delete", "--force", "gone"]
    steps = {
        "python -I -S -c pass": [python, "-I", "-S", "-c", "pass"],
        "mooring-runtime delete --force": [OCI_RUNTIME, *hot],
        "mooring-runtime features": [OCI_RUNTIME, "features"],
    }
    print(f"{'start-up':<28}{'median ms':>11}   ({runs} runs each)")
    for name, argv in steps.items():
        timings = sorted(timed(argv) for _run in range(runs))
        print(f"{name:<28}{statistics.median(timings) * 1000:>11.1f}")
    script = Path(OCI_RUNTIME).read_text().split("exec ", 1)[1].split()[3]
    process = subprocess.run([python, "-I", "-S", "-X", "importtime", script, *hot], capture_output=True, text=True,
                             check=False)  # fmt: skip
    shutil.rmtree(hot[1], ignore_errors=True)
    imports = []
    for line in process.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            own, cumulative, name = line.removeprefix("import time:").split("|")
            if own.strip().isdigit():
                imports.append((int(own), int(cumulative), name))
    total = sum(own for own, _cumulative, _name in imports)
    print(f"imports of delete --force: {total / 1000:.1f} ms in {len(imports)} modules; the largest (own ms):")
    for own, _cumulative, name in sorted(imports, reverse=True)[:8]:
        print(f"  {own / 1000:>6.2f}  {name.strip()}")


def _runc_bundle(work, merged):
    """runc's own default spec, running /bin/true on the shared rootfs (crun reads the same bundle)."""
    bundle = work / "bundle"
    bundle.mkdir()
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    spec["root"] = {"path": merged, "readonly": True}
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--image", default="mooring/debian:bookworm")
    parser.add_argument("--before", default=None, help="a git revision whose mooring-ctr runs beside this one")
    options = parser.parse_args()

    # As an installed collection is: byte-compiled. (An environment with PYTHONDONTWRITEBYTECODE would otherwise
    # have every mooring-ctr start compile the runtime's modules again, ~15-20 ms of each run.)
    subprocess.run(
        [*HOST_PYTHON, "-m", "compileall", "-q", str(REPO_DIR / "plugins" / "module_utils")],
        check=True, capture_output=True,
    )  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="mooring-bench-"))
    ctr = [*HOST_PYTHON, CTR, "--root", str(work / "store"), "--run-dir", str(work / "run"), "--bridge", "mooringb0",
           "--subnet", "10.91.0.0/24"]  # fmt: skip
    try:
        archive = work / "image.tar"
        subprocess.run(["docker", "save", "-o", str(archive), options.image], check=True)
        subprocess.run([*ctr, "load", "-i", str(archive), "--name", "bench"], check=True, capture_output=True)
        archive.unlink()
        store = Store(str(work / "store"))
        record = store.image("bench")

        # runc and the floor run on the same overlay rootfs.
        merged = overlay.mount_rootfs(store, record, str(work / "rootfs"))
        bundle = _runc_bundle(work, merged)
        lower = ":".join(store.layer_path(layer["diff_id"]) for layer in reversed(record["layers"]))
        floor = (
            f"d=$(mktemp -d) && mkdir $d/u $d/w $d/m && mount -t overlay overlay "
            f"-o lowerdir={lower},upperdir=$d/u,workdir=$d/w $d/m && "
            "unshare --pid --fork --mount --uts --ipc --net chroot $d/m /bin/true; umount $d/m; rm -rf $d"
        )
        candidates = {
            "docker": ["docker", "run", "--rm", options.image, "/bin/true"],
            "docker-mooring": ["docker", "run", "--rm", "--runtime", "mooring", options.image, "/bin/true"],
            # runc under podman: Debian 12's crun refuses this host's hybrid cgroups (see the crun line). The
            # ulimits: podman's defaults exceed this machine's hard limits.
            "podman": ["podman", "--runtime", "runc", "run", "--rm", "--network", "none", "--ulimit",
                       "nofile=1024:1024", "--ulimit", "nproc=1024:1024", f"localhost/{options.image}", "/bin/true"],
            "mooring": [*ctr, "run", "--rm", "bench", "/bin/true"],
            "mooring-none": [*ctr, "run", "--rm", "--network", "none", "bench", "/bin/true"],
            "runc": ["runc", "run", "--bundle", str(bundle), "mooring-bench"],
            "crun": ["crun", "run", "--bundle", str(bundle), "mooring-bench-crun"],
            "floor": ["sh", "-c", floor],
        }  # fmt: skip
        if shutil.which("podman"):
            # podman's own store, filled from the same docker save (no registry is reachable here).
            subprocess.run(["docker", "save", "-o", str(work / "podman.tar"), options.image], check=True)
            subprocess.run(["podman", "load", "-q", "-i", str(work / "podman.tar")], check=True, capture_output=True)
            (work / "podman.tar").unlink()
        if options.before:
            candidates["mooring-before"] = _before(options.before, options.image, work)
        refused = {name: refusal(argv) for name, argv in candidates.items()}
        for name, why in refused.items():
            if why:
                print(f"{name}: not timed: {why}")
                del candidates[name]
        for argv in candidates.values():
            timed(argv)  # warm caches once
        results = {name: [] for name in candidates}
        for _run in range(options.runs):
            for name, argv in candidates.items():
                results[name].append(timed(argv))
        overlay.unmount_rootfs(str(work / "rootfs"))
    finally:
        subprocess.run([*ctr, "rmi", "bench"], capture_output=True, check=False)
        if shutil.which("crun"):
            subprocess.run(["crun", "delete", "-f", "mooring-bench-crun"], capture_output=True, check=False)
        if shutil.which("podman"):
            subprocess.run(["podman", "rmi", "-f", f"localhost/{options.image}"], capture_output=True, check=False)
        if options.before:
            subprocess.run(["git", "-C", str(REPO_DIR), "worktree", "remove", "--force", str(work / "before")],
                           capture_output=True, check=False)  # fmt: skip
        subprocess.run(["ip", "link", "delete", "mooringb0"], capture_output=True, check=False)
        if os.path.ismount(work / "rootfs" / "merged"):
            subprocess.run(["umount", str(work / "rootfs" / "merged")], check=False)
        shutil.rmtree(work, ignore_errors=True)

    _report(results, options)
    _startup(options.runs)


if __name__ == "__main__":
    main()
