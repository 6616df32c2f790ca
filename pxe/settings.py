"""Per-service settings: the plain values each protocol server is built with.

Owns :class:`DhcpSettings`, :class:`TftpSettings`, :class:`DnsSettings` (and
:class:`SubnetSettings` for DHCP pools): frozen dataclasses of standard-library
types only. ``pxe`` never reads the daemon's configuration: the composition
root (``provisiond/app.py``, through :mod:`provisiond.pxesettings`) builds
these from ``provisiond.config.Config``, and a standalone run or a test builds
them directly.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

IPv4 = ipaddress.IPv4Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class SubnetSettings:
    """One DHCP subnet: ``full`` hands out addresses from the range, ``proxy`` only boot data."""

    cidr: ipaddress.IPv4Network
    mode: str  # "full" | "proxy"
    range_start: IPv4 | None = None
    range_end: IPv4 | None = None
    router: IPv4 | None = None
    dns: tuple[IPv4, ...] = ()
    domain: str = ""
    lease_time: int = 3600


@dataclass(frozen=True)
class DhcpSettings:
    interface: str  # the NIC the sockets are bound to (SO_BINDTODEVICE)
    address: IPv4  # this server's address: server identifier, next-server
    http_base: str  # "http://address:port": where iPXE fetches its script
    subnets: tuple[SubnetSettings, ...] = ()
    port: int = 67
    proxy_port: int = 4011


@dataclass(frozen=True)
class TftpSettings:
    address: IPv4
    root: Path  # the boot assets directory (read-only)
    port: int = 69


@dataclass(frozen=True)
class DnsSettings:
    address: IPv4
    domain: str = "provisiond.lan"
    port: int = 53
    ttl: int = 60
    upstream: str = ""  # "ip" or "ip:port"; empty = REFUSED for foreign names
    # forwarding is for these networks (the DHCP subnets, an allow list) and loopback only
    clients: tuple[Network, ...] = field(default_factory=tuple)
    rate_limit: int = 50  # UDP responses per second per client /24 (RRL); 0 = off
    rate_limit_slip: int = 2  # every Nth limited response is sent truncated; 0 = drop all
    max_udp_size: int = 1232  # largest UDP reply, whatever EDNS offers
