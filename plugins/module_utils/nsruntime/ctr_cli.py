# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mooring-ctr's docker-like command line (bin/mooring-ctr's usage): pull, load, images, rmi, run, ps, stop, rm,
exec, logs. Imported only when the call is not the OCI runtime's (oci_cli.py), so that the image store stays off
the shim's path; a module, so that it is byte-compiled like the rest."""

from __future__ import annotations

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


# The command line, parsed by hand: argparse (with re, gettext, locale and shutil behind it) cost a
# `mooring-ctr run` ~8 ms. An option is (names, kind, default); its attribute is its last name's, as argparse's.
_FLAG, _APPEND = "flag", "append"
_RUN = (
    (("--rm",), _FLAG, False), (("-d", "--detach"), _FLAG, False), (("--name",), str, None),
    (("-e", "--env"), _APPEND, ()), (("-p", "--publish"), _APPEND, ()), (("-v", "--volume"), _APPEND, ()),
    (("-m", "--memory"), str, None), (("--cpus",), float, None), (("--pids-limit",), int, None),
    (("--network",), ("bridge", "host", "none"), "bridge"), (("--read-only",), _FLAG, False),
    (("--restart",), str, "no"), (("--privileged",), _FLAG, False), (("--cap-add",), _APPEND, ()),
    (("--cap-drop",), _APPEND, ()), (("--security-opt",), _APPEND, ()), (("--device",), _APPEND, ()),
    (("--sysctl",), _APPEND, ()), (("--ulimit",), _APPEND, ()), (("--oom-score-adj",), int, None),
)  # fmt: skip
# name: (options, positional arguments, whether the words after them are the container's command)
_SUBCOMMANDS = {
    "pull": (
        ((("--username",), str, None), (("--password-stdin",), _FLAG, False), (("--ca-cert",), str, None),
         (("--insecure",), _FLAG, False)),
        ("image",), False,
    ),
    "load": (((("-i", "--input"), str, None), (("--name",), str, None)), (), False),
    "images": ((), (), False),
    "rmi": ((), ("image",), False),
    "run": (_RUN, ("image",), True),
    "ps": (((("-a", "--all"), _FLAG, False),), (), False),
    "stop": (((("-t", "--time"), int, 10),), ("name",), False),
    "rm": (((("-f", "--force"), _FLAG, False),), ("name",), False),
    "exec": ((), ("name",), True),
    "logs": ((), ("name",), False),
}  # fmt: skip
_GLOBAL_OPTIONS = (
    (("--root",), str, "/var/lib/mooring"), (("--run-dir",), str, "/run/mooring"),
    (("--bridge",), str, network.BRIDGE), (("--subnet",), str, network.SUBNET),
)  # fmt: skip
_REQUIRED = {"load": ("input",)}
_KEY_VALUE = ("sysctl",)


class UsageError(Exception):
    """A command line that does not parse (None: -h/--help); main() prints it with the usage and returns 2."""

    def __init__(self, message, command=None):
        super().__init__(message)
        self.command = command


class Options:
    """The parsed command line: an attribute per option and argument."""

    def __init__(self, **values):
        self.__dict__.update(values)


def _attribute(names):
    return names[-1].lstrip("-").replace("-", "_")


def usage(command=None):
    """The usage line of a subcommand (of the whole command line without one)."""
    if command is None:
        names = ",".join(_SUBCOMMANDS)
        return f"usage: mooring-ctr [--root DIR] [--run-dir DIR] [--bridge NAME] [--subnet CIDR] {{{names}}} ..."
    options, positional, remainder = _SUBCOMMANDS[command]
    words = []
    for names, kind, _default in options:
        shown = "|".join(names)
        if kind == _FLAG:
            words.append(f"[{shown}]")
        else:
            value = "{" + ",".join(kind) + "}" if isinstance(kind, tuple) else _attribute(names).upper()
            words.append(f"[{shown} {value}]" + ("..." if kind == _APPEND else ""))
    words += [name.upper() for name in positional] + (["[COMMAND...]"] if remainder else [])
    return " ".join(["usage: mooring-ctr", command, *words])


def _take_options(args, options, values, stop_at_positional):
    """Consume args into values by the option table; return the words that are not options (with
    stop_at_positional, the first such word and every word after it)."""
    table = {name: (names, kind) for names, kind, _default in options for name in names}
    rest, index = [], 0
    while index < len(args):
        word = args[index]
        index += 1
        if word == "--":
            rest += args[index:]
            break
        if not word.startswith("-") or word == "-":
            rest.append(word)
            if stop_at_positional:
                rest += args[index:]
                break
            continue
        if word in ("-h", "--help"):
            raise UsageError(None)
        if word.startswith("--"):
            name, has_value, value = word.partition("=")
        else:  # -eK=V, as -e K=V
            name, value = word[:2], word[2:]
            has_value = bool(value)
        if name not in table:
            raise UsageError(f"unknown option {name}")
        names, kind = table[name]
        attribute = _attribute(names)
        if kind == _FLAG:
            if has_value:
                raise UsageError(f"{name} takes no value")
            values[attribute] = True
            continue
        if not has_value:
            if index >= len(args):
                raise UsageError(f"{name} needs a value")
            value = args[index]
            index += 1
        values[attribute] = _convert(name, attribute, kind, value, values.get(attribute))
    return rest


def _convert(name, attribute, kind, value, before):
    if kind == _APPEND:
        if attribute in _KEY_VALUE and "=" not in value:
            raise UsageError(f"{name} takes KEY=VALUE, got {value!r}")
        return [*before, value]
    if isinstance(kind, tuple):
        if value not in kind:
            raise UsageError(f"{name} must be one of {', '.join(kind)}, got {value!r}")
        return value
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"{name} takes {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def parse(argv):
    """The command line argv (sys.argv[1:]) as Options; UsageError when it does not parse."""
    values = {_attribute(names): default for names, _kind, default in _GLOBAL_OPTIONS}
    words = _take_options(argv, _GLOBAL_OPTIONS, values, stop_at_positional=True)
    if not words or words[0] not in _SUBCOMMANDS:
        raise UsageError(f"unknown command {words[0]!r}" if words else "a command is needed")
    command = values["action"] = words[0]
    options, positional, remainder = _SUBCOMMANDS[command]
    values.update(
        (_attribute(names), list(default) if kind == _APPEND else default) for names, kind, default in options
    )
    try:
        rest = _take_options(words[1:], options, values, stop_at_positional=remainder)
        if len(rest) < len(positional) or (len(rest) > len(positional) and not remainder):
            expected = " ".join(name.upper() for name in positional) or "no argument"
            raise UsageError(f"expected {expected}, got {' '.join(rest) or 'none'}")
        values.update(zip(positional, rest))
        if remainder:
            command_words = rest[len(positional) :]
            values["command"] = command_words[1:] if command_words[:1] == ["--"] else command_words
        for attribute in _REQUIRED.get(command, ()):
            if values[attribute] is None:
                raise UsageError(f"--{attribute} is required")
    except UsageError as exc:
        raise UsageError(exc.args[0], command) from None
    return Options(**values)


class Refused(Exception):
    """A call refused or failed: main() prints `mooring-ctr: <message>` and returns 1."""


def main():
    """The exit status of the call in sys.argv (bin/mooring-ctr exits with it)."""
    try:
        options = parse(sys.argv[1:])
    except UsageError as exc:
        if exc.args[0] is None:
            _say(usage(exc.command) + "\n\n" + __doc__.split("\n\n", maxsplit=1)[0].replace("\n", " "))
            return 0
        _say(f"{usage(exc.command)}\nmooring-ctr: {exc}", sys.stderr)
        return 2
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
