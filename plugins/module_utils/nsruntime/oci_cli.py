# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mooring-ctr's OCI runtime command line (what runc answers to containerd's shim and to the OCI validation
suite), parsed by hand: argparse costs more than the rest of a `state` call.

    mooring-ctr [--root DIR] [--log FILE] [--log-format text|json] [--debug]
                create [--bundle DIR] [--pid-file FILE] [--console-socket SOCKET] ID
              | start ID | state ID | kill [--all] ID [SIGNAL] | delete [--force] ID | features
"""

from __future__ import annotations

import json
import os
import sys
import time

COMMANDS = ("create", "start", "state", "kill", "delete", "features")
_GLOBAL_VALUES = ("--root", "--log", "--log-format", "--criu", "--rootless")
_GLOBAL_FLAGS = ("--debug", "--systemd-cgroup")


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
        return options, argv[index:]
    return None


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


def _log(options, message):
    path = options.get("--log")
    if not path:
        return
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if options.get("--log-format") == "json":
        line = json.dumps({"level": "error", "msg": message, "time": now})
    else:
        line = f"{now} error: {message}"
    try:
        with open(path, "a") as handle:
            handle.write(line + "\n")
    except OSError:
        pass


def run(global_options, args):
    from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import oci  # noqa: PLC0415

    command, rest = args[0], args[1:]
    if global_options.get("--systemd-cgroup"):
        raise oci.OciError("--systemd-cgroup: this runtime manages cgroupfs paths only (no systemd cgroup driver)")
    if global_options.get("--log-format", "text") not in ("text", "json"):
        raise UsageError(f"--log-format takes text or json, got {global_options['--log-format']!r}")
    runtime = oci.Runtime(global_options.get("--root") or oci.DEFAULT_ROOT)
    if command == "features":
        _parse(rest, positional=(0, 0))
        sys.stdout.write(json.dumps(oci.features(), indent=2) + "\n")
    elif command == "create":
        options, (container_id,) = _parse(
            rest, values=(("--bundle", "-b"), ("--pid-file",), ("--console-socket",), ("--preserve-fds",)),
            flags=(("--no-pivot",), ("--no-new-keyring",)),
        )  # fmt: skip
        if options.get("--no-pivot"):
            raise UsageError("--no-pivot: this runtime always pivots into the root (chroot can be escaped)")
        if options.get("--preserve-fds", "0") != "0":
            raise UsageError("--preserve-fds: passing extra descriptors is not supported yet")
        if options.get("--console-socket"):
            raise UsageError("--console-socket: a terminal is not supported yet")
        runtime.create(container_id, options.get("--bundle") or os.getcwd(), options.get("--pid-file"))
    elif command == "start":
        _options, (container_id,) = _parse(rest)
        runtime.start(container_id)
    elif command == "state":
        _options, (container_id,) = _parse(rest)
        sys.stdout.write(json.dumps(runtime.state(container_id), indent=2) + "\n")
    elif command == "kill":
        options, words = _parse(rest, flags=(("--all", "-a"),), positional=(1, 2))
        runtime.kill(words[0], words[1] if len(words) > 1 else "SIGTERM", every=bool(options.get("--all")))
    elif command == "delete":
        options, (container_id,) = _parse(rest, flags=(("--force", "-f"),))
        runtime.delete(container_id, force=bool(options.get("--force")))
    return 0


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
