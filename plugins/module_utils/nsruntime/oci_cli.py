# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mooring-ctr's OCI runtime command line (what runc answers to containerd's shim and to the OCI validation
suite), parsed by hand: argparse costs more than the rest of a `state` call.

    mooring-ctr [--root DIR] [--log FILE] [--log-format text|json] [--debug]
                create [--bundle DIR] [--pid-file FILE] [--console-socket SOCKET] ID
              | start ID | state ID | kill [--all] ID [SIGNAL] | delete [--force] ID | features
              | exec [--process FILE | --cwd DIR --env K=V --user UID[:GID] --tty] [--detach] [--pid-file FILE]
                     ID [COMMAND...]
              | ps [--format table|json] ID | pause ID | resume ID
              | update [--resources FILE|-] [--memory N] [--memory-swap N] [--pids-limit N] [--cpu-quota N]
                       [--cpu-period N] [--cpu-share N] [--cpuset-cpus S] [--cpuset-mems S] [--blkio-weight N] ID
"""

from __future__ import annotations

import os
import sys
import time

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import fastjson

COMMANDS = ("create", "start", "state", "kill", "delete", "features", "exec", "ps", "pause", "resume", "update")
_GLOBAL_VALUES = ("--root", "--log", "--log-format", "--criu", "--rootless")
_GLOBAL_FLAGS = ("--debug", "--systemd-cgroup")
# The docker-like command line has these too (bin/mooring-ctr): see _is_oci_call.
_SHARED_COMMANDS = ("ps", "exec")
DEFAULT_ROOT = "/run/mooring-oci"


class UsageError(Exception):
    pass


def split_globals(argv):
    """(global options, the rest) of argv; None when argv is not an OCI call (mooring-ctr's docker-like one)."""
    options, index = {}, 0
    while index < len(argv) and argv[index].startswith("--"):
        name, has_value, value = argv[index].partition("=")
        if name in _GLOBAL_VALUES:
            if not has_value:
                index += 1
                if index >= len(argv):
                    return None
                value = argv[index]
            options[name] = value
        elif name in _GLOBAL_FLAGS:
            options[name] = True
        else:
            return None
        index += 1
    if index < len(argv) and argv[index] in COMMANDS:
        if argv[index] in _SHARED_COMMANDS and not _is_oci_call(options, argv[index], argv[index + 1 :]):
            return None
        return options, argv[index:]
    return None


def _is_oci_call(options, command, rest):
    """Whether `ps` or `exec` (which the docker-like command line has too) is the OCI runtime's: containerd's shim
    always passes --log; an option only the OCI form has; or the ID names a container of the OCI state root."""
    if "--log" in options:
        return True
    if command == "ps" and any(word.partition("=")[0] in ("--format", "-f") for word in rest):
        return True
    if command == "exec" and rest[:1] and rest[0].startswith("-"):
        return True
    words = [word for word in rest if not word.startswith("-")]
    root = options.get("--root") or DEFAULT_ROOT
    return bool(words) and "/" not in words[0] and os.path.exists(os.path.join(root, words[0], "state.json"))


def _parse(args, values=(), flags=(), positional=(1, 1)):
    """Options of one command: {name: value}, [positional]; names with their aliases as tuples."""
    options, rest, index = {}, [], 0
    while index < len(args):
        word = args[index]
        if word.startswith("-") and len(word) > 1 and not word.lstrip("-").isdigit():
            name, has_value, value = word.partition("=")
            key = next((names[0] for names in values if name in names), None)
            if key is not None:
                if not has_value:
                    index += 1
                    if index >= len(args):
                        raise UsageError(f"{name} needs a value")
                    value = args[index]
                options[key] = value
            else:
                key = next((names[0] for names in flags if name in names), None)
                if key is None:
                    raise UsageError(f"unknown option {name}")
                options[key] = True
        else:
            rest.append(word)
        index += 1
    low, high = positional
    if not low <= len(rest) <= high:
        raise UsageError("expected " + ("ID" if high == 1 else "ID [SIGNAL]" if high == 2 else "no argument"))
    return options, rest


def _parse_exec(args):
    """exec's options (--env repeats), the ID, and the command after it (its own options are its own)."""
    values = {"--process": "--process", "-p": "--process", "--pid-file": "--pid-file", "--cwd": "--cwd",
              "--user": "--user", "-u": "--user", "--console-socket": "--console-socket",
              "--preserve-fds": "--preserve-fds", "--process-label": "--process-label", "--apparmor": "--apparmor",
              "--cap": "--cap", "-c": "--cap", "--env": "--env", "-e": "--env"}  # fmt: skip
    flags = {"--detach": "--detach", "-d": "--detach", "--tty": "--tty", "-t": "--tty",
             "--no-new-privs": "--no-new-privs", "--ignore-paused": "--ignore-paused"}  # fmt: skip
    options, index = {"--env": [], "--cap": []}, 0
    while index < len(args) and args[index].startswith("-") and args[index] != "--":
        name, has_value, value = args[index].partition("=")
        if name in values:
            if not has_value:
                index += 1
                if index >= len(args):
                    raise UsageError(f"{name} needs a value")
                value = args[index]
            if values[name] in ("--env", "--cap"):
                options[values[name]].append(value)
            else:
                options[values[name]] = value
        elif name in flags:
            options[flags[name]] = True
        else:
            raise UsageError(f"unknown option {name}")
        index += 1
    rest = args[index:]
    if not rest:
        raise UsageError("expected ID [COMMAND...]")
    command = rest[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    return options, rest[0], command


def _exec_process(options, command, document):
    """The process to run: --process's file, or config.json's process with COMMAND and the options over it."""

    if options.get("--process"):
        if command:
            raise UsageError("exec: give either --process FILE or a COMMAND, not both")
        try:
            with open(options["--process"]) as handle:
                process = fastjson.load(handle)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--process {options['--process']}: {exc}") from None
        if not isinstance(process, dict):
            raise UsageError(f"--process {options['--process']}: the document must be an OCI process object")
        return process
    if not command:
        raise UsageError("exec: a COMMAND (or --process FILE) is needed")
    process = dict(document.get("process") or {"cwd": "/", "env": []})
    process["args"] = command
    process["terminal"] = bool(options.get("--tty"))
    if options.get("--cwd"):
        process["cwd"] = options["--cwd"]
    process["env"] = list(process.get("env") or []) + options["--env"]
    if options.get("--user"):
        uid, _sep, gid = options["--user"].partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise UsageError(f"--user takes UID[:GID] as numbers, got {options['--user']!r}")
        process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if options.get("--no-new-privs"):
        process["noNewPrivileges"] = True
    if options["--cap"]:
        capabilities = {kind: list(names) for kind, names in (process.get("capabilities") or {}).items()}
        for kind in ("bounding", "effective", "permitted", "inheritable"):
            capabilities[kind] = sorted(set(capabilities.get(kind) or []) | set(options["--cap"]))
        process["capabilities"] = capabilities
    return process


def _log(options, message):
    path = options.get("--log")
    if not path:
        return

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if options.get("--log-format") == "json":
        line = fastjson.dumps({"level": "error", "msg": message, "time": now})
    else:
        line = f"{now} error: {message}"
    try:
        with open(path, "a") as handle:
            handle.write(line + "\n")
    except OSError:
        pass


def _create(runtime, rest):
    options, (container_id,) = _parse(
        rest, values=(("--bundle", "-b"), ("--pid-file",), ("--console-socket",), ("--preserve-fds",)),
        flags=(("--no-pivot",), ("--no-new-keyring",)),
    )  # fmt: skip
    if options.get("--no-pivot"):
        raise UsageError("--no-pivot: this runtime always pivots into the root (chroot can be escaped)")
    runtime.create(
        container_id, options.get("--bundle") or os.getcwd(), options.get("--pid-file"),
        options.get("--console-socket"), preserve_fds=_count(options, "--preserve-fds"),
    )  # fmt: skip
    return 0


def _count(options, name):
    value = options.get(name, "0")
    if not value.isdigit():
        raise UsageError(f"{name} takes a number, got {value!r}")
    return int(value)


def _exec(runtime, rest):
    options, container_id, words = _parse_exec(rest)
    preserved = _count(options, "--preserve-fds")
    process = _exec_process(options, words, runtime.config(container_id))
    return runtime.exec(
        container_id, process, options.get("--pid-file"), detach=bool(options.get("--detach")),
        console_socket=options.get("--console-socket"), preserve_fds=preserved,
    )  # fmt: skip


def _ps(runtime, rest):

    options, (container_id,) = _parse(rest, values=(("--format", "-f"),))
    layout = options.get("--format", "table")
    if layout not in ("table", "json"):
        raise UsageError(f"--format takes table or json, got {layout!r}")
    pids = runtime.processes(container_id)
    if layout == "json":
        sys.stdout.write(fastjson.dumps(pids) + "\n")
    else:
        sys.stdout.write("PID\tCMD\n" + "".join(f"{pid}\t{_command_line(pid)}\n" for pid in pids))
    return 0


# update's options (runc's names) and where each goes in linux.resources.
_UPDATE_OPTIONS = {
    "--memory": ("memory", "limit", int), "--memory-swap": ("memory", "swap", int),
    "--memory-reservation": ("memory", "reservation", int), "--pids-limit": ("pids", "limit", int),
    "--cpu-quota": ("cpu", "quota", int), "--cpu-period": ("cpu", "period", int),
    "--cpu-share": ("cpu", "shares", int), "--cpuset-cpus": ("cpu", "cpus", str),
    "--cpuset-mems": ("cpu", "mems", str), "--blkio-weight": ("blockIO", "weight", int),
}  # fmt: skip


def _update(runtime, rest):
    """runc's update: --resources FILE (or - for stdin: containerd's shim sends linux.resources so) and/or the
    single-limit options, which win over the file's values."""

    options, (container_id,) = _parse(rest, values=(("--resources", "-r"), *((name,) for name in _UPDATE_OPTIONS)))
    resources = {}
    if options.get("--resources"):
        source = options["--resources"]
        try:
            if source == "-":
                resources = fastjson.load(sys.stdin)
            else:
                with open(source) as handle:
                    resources = fastjson.load(handle)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--resources {source}: {exc}") from None
        if not isinstance(resources, dict):
            raise UsageError(f"--resources {source}: the document must be an object (linux.resources)")
    for name, (group, key, kind) in _UPDATE_OPTIONS.items():
        if name in options:
            value = options[name]
            if kind is int:
                try:
                    value = int(value)
                except ValueError:
                    raise UsageError(f"{name} takes a number, got {value!r}") from None
            resources.setdefault(group, {})[key] = value
    if not resources:
        raise UsageError("update: give --resources FILE or a limit to change (--memory, --pids-limit, ...)")
    runtime.update(container_id, resources)
    return 0


def _simple(call, positional=(1, 1), flags=()):
    """A command whose options are flags and whose words go to call(runtime, options, words)."""

    def command(runtime, rest):
        options, words = _parse(rest, flags=flags, positional=positional)
        call(runtime, options, words)
        return 0

    return command


def _print_json(value):

    sys.stdout.write(fastjson.dumps(value, indent=2) + "\n")


_COMMANDS = {
    "create": _create,
    "exec": _exec,
    "ps": _ps,
    "start": _simple(lambda runtime, _options, words: runtime.start(words[0])),
    "state": _simple(lambda runtime, _options, words: _print_json(runtime.state(words[0]))),
    "kill": _simple(
        lambda runtime, options, words: runtime.kill(
            words[0], words[1] if len(words) > 1 else "SIGTERM", every=bool(options.get("--all"))
        ),
        positional=(1, 2),
        flags=(("--all", "-a"),),
    ),
    "delete": _simple(
        lambda runtime, options, words: runtime.delete(words[0], force=bool(options.get("--force"))),
        flags=(("--force", "-f"),),
    ),
    "update": _update,
    "pause": _simple(lambda runtime, _options, words: runtime.pause(words[0], frozen=True)),
    "resume": _simple(lambda runtime, _options, words: runtime.pause(words[0], frozen=False)),
}


def run(global_options, args):
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import oci  # noqa: PLC0415

    command, rest = args[0], args[1:]
    if global_options.get("--systemd-cgroup"):
        raise oci.OciError("--systemd-cgroup: this runtime manages cgroupfs paths only (no systemd cgroup driver)")
    if global_options.get("--log-format", "text") not in ("text", "json"):
        raise UsageError(f"--log-format takes text or json, got {global_options['--log-format']!r}")
    if command == "features":
        _parse(rest, positional=(0, 0))
        _print_json(oci.features())
        return 0
    return _COMMANDS[command](oci.Runtime(global_options.get("--root") or DEFAULT_ROOT), rest)


def _command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def main(global_options, args):
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import cgroups, oci  # noqa: PLC0415

    try:
        if os.geteuid() != 0:
            raise oci.OciError("mooring-ctr must run as root (namespaces, cgroups, mounts)")
        return run(global_options, args)
    except (UsageError, oci.OciError, cgroups.CgroupError, OSError) as exc:
        message = f"{args[0]}: {exc}"
        _log(global_options, message)
        sys.stderr.write(f"mooring-ctr: {message}\n")
        return 1 if not isinstance(exc, UsageError) else 2
