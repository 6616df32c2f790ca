"""The DHCP service: sockets and threads around :class:`pxe.dhcp.handler.Handler`.

Owns binding (UDP 0.0.0.0:dhcp_port with SO_BINDTODEVICE and SO_BROADCAST;
proxyDHCP on address:proxy_port when a subnet is in proxy mode), the serve
loops, the statistics and the rate-limited warnings.

One serve step: block for a datagram (SO_RCVTIMEO, one syscall); once a
request has produced lease rows, drain whatever else is queued
(MSG_DONTWAIT) up to ``DRAIN`` requests. Each request is decoded and
answered; replies that need no lease row (OFFERs) leave at once. Then the
lease rows of the whole batch commit in one transaction
(``LeaseStore.write``, the port of ``pxe.dhcp.leases``), and only then do the
batch's ACKs leave. Everything
runs on the serve thread: no hand-off to a writer thread, so no condition
variable, GIL switch or futex call per ACK, and the batch (hence the group
commit) grows by itself with the offered rate. The price: while another
writer holds SQLite's write lock, this loop waits for it (OFFERs too), up to
the busy timeout.

    DhcpService(settings, policy, store, sightings=boots).start()   # returns once listening

A reply to a network-boot client is reported to the ``sightings`` port
(``pxe.dhcp.sightings``): "this MAC booted with this address now". An
``observer`` (optional) sees every decoded request, answered or not (the
core's watch for a booted OS's own DHCP client, ``provisiond.bootchain``).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable

from pxe.boot import BootPolicy
from pxe.dhcp.codec import DhcpDecodeError, DhcpPacket, decode
from pxe.dhcp.handler import Handler, Reply
from pxe.dhcp.leases import LeaseStore
from pxe.dhcp.pool import LeaseRow, Pool, pools_for
from pxe.dhcp.sightings import BootSightings, sighting
from pxe.log import WARN_EVERY, RateLimitedLog, get
from pxe.service import LoopThread
from pxe.settings import DhcpSettings

log = get("dhcp")
STAT_KEYS = ("received", "offered", "acked", "nak", "dropped_malformed", "ignored")
WAIT = 0.25  # seconds a serve step blocks for the first datagram (stop stays prompt)
DRAIN = 64  # datagrams handled per serve step at most (one lease commit per step)
RCVBUF = 4 << 20  # SO_RCVBUF asked for (the kernel doubles it, capped by net.core.rmem_max)


class DhcpStartError(RuntimeError):
    """The service cannot start; the message says why and what to fix."""


class DhcpService:
    name = "dhcp"

    def __init__(
        self,
        settings: DhcpSettings,
        policy: BootPolicy,
        store: LeaseStore,
        *,
        client_port: int = 68,
        sightings: BootSightings | None = None,
        observer: Callable[[DhcpPacket], None] | None = None,
    ) -> None:
        if not isinstance(settings, DhcpSettings):
            raise TypeError(
                "DhcpService takes pxe.settings.DhcpSettings (provisiond.pxesettings.dhcp)"
            )
        self.settings, self.policy, self.store = settings, policy, store
        self.sightings = sightings
        self.observer = observer  # sees every decoded request (the booted-OS watch)
        self.client_port = client_port
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.warn = RateLimitedLog(WARN_EVERY, log)
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._loops: list[LoopThread] = []
        self.pools: list[Pool] = []

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        cfg = self.settings
        if not cfg.interface:
            raise DhcpStartError("dhcp: config 'interface' is empty; set the NIC to serve on")
        if not cfg.subnets:
            raise DhcpStartError("dhcp: no [[subnet]] configured; nothing to serve")
        self.prepare()
        try:
            main = self._bind("0.0.0.0", cfg.port)
            self._loops.append(LoopThread("dhcp", lambda: self._serve(main, False), log))
            if any(s.mode == "proxy" for s in cfg.subnets):
                proxy = self._bind(str(cfg.address), cfg.proxy_port)
                self._loops.append(LoopThread("dhcp-proxy", lambda: self._serve(proxy, True), log))
        except OSError as exc:
            self._close()
            raise DhcpStartError(f"dhcp: cannot listen on {cfg.interface}: {exc}") from exc
        self.store.start(self._set_reservations)
        for loop in self._loops:
            loop.start()
        log.info(
            "dhcp: listening on %s port %d (%d leases loaded)",
            cfg.interface,
            cfg.port,
            sum(len(p.by_ip) for p in self.pools),
        )

    def prepare(self) -> None:
        """Pools, leases from the database and the handler: all but the sockets."""
        cfg = self.settings
        self.pools = pools_for(cfg.subnets, str(cfg.address))
        self._load()
        self.handler = Handler(cfg, self.policy, self.pools, self._count, self.client_port)

    def stop(self) -> None:
        for loop in self._loops:
            loop._stop.set()
        for loop in self._loops:
            loop.stop(timeout=1.0)
        self.store.stop(timeout=0.8)
        self._close()
        self._loops = []

    def _close(self) -> None:
        for s in self._socks:
            s.close()
        self._socks = []

    def _bind(self, host: str, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socks.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.settings.interface.encode())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.bind((host, port))
        # blocking, with a kernel receive timeout: recvfrom is one syscall (a Python
        # socket timeout would poll() first); EAGAIN on timeout ends the step
        sec = int(WAIT)
        s.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, int((WAIT - sec) * 1e6))
        )
        return s

    def _load(self) -> None:
        now = time.time()
        rows = self.store.load_leases(now)
        for row in rows:
            pool = next(
                (p for p in self.pools if p.cidr == row.subnet and p.contains(row.ip)), None
            )
            if pool is not None:
                pool.load(row)
        self._set_reservations(self.store.load_reservations())

    def _set_reservations(self, by_mac: dict[str, str]) -> None:
        with self._lock:
            for p in self.pools:
                p.set_reservations(by_mac)

    # -- serve loop: receive -> decode -> handle -> send ---------------------
    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1
        if key.startswith(("ignored_", "dropped_")) and key != "dropped_malformed":
            self.stats["ignored"] += 1

    def _serve(self, sock: socket.socket, proxy: bool) -> None:
        try:
            first = sock.recvfrom(4096)
        except OSError:  # the receive timeout (EAGAIN), or the socket closed at stop
            return
        stats, handle, now, sightings = self.stats, self.handler.handle, time.time(), self.sightings
        recvfrom, sendto, observer = sock.recvfrom, sock.sendto, self.observer
        rows: list[LeaseRow] = []
        acks: list[Reply] = []
        with self._lock:
            data, src = first
            for n in range(1, DRAIN + 1):
                stats["received"] += 1
                try:
                    packet = decode(data)
                    if observer is not None:
                        observer(packet)
                    reply = handle(packet, now, src if proxy else None)
                except DhcpDecodeError as exc:  # also a malformed option read late
                    stats["dropped_malformed"] += 1
                    self.warn.warning(
                        "malformed", "dhcp: dropped malformed packet from %s: %s", src, exc
                    )
                    reply = None
                except Exception:  # a bug: lose this request, not the batch's ACKs
                    log.exception("dhcp: unexpected error handling a request from %s", src)
                    reply = None
                if reply is not None:
                    seen = sightings and sighting(
                        packet, reply.kind, reply.data, src if proxy else None
                    )
                    if seen:  # before the reply leaves: the boot script may follow at once
                        sightings.booted(*seen)
                    if reply.durable:
                        rows += reply.durable
                        if reply.data:
                            acks.append(reply)
                    elif reply.data:
                        try:
                            sendto(reply.data, reply.dest)
                        except OSError as exc:
                            self._send_failed(reply, exc)
                if not rows or n == DRAIN:
                    break  # drain only to group-commit lease rows (saves a recv per OFFER)
                try:
                    data, src = recvfrom(4096, socket.MSG_DONTWAIT)
                except OSError:  # nothing more queued (EAGAIN)
                    break
        if rows and self.store.write(rows):  # ACKs leave only after their rows committed
            for reply in acks:
                try:
                    sendto(reply.data, reply.dest)
                except OSError as exc:
                    self._send_failed(reply, exc)

    def _send_failed(self, reply: Reply, exc: OSError) -> None:
        self.warn.warning("send", "dhcp: send to %s failed: %s", reply.dest, exc)
