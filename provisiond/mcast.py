"""udpcast, the pure part: sender command lines, its output as events, receivers' status.

Owns what :mod:`provisiond.fanout` needs from ``udp-sender`` without running
it (no sockets, no processes, no clock):

* :class:`SenderOptions` and :func:`sender_argv` — the command line. The
  interface is always named (``--interface``), the TTL is 1, the rendezvous
  and data groups are explicit administratively scoped addresses
  (239.255.0.0/16, RFC 2365: never routed off the segment) — udpcast's
  default rendezvous is the interface's broadcast address, and an address
  configured without ``brd`` has none (the receiver then sends its
  connection request to 0.0.0.0 and never connects);
* :func:`parse_sender_line` — one line of ``udp-sender``'s stderr
  (``New connection from IP (#N)``, ``Starting transfer``, ``bytes= 12 196 912
  re-xmits=...``, ``Dropping client #N because of timeout``, ``Disconnecting
  #N (IP)``, ``Transfer complete.``) into a :class:`SenderEvent`; anything
  else is ``None``;
* :class:`Receivers` — the status of every receiver, updated by events, as
  operators see it in the job log;
* :func:`interface_of` — which interface holds an address, from
  ``ip -o -4 addr show`` output.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

#: first UDP port pair of fan-out sessions; session slot ``s`` uses PORTBASE + 2*s (+1)
PORTBASE = 9100
SLOTS = 50
RDV_PREFIX, DATA_PREFIX = "239.255.77.", "239.255.78."


@dataclass(frozen=True)
class SenderOptions:
    interface: str
    slot: int = 0
    receivers: int = 2
    max_wait: int = 20  # s after the first connection: start without the missing ones
    min_wait: int = 0
    retries_until_drop: int = 30  # unanswered REQACKs before a receiver is dropped
    start_timeout: int = 120  # no receiver at all within this: give up (all repair by HTTP)
    max_bitrate: str = ""  # "" = as fast as the link takes; e.g. "900m"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", self.interface or ""):
            raise ValueError(f"interface {self.interface!r} is not an interface name")
        if not 0 <= self.slot < SLOTS:
            raise ValueError(f"slot {self.slot} outside 0..{SLOTS - 1}")
        if self.receivers < 1:
            raise ValueError("a fan-out needs at least one receiver")
        if self.max_bitrate and not re.fullmatch(r"[0-9]+[km]?", self.max_bitrate):
            raise ValueError(f"max bitrate {self.max_bitrate!r}: a number with k or m (bits/s)")

    @property
    def portbase(self) -> int:
        return PORTBASE + 2 * self.slot

    @property
    def rdv(self) -> str:
        return f"{RDV_PREFIX}{self.slot + 1}"

    @property
    def data(self) -> str:
        return f"{DATA_PREFIX}{self.slot + 1}"


def sender_argv(o: SenderOptions, program: str = "udp-sender") -> list[str]:
    """``udp-sender`` reading stdin; starts when all receivers are in or max_wait has passed."""
    argv = [
        program, "--interface", o.interface, "--portbase", str(o.portbase),
        "--mcast-rdv-address", o.rdv, "--mcast-data-address", o.data, "--ttl", "1",
        "--nopointopoint", "--nokbd", "--min-receivers", str(o.receivers),
        "--max-wait", str(o.max_wait), "--min-wait", str(o.min_wait),
        "--retries-until-drop", str(o.retries_until_drop),
        "--start-timeout", str(o.start_timeout), "--stat-period", "1000",
    ]  # fmt: skip
    if o.max_bitrate:
        argv += ["--max-bitrate", o.max_bitrate]
    return argv


# --- the sender's output -------------------------------------------------------

CONNECTED, STARTED, PROGRESS, DROPPED, DISCONNECTED, COMPLETE = (
    "connected", "started", "progress", "dropped", "disconnected", "complete",
)  # fmt: skip


@dataclass(frozen=True)
class SenderEvent:
    kind: str
    slot: int | None = None  # udpcast's receiver number (#N)
    ip: str = ""
    sent: int = 0  # bytes sent so far (progress)
    retransmits: int = 0


_PATTERNS = (
    (CONNECTED, re.compile(r"New connection from (\d+\.\d+\.\d+\.\d+)\s+\(#(\d+)\)")),
    (DISCONNECTED, re.compile(r"Disconnecting #(\d+) \((\d+\.\d+\.\d+\.\d+)\)")),
    (DROPPED, re.compile(r"Dropping client #(\d+)")),
    (PROGRESS, re.compile(r"bytes=\s*([\d ]+?)\s+re-xmits=(\d+)")),
    (STARTED, re.compile(r"^Starting transfer")),
    (COMPLETE, re.compile(r"^Transfer complete")),
)


def parse_sender_line(line: str) -> SenderEvent | None:
    line = line.strip()
    for kind, rx in _PATTERNS:
        m = rx.search(line)
        if not m:
            continue
        if kind == CONNECTED:
            return SenderEvent(kind, int(m.group(2)), m.group(1))
        if kind == DISCONNECTED:
            return SenderEvent(kind, int(m.group(1)), m.group(2))
        if kind == DROPPED:
            return SenderEvent(kind, int(m.group(1)))
        if kind == PROGRESS:
            return SenderEvent(kind, sent=int(m.group(1).replace(" ", "")),
                               retransmits=int(m.group(2)))  # fmt: skip
        return SenderEvent(kind)
    return None


def split_output(buffer: str) -> tuple[list[str], str]:
    """Complete lines of ``buffer`` (udp-sender ends progress lines with CR) and the rest."""
    parts = re.split(r"[\r\n]", buffer)
    return [p for p in parts[:-1] if p.strip()], parts[-1]


# --- receivers' status ---------------------------------------------------------

WAITING, RECEIVING, DONE, LOST = "waiting", "receiving", "done", "dropped"


@dataclass(frozen=True)
class Receiver:
    name: str
    ip: str
    state: str = WAITING
    slot: int | None = None


@dataclass
class Receivers:
    """The fan-out's receivers by IP; unknown IPs (not one of ours) are counted, not added."""

    members: dict[str, Receiver] = field(default_factory=dict)
    started: bool = False
    complete: bool = False
    sent: int = 0
    retransmits: int = 0
    strangers: int = 0

    @classmethod
    def of(cls, names_by_ip: dict[str, str]) -> Receivers:
        return cls({ip: Receiver(name, ip) for ip, name in names_by_ip.items()})

    def _by_slot(self, slot: int | None) -> Receiver | None:
        return next((r for r in self.members.values() if r.slot == slot), None)

    def apply(self, ev: SenderEvent) -> str | None:
        """Update from one event; return a line worth logging (or None)."""
        if ev.kind == CONNECTED:
            r = self.members.get(ev.ip)
            if r is None:
                self.strangers += 1
                return f"fan-out: {ev.ip} joined but is not one of this fan-out's machines"
            self.members[ev.ip] = replace(r, state=RECEIVING, slot=ev.slot)
            return f"fan-out: {r.name} ({ev.ip}) joined the multicast session"
        if ev.kind == STARTED:
            self.started = True
            waiting = [r.name for r in self.members.values() if r.state == WAITING]
            tail = f"; not joined: {', '.join(waiting)} (they fetch over HTTP)" if waiting else ""
            return f"fan-out: transfer started to {self.joined()} receivers{tail}"
        if ev.kind == PROGRESS:
            self.sent, self.retransmits = ev.sent, ev.retransmits
            return None
        if ev.kind == DROPPED:
            r = self._by_slot(ev.slot)
            if r is None:
                return None
            self.members[r.ip] = replace(r, state=LOST)
            return f"fan-out: dropped {r.name} ({r.ip}): it stopped answering; it repairs over HTTP"
        if ev.kind == DISCONNECTED:
            r = self.members.get(ev.ip)
            if r is not None and r.state == RECEIVING and self.complete:
                self.members[r.ip] = replace(r, state=DONE)
            return None
        if ev.kind == COMPLETE:
            self.complete = True
            for r in list(self.members.values()):
                if r.state == RECEIVING:
                    self.members[r.ip] = replace(r, state=DONE)
            return f"fan-out: multicast complete: {self.summary()}"
        return None

    def joined(self) -> int:
        return sum(1 for r in self.members.values() if r.state != WAITING)

    def summary(self) -> str:
        parts = [f"{r.name} {r.state}" for r in self.members.values()]
        return (f"{', '.join(parts)}; {self.sent / 2**20:.0f} MiB sent, "
                f"{self.retransmits} packets re-sent")  # fmt: skip


# --- which interface -----------------------------------------------------------


def interface_of(address: str, ip_addr_output: str) -> str | None:
    """The interface that holds ``address``, from ``ip -o -4 addr show`` lines."""
    want = ipaddress.ip_address(address)
    for line in ip_addr_output.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[2] != "inet":
            continue
        try:
            have = ipaddress.ip_interface(parts[3]).ip
        except ValueError:
            continue
        if have == want:
            return parts[1].split("@")[0]
    return None
