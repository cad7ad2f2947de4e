"""A private test network of Linux network namespaces: each host in its own namespace, all on one switch.

    with TestNetwork.create(["server", "node-0", "node-1"]) as network:
        network.address("server")         # 10.213.0.1: a non-loopback address, reachable from the other hosts
        network.host("node-0")             # deploy.Host that starts commands in node-0's namespace
        network.link_down("node-1")        # unplug node-1's cable (its processes keep running)

Topology: a namespace "sw" holding a bridge, and per host a namespace with a veth pair whose
other end is a bridge port. Namespace names carry this process's PID, so parallel or leftover
runs do not collide; the subnet exists only inside these namespaces (the host's own network is
never touched). Leaving the block kills, by PID, every process still inside a namespace
(`ip netns pids`) and deletes the namespaces, which removes their links with them. Needs root
and iproute2; `namespaces_unavailable()` says why not (one line) for a skip.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from initmatters.deploy import Host
from initmatters.launch import terminate_pids
from initmatters_core.results import pid_alive

SUBNET = "10.213.0"  # /24 inside the test's namespaces only; host k gets .(k + 1)
PREFIX = "imnet"  # namespace names: imnet-<pid>-<host>
SWITCH = "sw"
BRIDGE = "br0"
INTERFACE = "eth0"  # each host's end of its cable (interface names are per namespace)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`ip ARGS`; raises with ip's own one-line reason when it fails and `check`."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)} failed: {' '.join(done.stderr.split())}")
    return done


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list", check=False).stdout.splitlines() if line.strip()]


def namespace_pids(namespace: str) -> list[int]:
    """PIDs of the processes inside `namespace` (`ip netns pids`)."""
    return [int(pid) for pid in ip("netns", "pids", namespace, check=False).stdout.split()]


def remove_namespaces(names: Sequence[str]) -> None:
    """Kill every process inside `names` by PID (SIGTERM, then SIGKILL), then delete the namespaces."""
    terminate_pids([pid for name in names for pid in namespace_pids(name)], timeout=10.0)
    for name in names:
        ip("netns", "delete", name, check=False)


def remove_stale_networks() -> None:
    """Namespaces of earlier test processes that died without cleaning up (their PID is gone)."""
    stale = [name for name in namespaces()
             if (match := re.fullmatch(rf"{PREFIX}-(\d+)-.+", name)) and not pid_alive(int(match.group(1)))]
    remove_namespaces(stale)


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be made here (one line), or None when they can."""
    probe = f"{PREFIX}-{os.getpid()}-probe"
    try:
        done = ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "network namespaces unavailable: iproute2 (`ip`) is not installed"
    if done.returncode:
        return f"network namespaces unavailable: `ip netns add` failed ({' '.join(done.stderr.split())})"
    ip("netns", "delete", probe, check=False)
    return None


@dataclass
class TestNetwork:
    """Hosts (namespaces) on one switch; see the module docstring."""

    __test__ = False  # not a pytest test class

    tag: str
    hosts: list[str]
    created: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, hosts: Sequence[str]) -> TestNetwork:
        """The switch and one namespace per host, links up; on any failure nothing is left behind."""
        network = cls(tag=f"{PREFIX}-{os.getpid()}", hosts=list(hosts))
        try:
            network._build()
        except BaseException:
            network.close()
            raise
        return network

    def namespace(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts.index(host) + 1}"

    def host(self, host: str) -> Host:
        """A deploy.Host whose commands run inside `host`'s namespace."""
        return Host(("ip", "netns", "exec", self.namespace(host)))

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.created.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        switch = self.namespace(SWITCH)
        self._add_namespace(switch)
        ip("-n", switch, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", switch, "link", "set", BRIDGE, "up")
        for index, host in enumerate(self.hosts):
            namespace, port = self.namespace(host), f"port{index}"
            self._add_namespace(namespace)
            ip("link", "add", INTERFACE, "netns", namespace, "type", "veth", "peer", "name", port,
               "netns", switch)
            ip("-n", switch, "link", "set", port, "master", BRIDGE)
            ip("-n", switch, "link", "set", port, "up")
            ip("-n", namespace, "addr", "add", f"{self.address(host)}/24", "dev", INTERFACE)
            ip("-n", namespace, "link", "set", INTERFACE, "up")

    def link_down(self, host: str) -> None:
        """Unplug `host`: its interface goes down (its processes keep running, its packets go nowhere)."""
        ip("-n", self.namespace(host), "link", "set", INTERFACE, "down")

    def link_up(self, host: str) -> None:
        """Plug `host` back in (the subnet route returns with the link)."""
        ip("-n", self.namespace(host), "link", "set", INTERFACE, "up")

    def processes(self) -> list[int]:
        """PIDs of every process inside this network's namespaces."""
        return [pid for name in self.created for pid in namespace_pids(name)]

    def close(self) -> None:
        """Kill what runs inside (by PID) and delete every namespace (and so every link)."""
        remove_namespaces(self.created)
        self.created.clear()

    def __enter__(self) -> TestNetwork:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
