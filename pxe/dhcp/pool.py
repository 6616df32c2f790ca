"""Address pools: which address a MAC gets, held in memory (pure logic, no I/O).

Owns the allocation rules of one full-mode subnet (RFC 2131 section 4.3.1):

1. a reservation (``Resource.reserved_ip``) always wins;
2. a MAC keeps the address it had (bound, offered, expired or released),
   unless someone else holds it now;
3. the client's requested address (option 50) if it is free;
4. otherwise the next free address of the range (a cursor that wraps).

Every change returns :class:`LeaseRow` values that the caller must make
durable (``leases.LeaseStore``); time is passed in, never read here.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from pxe.settings import SubnetSettings

OFFER_HOLD = 30.0  # seconds an offered address stays set aside for its MAC
BOUND, OFFERED, RELEASED, DECLINED = "bound", "offered", "released", "declined"


@dataclass(frozen=True)
class LeaseRow:
    """One lease as the database stores it (``provisiond.model.Lease``)."""

    ip: str
    mac: str
    subnet: str
    state: str
    hostname: str
    expires: float  # seconds since the epoch (UTC)


class _Entry:
    __slots__ = ("expires", "hostname", "ip", "mac", "state")

    def __init__(self, ip: str, mac: str, state: str, expires: float, hostname: str = ""):
        self.ip, self.mac, self.state, self.expires, self.hostname = (
            ip,
            mac,
            state,
            expires,
            hostname,
        )


def _int(ip: str) -> int:
    return struct.unpack("!I", socket.inet_aton(ip))[0]


def _str(n: int) -> str:
    return socket.inet_ntoa(struct.pack("!I", n))


class Pool:
    """The in-memory lease table of one subnet. Not thread-safe: callers lock."""

    def __init__(self, subnet: SubnetSettings, server_ip: str = "") -> None:
        self.subnet = subnet
        self.cidr = str(subnet.cidr)
        net = subnet.cidr
        self._net, self._mask = int(net.network_address), int(net.netmask)
        start = subnet.range_start or net.network_address
        end = subnet.range_end or net.network_address
        self.first, self.last = int(start), int(end)
        self._cursor = self.first
        self._never = {server_ip, str(net.network_address), str(net.broadcast_address)}
        if subnet.router:
            self._never.add(str(subnet.router))
        self.by_ip: dict[str, _Entry] = {}
        self.by_mac: dict[str, _Entry] = {}
        self.reserved: dict[str, str] = {}  # mac -> ip
        self.reserved_ips: dict[str, str] = {}  # ip -> mac

    # -- membership -------------------------------------------------------
    def contains(self, ip: str) -> bool:
        return _int(ip) & self._mask == self._net

    def in_range(self, ip: str) -> bool:
        return self.first <= _int(ip) <= self.last

    def set_reservations(self, by_mac: dict[str, str]) -> None:
        mine = {mac: ip for mac, ip in by_mac.items() if self.contains(ip)}
        self.reserved = mine
        self.reserved_ips = {ip: mac for mac, ip in mine.items()}

    def load(self, row: LeaseRow) -> None:
        """Restore a lease read from the database at start-up."""
        e = _Entry(row.ip, row.mac, row.state, row.expires, row.hostname)
        self.by_ip[row.ip] = e
        prev = self.by_mac.get(row.mac)
        if prev is None or prev.state != BOUND or row.state == BOUND:
            self.by_mac[row.mac] = e

    # -- rules ------------------------------------------------------------
    def free_for(self, ip: str, mac: str, now: float) -> bool:
        """May ``mac`` have ``ip`` now? (Range, reservations and live leases.)"""
        owner = self.reserved_ips.get(ip)
        if owner is not None:
            return owner == mac
        if ip in self._never or not self.in_range(ip):
            return False
        return self._unheld(ip, mac, now)

    def _unheld(self, ip: str, mac: str, now: float) -> bool:
        """No live lease of another MAC holds ``ip`` (reservations and range checked already)."""
        e = self.by_ip.get(ip)
        if e is None:
            return True
        if e.state == DECLINED:
            return e.expires <= now
        return e.mac == mac or e.state == RELEASED or e.expires <= now

    def choose(self, mac: str, requested: str | None, now: float) -> str | None:
        """The address to offer ``mac``, or None if the pool is exhausted."""
        ip = self.reserved.get(mac)
        if ip is not None:
            return ip
        e = self.by_mac.get(mac)
        if e is not None and e.state != DECLINED and self.free_for(e.ip, mac, now):
            return e.ip
        if requested and self.contains(requested) and self.free_for(requested, mac, now):
            return requested
        return self._scan(mac, now)

    def acceptable(self, mac: str, ip: str, now: float) -> bool:
        """RFC 2131 section 4.3.2: may we ACK a REQUEST for ``ip``?"""
        mine = self.reserved.get(mac)
        if mine is not None:
            return mine == ip
        return self.free_for(ip, mac, now)

    def _scan(self, mac: str, now: float) -> str | None:
        size = self.last - self.first + 1
        n = self._cursor
        reserved, never = self.reserved_ips, self._never
        for _ in range(size):  # n is in the range; an address reserved for mac was chosen before
            ip = _str(n)
            n = n + 1 if n < self.last else self.first
            if ip not in reserved and ip not in never and self._unheld(ip, mac, now):
                self._cursor = n
                return ip
        return None

    # -- changes ----------------------------------------------------------
    def _set(self, mac: str, ip: str, state: str, expires: float, hostname: str) -> _Entry:
        e = _Entry(ip, mac, state, expires, hostname)
        self.by_ip[ip] = e
        self.by_mac[mac] = e
        return e

    def _row(self, e: _Entry) -> LeaseRow:
        return LeaseRow(e.ip, e.mac, self.cidr, e.state, e.hostname, e.expires)

    def offer(self, mac: str, ip: str, now: float) -> None:
        """Set ``ip`` aside for ``mac`` (memory only: offers are not durable)."""
        e = self.by_ip.get(ip)
        if e is not None and e.mac == mac and e.state == BOUND and e.expires > now:
            self.by_mac[mac] = e
            return
        self._set(mac, ip, OFFERED, now + OFFER_HOLD, "")

    def forget_offer(self, mac: str) -> None:
        """The client chose another server (RFC 2131 section 4.3.2, SELECTING)."""
        e = self.by_mac.get(mac)
        if e is not None and e.state == OFFERED:
            e.expires = 0.0

    def bind(self, mac: str, ip: str, now: float, hostname: str = "") -> list[LeaseRow]:
        old = self.by_mac.get(mac)
        rows = []
        if (
            old is not None
            and old.ip != ip
            and self.by_ip.get(old.ip) is old
            and old.state == BOUND
        ):
            old.state, old.expires = RELEASED, now
            rows.append(self._row(old))
        e = self._set(mac, ip, BOUND, now + self.subnet.lease_time, hostname)
        rows.append(self._row(e))
        return rows

    def release(self, mac: str, ip: str, now: float) -> list[LeaseRow]:
        """RFC 2131 section 4.3.4: the address is free; the MAC remembers it."""
        e = self.by_ip.get(ip)
        if e is None or e.mac != mac or e.state != BOUND:
            return []
        e.state, e.expires = RELEASED, now
        return [self._row(e)]

    def decline(self, mac: str, ip: str, now: float) -> list[LeaseRow]:
        """RFC 2131 section 4.3.3: someone else uses ``ip``; keep it out of use."""
        if not self.contains(ip):
            return []
        e = self._set(mac, ip, DECLINED, now + self.subnet.lease_time, "")
        self.by_mac.pop(mac, None)
        return [self._row(e)]


def pools_for(subnets: tuple[SubnetSettings, ...], server_ip: str) -> list[Pool]:
    return [Pool(s, server_ip) for s in subnets]


def find(pools: list[Pool], ip: str) -> Pool | None:
    for p in pools:
        if p.contains(ip):
            return p
    return None
