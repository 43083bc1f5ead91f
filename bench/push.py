"""Push benchmark for mooring.ops.harbor_image against the `docker push` CLI, on the lab's registry harbor.lab.

Measures, in one run and on the same machine, for images of the same size with fresh random content (so that
neither side finds a layer already in the registry):
  cold      `docker tag` + `docker push` (CLI)  vs  harbor_image (the module as a process, and through `ansible`)
  re-push   harbor_image on an image the registry already holds under that tag (goal <= 0.2 s: one request)
  shared    a second image on top of the first one (only its new layer should move): bytes received by the
            registry for the first push and for the second, against the new layer's size
and prints medians and the ratios module/CLI (goal <= 1.1). Needs the lab (`make lab`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
# The checkout resolves as the collection through collections/ (see ansible.cfg).
sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.harbor import RegistryClient  # noqa: E402

LAB_DIR = REPO_DIR / ".lab"
REGISTRY = "harbor.lab"
PROJECT = "mooring-bench"
REGISTRY_CONTAINER = "mooring-lab-registry"
MODULE = REPO_DIR / "plugins" / "modules" / "harbor_image.py"


def sh(*command, **options):
    process = subprocess.run(command, capture_output=True, text=True, check=False, **options)
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{process.stdout[-2000:]}{process.stderr[-2000:]}")
    return process.stdout


def timed(*command, **options):
    started = time.monotonic()
    output = sh(*command, **options)
    return time.monotonic() - started, output


def build(tag, size_mb, base=None):
    """An image with one layer of fresh random bytes (FROM scratch, or on top of `base`)."""
    with tempfile.TemporaryDirectory() as context:
        with open(os.path.join(context, "blob"), "wb") as blob:
            blob.write(os.urandom(size_mb * 1024 * 1024))
        Path(context, "Dockerfile").write_text(f"FROM {base or 'scratch'}\nCOPY blob /blob-{uuid.uuid4().hex}\n")
        sh("docker", "build", "-q", "-t", tag, context)
    return tag


def registry_received_bytes():
    """Bytes the registry container has received on its network interface (read from its network namespace)."""
    pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", REGISTRY_CONTAINER).strip()
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines():
        name, _sep, counters = line.partition(":")
        if name.strip() == "eth0":
            return int(counters.split()[0])
    sys.exit("the registry container has no eth0")


def module_args(source, repository, tag):
    return {
        "source": source,
        "registry": REGISTRY,
        "project": PROJECT,
        "repository": repository,
        "tag": tag,
        "username": "mooring",
        "password": (LAB_DIR / "registry-password").read_text().strip(),
        "ca_cert": str(LAB_DIR / "ca" / "ca.crt"),
    }


def run_module(args):
    """The module as Ansible runs it on a host (a Python process with its arguments), timed; returns (s, result)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as argsfile:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, argsfile)
        argsfile.flush()
        env = dict(os.environ, PYTHONPATH=str(REPO_DIR / "collections"))
        elapsed, output = timed(sys.executable, str(MODULE), argsfile.name, env=env)
    result = json.loads(output)
    if result.get("failed"):
        sys.exit(f"harbor_image failed: {result.get('msg')}")
    return elapsed, result


def registry_check(repository, tag):
    """The module's registry question alone, in this process: seconds and HTTP requests for one tag lookup
    (after the first, which also answers the auth challenge)."""
    password = (LAB_DIR / "registry-password").read_text().strip()
    client = RegistryClient(REGISTRY, username="mooring", password=password, ca_cert=str(LAB_DIR / "ca" / "ca.crt"))
    client.tag_digests(f"{PROJECT}/{repository}", tag)
    sent = []
    client._session.hooks["response"].append(lambda response, *args, **kwargs: sent.append(response))
    started = time.monotonic()
    client.tag_digests(f"{PROJECT}/{repository}", tag)
    return time.monotonic() - started, len(sent)


def run_ansible(args):
    """The same through `ansible localhost -m`, controller start-up included."""
    elapsed, _output = timed("ansible", "localhost", "-m", "mooring.ops.harbor_image", "-a", json.dumps(args))
    return elapsed


def remove(*tags):
    subprocess.run(["docker", "image", "rm", "-f", *tags], capture_output=True, check=False)


def one_round(size_mb, layer_mb):
    run_id = uuid.uuid4().hex[:8]
    cli_source = build(f"mooring-bench/cli-{run_id}:1", size_mb)
    module_source = build(f"mooring-bench/module-{run_id}:1", size_mb)
    ansible_source = build(f"mooring-bench/ansible-{run_id}:1", size_mb)
    cli_target = f"{REGISTRY}/{PROJECT}/cli-{run_id}:1"
    try:
        received = registry_received_bytes()
        started = time.monotonic()
        sh("docker", "tag", cli_source, cli_target)
        sh("docker", "push", "-q", cli_target)
        cli = time.monotonic() - started
        cli_bytes = registry_received_bytes() - received

        received = registry_received_bytes()
        module, first = run_module(module_args(module_source, f"module-{run_id}", "1"))
        module_bytes = registry_received_bytes() - received
        if not first["changed"]:
            sys.exit("the cold push with harbor_image reported no change")
        through_ansible = run_ansible(module_args(ansible_source, f"ansible-{run_id}", "1"))

        repush, again = run_module(module_args(module_source, f"module-{run_id}", "1"))
        if again["changed"]:
            sys.exit("the re-push of an unchanged image reported a change")
        repush_ansible = run_ansible(module_args(module_source, f"module-{run_id}", "1"))
        check, requests_sent = registry_check(f"module-{run_id}", "1")

        shared_source = build(f"mooring-bench/module-{run_id}:2", layer_mb, base=module_source)
        received = registry_received_bytes()
        shared, _result = run_module(module_args(shared_source, f"module-{run_id}", "2"))
        shared_bytes = registry_received_bytes() - received
    finally:
        remove(cli_source, module_source, ansible_source, cli_target, f"mooring-bench/module-{run_id}:2")
        for name in ("module", "ansible"):
            for tag in ("1", "2"):
                remove(f"{REGISTRY}/{PROJECT}/{name}-{run_id}:{tag}")
    return {
        "cli": cli,
        "module": module,
        "ansible": through_ansible,
        "repush": repush,
        "repush-ansible": repush_ansible,
        "check": check,
        "check-requests": requests_sent,
        "shared": shared,
        "cli-bytes": cli_bytes,
        "module-bytes": module_bytes,
        "shared-bytes": shared_bytes,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the median is used)")
    parser.add_argument("--size-mb", type=int, default=128, help="size of the first image's layer")
    parser.add_argument("--layer-mb", type=int, default=8, help="size of the layer the second image adds")
    options = parser.parse_args()
    os.environ.setdefault("ANSIBLE_CONFIG", str(REPO_DIR / "ansible.cfg"))
    if not (LAB_DIR / "registry-password").exists():
        sys.exit("the lab is not up: run `make lab` first")

    rounds = []
    for number in range(1, options.rounds + 1):
        rounds.append(one_round(options.size_mb, options.layer_mb))
        last = rounds[-1]
        print(
            f"round {number}: cold CLI {last['cli']:.2f}s, module {last['module']:.2f}s "
            f"(ansible {last['ansible']:.2f}s); re-push {last['repush']:.3f}s; shared {last['shared']:.2f}s"
        )
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    mib = 1024 * 1024
    print()
    print(f"image: one {options.size_mb} MiB layer; second image adds {options.layer_mb} MiB; median of {len(rounds)}")
    print(f"{'':<34}{'seconds':>10}{'vs CLI':>9}")
    print(f"{'cold push, docker tag + push':<34}{median['cli']:>10.2f}{1:>9.2f}")
    print(
        f"{'cold push, harbor_image':<34}{median['module']:>10.2f}{median['module'] / median['cli']:>9.2f}  goal <= 1.1"
    )
    print(
        f"{'cold push, ansible -m harbor_image':<34}{median['ansible']:>10.2f}{median['ansible'] / median['cli']:>9.2f}"
    )
    print(f"{'re-push unchanged, harbor_image':<34}{median['repush']:>10.3f}{'':>9}  goal <= 0.2 s")
    print(f"{'re-push unchanged, ansible -m':<34}{median['repush-ansible']:>10.3f}")
    print(
        f"{'  of which the registry question':<34}{median['check']:>10.3f}"
        f"{'':>9}  {median['check-requests']:.0f} HTTP request(s); the rest is Python start-up and imports"
    )
    print(f"{'second image, shared base':<34}{median['shared']:>10.2f}")
    print()
    print(
        f"bytes received by the registry: CLI push {median['cli-bytes'] / mib:.1f} MiB, harbor_image push "
        f"{median['module-bytes'] / mib:.1f} MiB, second image {median['shared-bytes'] / mib:.1f} MiB "
        f"(its new layer: {options.layer_mb} MiB)"
    )


if __name__ == "__main__":
    main()
