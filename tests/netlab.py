"""Private network labs for interop tests: network namespaces joined by veth.

Owns creation and guaranteed teardown of test namespaces. Nothing here
touches a real interface: every link lives inside namespaces this module
creates (names carry the pid so parallel runs cannot collide).

    with Lab("dhcp") as lab:              # server ns with br0 = 10.N.0.1/24
        cl = lab.add_client()             # client ns, veth into br0, no address
        cl.run(["busybox", "udhcpc", ...])

Tests that need it are skipped with the exact reason when not root or when
``ip netns`` is unavailable.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest

_counter = itertools.count(1)


def require_root_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip(reason="needs root to create network namespaces (ip netns add)")
    if not shutil.which("ip"):
        pytest.skip(reason="needs iproute2's ip command (apt-get install iproute2)")


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


@dataclass
class Netns:
    name: str

    @property
    def prefix(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.name}"]

    def run(self, cmd: list[str], check: bool = True, timeout: float = 60, **kw):
        return subprocess.run(
            self.prefix + cmd, check=check, capture_output=True, text=True, timeout=timeout, **kw
        )

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.prefix + cmd, **kw)


@dataclass
class Lab:
    tag: str
    subnet_octet: int = 0  # 10.<octet>.0.0/24; 0 = pick from pid
    server: Netns = field(init=False)
    clients: list[Netns] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = next(_counter)
        self.id = f"{self.tag[:5]}{os.getpid() % 10000}{n}"
        if not self.subnet_octet:
            self.subnet_octet = 100 + (os.getpid() + n) % 150
        self.server = Netns(f"s{self.id}")

    @property
    def net(self) -> str:
        return f"10.{self.subnet_octet}.0"

    @property
    def server_ip(self) -> str:
        return f"{self.net}.1"

    @property
    def cidr(self) -> str:
        return f"{self.net}.0/24"

    def __enter__(self) -> Lab:
        require_root_netns()
        ns = self.server.name
        sh("ip", "netns", "add", ns)
        try:
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge", "stp_state", "0",
               "forward_delay", "0")  # fmt: skip
            sh("ip", "-n", ns, "addr", "add", f"{self.server_ip}/24", "dev", "br0")
            sh("ip", "-n", ns, "link", "set", "br0", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def add_client(self, mac: str | None = None, address: str | None = None) -> Netns:
        """A new namespace with ``eth0`` plugged into the server's bridge (static IPv4 optional)."""
        idx = len(self.clients)
        cl = Netns(f"c{self.id}x{idx}")
        sh("ip", "netns", "add", cl.name)
        self.clients.append(cl)
        host_end = f"v{self.id}x{idx}"[:15]
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", cl.name)
        sh("ip", "link", "set", host_end, "netns", self.server.name)
        sh("ip", "-n", self.server.name, "link", "set", host_end, "master", "br0", "up")
        sh("ip", "-n", cl.name, "link", "set", "lo", "up")
        if mac:
            sh("ip", "-n", cl.name, "link", "set", "eth0", "address", mac)
        sh("ip", "-n", cl.name, "link", "set", "eth0", "up")
        if address:
            sh("ip", "-n", cl.name, "addr", "add", f"{address}/24", "dev", "eth0")
        return cl

    def add_tap(self, name: str) -> str:
        sh("ip", "-n", self.server.name, "tuntap", "add", "dev", name, "mode", "tap")
        sh("ip", "-n", self.server.name, "link", "set", name, "master", "br0", "up")
        return name

    def __exit__(self, *exc) -> None:
        for ns in [*self.clients, self.server]:
            pids = sh("ip", "netns", "pids", ns.name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns.name, check=False)
