# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mooring-ctr's docker-like command line (bin/mooring-ctr's usage): pull, load, images, rmi, run, ps, stop, rm,
exec, logs. Imported only when the call is not the OCI runtime's (oci_cli.py), so that argparse and the image
store stay off the shim's path; a module, so that it is byte-compiled like the rest."""

from __future__ import annotations

import argparse
import os
import sys

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import cgroups, network, spec
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.container import (
    ContainerError,
    Runtime,
    check_name,
    parse_ports,
    parse_restart_policy,
    parse_volumes,
)
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.layers import (
    ImageError,
    import_archive,
    parse_reference,
    pull,
)
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.state import locked

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _runtime(options):
    return Runtime(options.root, options.run_dir, options.bridge, options.subnet)


def cmd_pull(options):
    # requests costs ~0.1 s to import: only pulls pay it.
    from ansible_collections.mooring.ops.plugins.module_utils import harbor  # noqa: PLC0415

    runtime = _runtime(options)
    password = sys.stdin.readline().rstrip("\n") if options.password_stdin else None
    registry = parse_reference(options.image)[0]
    client = harbor.RegistryClient(
        registry, username=options.username, password=password, ca_cert=options.ca_cert,
        validate_certs=not options.insecure,
    )  # fmt: skip
    runtime.store.ensure()
    with locked(os.path.join(options.root, "store.lock")):
        try:
            record = pull(runtime.store, client, options.image)
        except harbor.RegistryError as exc:
            raise ImageError(str(exc)) from exc
        runtime.store.save_image(record)
    _say(record["manifest_digest"])


def cmd_load(options):
    runtime = _runtime(options)
    runtime.store.ensure()
    with locked(os.path.join(options.root, "store.lock")):
        for record in import_archive(runtime.store, options.input, options.name):
            runtime.store.save_image(record)
            _say(f"Loaded image: {record['name']}")


def cmd_images(options):
    _say(f"{'IMAGE':<60} {'DIGEST':<20} LAYERS")
    for record in _runtime(options).store.images():
        _say(f"{record['name']:<60} {record['manifest_digest'][7:19]:<20} {len(record['layers'])}")


def cmd_rmi(options):
    runtime = _runtime(options)
    with locked(os.path.join(options.root, "store.lock")):
        if not runtime.store.remove_image(options.image):
            raise Refused(f"no such image: {options.image}")
        runtime.store.collect_garbage()
    _say(f"Untagged: {options.image}")


def _config(runtime, options):
    record = runtime.store.image(options.image)
    if record is None:
        raise ContainerError(f"image {options.image} is not in the store; mooring-ctr pull it first")
    image = record.get("config") or {}
    argv = list(image.get("Entrypoint") or []) + (options.command or list(image.get("Cmd") or []))
    env = dict(item.split("=", 1) for item in image.get("Env") or [] if "=" in item)
    env.update(item.split("=", 1) for item in options.env)
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", "/root")
    env.setdefault("HOSTNAME", options.name)
    return {
        "image": options.image, "image_digest": record["manifest_digest"], "argv": argv, "env": env,
        "working_dir": image.get("WorkingDir") or "/", "user": image.get("User") or None,
        "hostname": options.name,
        "limits": {
            "memory": cgroups.parse_size(options.memory, "memory") if options.memory else None, "memory_swap": None,
            "cpus": options.cpus, "cpu_shares": None, "cpuset_cpus": None, "pids_limit": options.pids_limit,
        },
        "network": options.network, "published_ports": parse_ports(options.publish),
        "volumes": parse_volumes(options.volume), "read_only": options.read_only, "tmpfs": [],
        "restart_policy": parse_restart_policy(options.restart),
        **spec.options_config({
            "privileged": options.privileged, "capabilities": options.cap_add, "cap_drop": options.cap_drop,
            "security_opts": options.security_opt, "devices": options.device,
            "ulimits": [item.replace("=", ":", 1) for item in options.ulimit],
            "sysctls": dict(item.split("=", 1) for item in options.sysctl), "network": options.network,
            "oom_score_adj": options.oom_score_adj,
        }),
    }  # fmt: skip


def cmd_run(options):
    runtime = _runtime(options)
    options.name = options.name or "ctr-" + os.urandom(5).hex()
    check_name(options.name)
    if options.publish and options.network != "bridge":
        raise ContainerError("-p/--publish needs --network bridge")
    if options.rm and options.restart != "no":
        raise ContainerError("--rm and --restart exclude each other")
    config = _config(runtime, options)
    # Its writable layer dies with it: no need to sync it to disk.
    config["volatile"] = options.rm
    with runtime.lock(options.name):
        if runtime.state(options.name):
            raise Refused(f"a container named {options.name} exists")
        if config["network"] == "bridge":
            network.Network.check_ports(config["published_ports"])
        runtime.create(options.name, config)
        if options.detach:
            try:
                runtime.start(options.name)
            except ContainerError:
                runtime.remove(options.name)
                raise
            _say(options.name)
            return 0
    sys.stdout.flush()
    try:
        state = runtime.run_attached(options.name, sys.stdout.fileno())
    finally:
        if options.rm:
            with runtime.lock(options.name):
                runtime.remove(options.name)
    if state and state.get("error"):
        # docker run's convention: 125 when the container could not be run at all.
        _say(f"mooring-ctr: {options.name}: {state['error']}", sys.stderr)
        return 125
    return (state or {}).get("exit_code") or 0


def cmd_ps(options):
    runtime = _runtime(options)
    _say(f"{'NAME':<24} {'STATUS':<10} {'PID':<8} {'IP':<16} IMAGE")
    for name in runtime.names():
        state, config = runtime.state(name) or {}, runtime.config(name) or {}
        if state.get("status") != "running" and not options.all:
            continue
        pid = state.get("pid") if state.get("status") == "running" else ""
        status, address = state.get("status", "?"), state.get("ip") or ""
        _say(f"{name:<24} {status:<10} {pid or '':<8} {address:<16} {config.get('image')}")


def cmd_stop(options):
    runtime = _runtime(options)
    check_name(options.name)
    with runtime.lock(options.name):
        if runtime.state(options.name) is None:
            raise Refused(f"no such container: {options.name}")
        state = runtime.stop(options.name, options.time)
    _say(f"{options.name} exited with {state.get('exit_code')}")


def cmd_rm(options):
    runtime = _runtime(options)
    check_name(options.name)
    with runtime.lock(options.name):
        state = runtime.state(options.name)
        if state is None:
            raise Refused(f"no such container: {options.name}")
        if state.get("status") in ("running", "paused") and not options.force:
            raise Refused(f"{options.name} is {state['status']}: stop it first, or rm -f")
        runtime.remove(options.name)
    _say(options.name)


def cmd_exec(options):
    code, out, err = _runtime(options).exec(options.name, options.command, stdin=b"")
    sys.stdout.buffer.write(out)
    sys.stderr.buffer.write(err)
    return code


def cmd_logs(options):
    sys.stdout.buffer.write(_runtime(options).logs(options.name))


def _key_value(option):
    def parse(text):
        if "=" not in text:
            raise argparse.ArgumentTypeError(f"{option} takes KEY=VALUE, got {text!r}")
        return text

    return parse


def _add_run(commands):
    sub = commands.add_parser("run")
    sub.add_argument("--rm", action="store_true")
    sub.add_argument("-d", "--detach", action="store_true")
    sub.add_argument("--name", default=None)
    sub.add_argument("-e", "--env", action="append", default=[])
    sub.add_argument("-p", "--publish", action="append", default=[])
    sub.add_argument("-v", "--volume", action="append", default=[])
    sub.add_argument("-m", "--memory", default=None)
    sub.add_argument("--cpus", type=float, default=None)
    sub.add_argument("--pids-limit", type=int, default=None)
    sub.add_argument("--network", choices=["bridge", "host", "none"], default="bridge")
    sub.add_argument("--read-only", action="store_true")
    sub.add_argument("--restart", default="no")
    sub.add_argument("--privileged", action="store_true")
    sub.add_argument("--cap-add", action="append", default=[])
    sub.add_argument("--cap-drop", action="append", default=[])
    sub.add_argument("--security-opt", action="append", default=[])
    sub.add_argument("--device", action="append", default=[])
    sub.add_argument("--sysctl", action="append", default=[], type=_key_value("--sysctl"))
    sub.add_argument("--ulimit", action="append", default=[])
    sub.add_argument("--oom-score-adj", type=int, default=None)
    sub.add_argument("image")
    sub.add_argument("command", nargs=argparse.REMAINDER)


def _add_pull(commands):
    sub = commands.add_parser("pull")
    sub.add_argument("image")
    sub.add_argument("--username", default=None)
    sub.add_argument("--password-stdin", action="store_true")
    sub.add_argument("--ca-cert", default=None)
    sub.add_argument("--insecure", action="store_true")


def _add_load(commands):
    sub = commands.add_parser("load")
    sub.add_argument("-i", "--input", required=True)
    sub.add_argument("--name", default=None)


def _add_stop(commands):
    sub = commands.add_parser("stop")
    sub.add_argument("-t", "--time", type=int, default=10)
    sub.add_argument("name")


def _add_rm(commands):
    sub = commands.add_parser("rm")
    sub.add_argument("-f", "--force", action="store_true")
    sub.add_argument("name")


def _add_exec(commands):
    sub = commands.add_parser("exec")
    sub.add_argument("name")
    sub.add_argument("command", nargs=argparse.REMAINDER)


_SUBCOMMANDS = {
    "pull": _add_pull,
    "load": _add_load,
    "images": lambda commands: commands.add_parser("images"),
    "rmi": lambda commands: commands.add_parser("rmi").add_argument("image"),
    "run": _add_run,
    "ps": lambda commands: commands.add_parser("ps").add_argument("-a", "--all", action="store_true"),
    "stop": _add_stop,
    "rm": _add_rm,
    "exec": _add_exec,
    "logs": lambda commands: commands.add_parser("logs").add_argument("name"),
}
_GLOBAL_OPTIONS = ("--root", "--run-dir", "--bridge", "--subnet")


def _command_in(argv):
    """The subcommand that argv names after the global options, or None."""
    words = iter(argv)
    for word in words:
        if word in _GLOBAL_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return word if word in _SUBCOMMANDS else None
        elif word.split("=", 1)[0] not in _GLOBAL_OPTIONS:
            return None
    return None


def parser(argv=None):
    """The command line's parser; with argv, only the subcommand it names is built (each costs a few
    milliseconds of a `mooring-ctr run` otherwise), all of them for help and for a call that names none."""
    top = argparse.ArgumentParser(prog="mooring-ctr", description=__doc__.split("\n\n", maxsplit=1)[0])
    top.add_argument("--root", default="/var/lib/mooring")
    top.add_argument("--run-dir", default="/run/mooring")
    top.add_argument("--bridge", default=network.BRIDGE)
    top.add_argument("--subnet", default=network.SUBNET)
    commands = top.add_subparsers(dest="action", required=True)
    named = _command_in(argv) if argv is not None else None
    for name, add in _SUBCOMMANDS.items():
        if named in (None, name):
            add(commands)
    return top


class Refused(Exception):
    """A call refused or failed: main() prints `mooring-ctr: <message>` and returns 1."""


def main():
    """The exit status of the call in sys.argv (bin/mooring-ctr exits with it)."""
    options = parser(sys.argv[1:]).parse_args()
    if os.geteuid() != 0:
        _say("mooring-ctr must run as root (namespaces, cgroups, mounts)", sys.stderr)
        return 1
    try:
        return globals()["cmd_" + options.action](options) or 0
    except (Refused, ContainerError, ImageError, network.NetworkError, cgroups.CgroupError, OSError, ValueError) as exc:
        _say(f"mooring-ctr: {exc}", sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _say(text, stream=None):
    (stream or sys.stdout).write(f"{text}\n")
