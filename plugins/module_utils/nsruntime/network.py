# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Container networking, as the course notes build it with `ip netns` and a veth pair, plus what Docker adds:

    the bridge     mooring0 with the subnet's first address, created once
    a lease        the next free address of the subnet, recorded in leases.json under a lock
    a namespace    /run/netns/mooring-<name> (`ip netns add`), which the container's PID 1 joins with setns
    a veth pair    the host end on the bridge, the other end moved into the namespace as eth0, with the lease
                   and a default route through the bridge
    iptables       MASQUERADE for traffic leaving the subnet, and DNAT (PREROUTING and OUTPUT) for each published
                   port, in mooring's own chains, each rule tagged with the container's name

Every step is undone by `teardown`, in the reverse order, whether or not the container ever started.
"""

from __future__ import annotations

import os

from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import fastjson
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.lean import suppress
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime.state import locked, name_digest

BRIDGE = "mooring0"
SUBNET = "10.88.0.0/16"
NAT_CHAIN = "MOORING"
POSTROUTING_CHAIN = "MOORING-POSTROUTING"


class NetworkError(Exception):
    """A network step failed; the message names the command or the option."""


def _run(*argv, check=True):
    import subprocess  # noqa: PLC0415 - the CLI's start pays for subprocess only when a bridge is involved

    process = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and process.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {process.stderr.strip() or process.stdout.strip()}")
    return process


def _batch(options, commands, check=True):
    import subprocess  # noqa: PLC0415

    process = subprocess.run(
        ["ip", *options, "-batch", "-"], input="\n".join(commands) + "\n", capture_output=True, text=True, check=False
    )
    if check and process.returncode != 0:
        raise NetworkError(f"ip {' '.join(options)} -batch: {process.stderr.strip()}")


def netns_name(name):
    return f"mooring-{name}"


def host_veth(name):
    return "mv" + name_digest(name)[:10]


class Network:
    def __init__(self, state_dir="/run/mooring/network", bridge=BRIDGE, subnet=SUBNET):
        self.state_dir = state_dir
        self.bridge = bridge
        import ipaddress  # noqa: PLC0415

        self.subnet = ipaddress.ip_network(subnet)
        self.gateway = next(self.subnet.hosts())
        self.leases_file = os.path.join(state_dir, "leases.json")

    # -- the bridge and the NAT chains, once per host ------------------------------------------------------------
    def ensure_bridge(self):
        # Set up once per boot (/run is a tmpfs): each check costs a process, and a start should not pay a dozen.
        ready = os.path.join(self.state_dir, f"{self.bridge}.ready")
        if os.path.exists(ready) and os.path.isdir(f"/sys/class/net/{self.bridge}"):
            return
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        if _run("ip", "link", "show", self.bridge, check=False).returncode != 0:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        with open("/proc/sys/net/ipv4/ip_forward", "w") as forward:
            forward.write("1")
        for table, chain, hook in (("nat", NAT_CHAIN, "PREROUTING"), ("nat", NAT_CHAIN, "OUTPUT"),
                                   ("nat", POSTROUTING_CHAIN, "POSTROUTING")):  # fmt: skip
            if _run("iptables", "-w", "-t", table, "-n", "-L", chain, check=False).returncode != 0:
                _run("iptables", "-w", "-t", table, "-N", chain)
            jump = (
                ["-j", chain] if chain == POSTROUTING_CHAIN else ["-m", "addrtype", "--dst-type", "LOCAL", "-j", chain]
            )
            if _run("iptables", "-w", "-t", table, "-C", hook, *jump, check=False).returncode != 0:
                _run("iptables", "-w", "-t", table, "-A", hook, *jump)
        masquerade = ["-s", str(self.subnet), "!", "-o", self.bridge, "-j", "MASQUERADE"]
        if _run("iptables", "-w", "-t", "nat", "-C", POSTROUTING_CHAIN, *masquerade, check=False).returncode != 0:
            _run("iptables", "-w", "-t", "nat", "-A", POSTROUTING_CHAIN, *masquerade)
        # Docker's FORWARD policy may be DROP: let the bridge's traffic through.
        for rule in (["-i", self.bridge, "-j", "ACCEPT"], ["-o", self.bridge, "-j", "ACCEPT"]):
            if _run("iptables", "-w", "-C", "FORWARD", *rule, check=False).returncode != 0:
                _run("iptables", "-w", "-I", "FORWARD", *rule)
        with open(ready, "w"):
            pass

    def remove_bridge(self):
        """Remove the bridge and its host-wide rules (when no container uses it any more)."""
        for rule in (["-i", self.bridge, "-j", "ACCEPT"], ["-o", self.bridge, "-j", "ACCEPT"]):
            _run("iptables", "-w", "-D", "FORWARD", *rule, check=False)
        masquerade = ["-s", str(self.subnet), "!", "-o", self.bridge, "-j", "MASQUERADE"]
        _run("iptables", "-w", "-t", "nat", "-D", POSTROUTING_CHAIN, *masquerade, check=False)
        _run("ip", "link", "delete", self.bridge, check=False)
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(self.state_dir, f"{self.bridge}.ready"))

    # -- leases ------------------------------------------------------------------------------------------------
    def _leases(self):
        try:
            with open(self.leases_file) as handle:
                return fastjson.load(handle)
        except FileNotFoundError:
            return {}

    def _save_leases(self, leases):
        temporary = self.leases_file + ".tmp"
        with open(temporary, "w") as handle:
            handle.write(fastjson.dumps(leases, sort_keys=True, indent=1))
        os.replace(temporary, self.leases_file)

    def lease(self, name):
        with locked(os.path.join(self.state_dir, "leases.lock")):
            leases = self._leases()
            if name in leases:
                return leases[name]
            taken = set(leases.values()) | {str(self.gateway)}
            address = next((str(ip) for ip in self.subnet.hosts() if str(ip) not in taken), None)
            if address is None:
                raise NetworkError(f"the subnet {self.subnet} has no free address left")
            leases[name] = address
            self._save_leases(leases)
            return address

    def release(self, name):
        with locked(os.path.join(self.state_dir, "leases.lock")):
            leases = self._leases()
            if leases.pop(name, None) is not None:
                self._save_leases(leases)

    def leases(self):
        return self._leases()

    # -- one container -----------------------------------------------------------------------------------------
    @staticmethod
    def check_ports(published_ports):
        """Refuse a host port that something already listens on (before anything is created)."""
        import socket  # noqa: PLC0415

        for port in published_ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("0.0.0.0", port["host_port"]))  # noqa: S104 - a probe, closed at once
                except OSError as exc:
                    raise NetworkError(
                        f"published_ports: host port {port['host_port']} is taken ({exc.strerror})"
                    ) from exc

    def setup(self, name, published_ports, hostname, stack):
        """Create the container's namespace, veth and rules; push their undoing on stack (an ExitStack)."""
        self.check_ports(published_ports)
        self.ensure_bridge()
        namespace, veth = netns_name(name), host_veth(name)
        if self._links_left(name) or published_ports:
            # What a shim that died left, or rules of this name that outlived their namespace (restored at boot by
            # iptables-persistent, say), goes first: a stale DNAT for the same port would win over the new one.
            self.teardown(name)
        address = self.lease(name)
        stack.callback(self.release, name)
        # Two `ip -batch` processes, not eight: one on the host (the namespace, and a veth pair whose other end is
        # born inside it as eth0), one inside the namespace. Undone by one more, which goes on past what is gone.
        stack.callback(self._remove_links, name)
        _batch([], [
            f"netns add {namespace}",
            f"link add {veth} type veth peer name eth0 netns {namespace}",
            f"link set {veth} master {self.bridge} up",
        ])  # fmt: skip
        _batch(["-n", namespace], [
            f"addr add {address}/{self.subnet.prefixlen} dev eth0",
            "link set eth0 up",
            "link set lo up",
            f"route add default via {self.gateway}",
        ])  # fmt: skip
        for port in published_ports:
            rule = self._dnat_rule(name, address, port)
            _run("iptables", "-w", "-t", "nat", "-A", NAT_CHAIN, *rule)
            stack.callback(_run, "iptables", "-w", "-t", "nat", "-D", NAT_CHAIN, *rule, check=False)
        return {"ip": address, "netns": f"/run/netns/{namespace}", "veth": veth, "hostname": hostname}

    @staticmethod
    def _links_left(name):
        return os.path.exists(f"/run/netns/{netns_name(name)}") or os.path.exists(f"/sys/class/net/{host_veth(name)}")

    @staticmethod
    def _remove_links(name):
        _batch(["-force"], [f"link delete {host_veth(name)}", f"netns delete {netns_name(name)}"], check=False)

    @staticmethod
    def _dnat_rule(name, address, port):
        return [
            "-p", port.get("protocol", "tcp"), "--dport", str(port["host_port"]),
            "-m", "comment", "--comment", f"mooring:{name}",
            "-j", "DNAT", "--to-destination", f"{address}:{port['container_port']}",
        ]  # fmt: skip

    def teardown(self, name, published=True):
        """Remove everything setup made for name, whatever is left of it (idempotent). published=False says that
        the container publishes no port: then there is no rule of its to look for."""
        if published:
            for rule in _run("iptables", "-w", "-t", "nat", "-S", NAT_CHAIN, check=False).stdout.splitlines():
                import shlex  # noqa: PLC0415 - only when rules are removed

                words = shlex.split(rule)
                if "--comment" in words and words[words.index("--comment") + 1] == f"mooring:{name}":
                    _run("iptables", "-w", "-t", "nat", "-D", *words[1:], check=False)
        if self._links_left(name):
            self._remove_links(name)
        self.release(name)


def write_etc(directory, hostname, address):
    """The container's /etc/hostname, /etc/hosts and /etc/resolv.conf, as files to bind-mount; returns their
    paths by target."""
    hostname_file = os.path.join(directory, "hostname")
    with open(hostname_file, "w") as handle:
        handle.write(hostname + "\n")
    hosts = os.path.join(directory, "hosts")
    with open(hosts, "w") as handle:
        handle.write("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        if address:
            handle.write(f"{address}\t{hostname}\n")
    resolv = os.path.join(directory, "resolv.conf")
    servers = []
    with suppress(FileNotFoundError), open("/etc/resolv.conf") as host:
        for line in host:
            words = line.split()
            # A resolver on the host's loopback cannot be reached from another network namespace.
            if words[:1] == ["nameserver"] and len(words) > 1 and not words[1].startswith("127."):
                servers.append(words[1])
    with open(resolv, "w") as handle:
        handle.writelines(f"nameserver {server}\n" for server in servers)
    return {"/etc/hostname": hostname_file, "/etc/hosts": hosts, "/etc/resolv.conf": resolv}
