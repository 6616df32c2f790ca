"""DNS service: the sockets around :mod:`pxe.dns.resolver`.

Owns UDP and TCP listening on ``(config.address, config.services.dns_port)``,
the serve pipeline (receive -> guard -> parse -> decide -> send), forwarding
in a bounded worker pool, statistics and rate-limited logging of bad input.
One selector thread serves UDP and accepts TCP; each TCP connection gets a
short-lived thread (at most ``max_tcp``; RFC 7766 section 6.2.3 idle timeout);
forwarded UDP queries run in a pool of ``forward_workers`` threads with at
most ``max_pending`` waiting, so a slow upstream never blocks other queries.

Abuse controls (:mod:`pxe.dns.clients`): forwarding only for clients in
the configured subnets, ``[dns] allow`` and loopback; UDP replies capped at
the client's EDNS size (512 without EDNS, never above ``max_udp_size``) and
cut to header + question with TC=1 beyond it; response-rate limiting per
client prefix on UDP, checked before any work is done for the query.

``stats`` keys: queries (messages received), answered (NOERROR from our
zone, with or without data), nxdomain, refused, notimp, forwarded,
servfail (upstream failed, timed out, or too many pending), formerr,
dropped_malformed (too short to answer, or QR=1), tcp_rejected,
forward_denied (REFUSED: the client may not use the upstream), truncated
(UDP reply cut to fit the client's size), rate_limited (not answered in full
because of the rate limit), slipped (of those, sent truncated).
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dnslib import DNSRecord

from pxe.dns import upstream as up
from pxe.dns.clients import Action, ClientFilter, RateLimit, ResponseRateLimiter
from pxe.dns.directory import NameDirectory
from pxe.dns.resolver import Outcome, Zone, resolve
from pxe.dns.wire import (
    RCODE_FORMERR,
    RCODE_SERVFAIL,
    Verdict,
    check_query,
    error_reply,
    truncate,
    udp_limit,
)
from pxe.log import WARN_EVERY, RateLimitedLog, get
from pxe.service import LoopThread
from pxe.settings import DnsSettings

STAT_KEYS = [
    "queries",
    "answered",
    "nxdomain",
    "refused",
    "notimp",
    "forwarded",
    "servfail",
    "formerr",
    "dropped_malformed",
    "tcp_rejected",
    "forward_denied",
    "truncated",
    "rate_limited",
    "slipped",
]
_OUTCOME_STAT = {
    Outcome.ANSWER: "answered",
    Outcome.NODATA: "answered",
    Outcome.NXDOMAIN: "nxdomain",
    Outcome.REFUSED: "refused",
    Outcome.NOTIMP: "notimp",
}
Send = Callable[[bytes], None]


class DnsStartError(RuntimeError):
    """The DNS service could not listen (address in use, no permission...)."""


class DnsService:
    name = "dns"

    def __init__(
        self,
        settings: DnsSettings,
        directory: NameDirectory,
        *,
        forward_timeout: float = 2.0,
        forward_workers: int = 8,
        max_pending: int = 64,
        max_tcp: int = 32,
        tcp_idle: float = 5.0,
    ) -> None:
        if not isinstance(settings, DnsSettings):
            raise TypeError(
                "DnsService takes pxe.settings.DnsSettings (provisiond.pxesettings.dns)"
            )
        self.settings = settings
        self._zone = Zone(settings.domain, settings.ttl, str(settings.address))
        self._directory = directory
        self._upstream = up.parse_upstream(settings.upstream)
        self._clients = ClientFilter(list(settings.clients))
        limit = RateLimit(settings.rate_limit, settings.rate_limit_slip)
        self._rrl = ResponseRateLimiter(limit)
        self._max_udp = settings.max_udp_size
        self._bind = (str(settings.address), settings.port)
        self._forward_timeout, self._forward_workers = forward_timeout, forward_workers
        self._max_pending, self._tcp_idle = max_pending, tcp_idle
        self._tcp_slots = threading.BoundedSemaphore(max_tcp)
        self._log = get("dns")
        self._bad = RateLimitedLog(WARN_EVERY, self._log)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._lock = threading.Lock()
        self._pending = 0
        self._conns: set[socket.socket] = set()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._loop: LoopThread | None = None
        self._stopping = threading.Event()

    # -- life cycle ---------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound; the port is real even when configured as 0."""
        if self._udp is None:
            return self._bind
        return self._udp.getsockname()[:2]

    def start(self) -> None:
        # Port 0 (tests): the kernel picks the UDP port; retry if TCP has it taken.
        for attempt in range(5 if self._bind[1] == 0 else 1):
            try:
                self._listen()
                break
            except OSError as e:
                self._close_listeners()
                if attempt == 4 or self._bind[1] != 0:
                    host, port = self._bind
                    msg = f"dns: cannot listen on {host}:{port} (udp+tcp): {e}"
                    raise DnsStartError(msg) from e
        self._stopping.clear()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._udp, selectors.EVENT_READ)
        self._selector.register(self._tcp, selectors.EVENT_READ)
        self._pool = ThreadPoolExecutor(self._forward_workers, thread_name_prefix="dns-fwd")
        self._loop = LoopThread("dns", self._step, self._log)
        self._loop.start()
        upstream = ":".join(map(str, self._upstream)) if self._upstream else "none (REFUSED)"
        self._log.info(
            "dns: serving %s on %s:%d udp+tcp, upstream %s",
            self._zone.origin,
            *self.address,
            upstream,
        )

    def _listen(self) -> None:
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(self._bind)
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind(self.address)
        self._tcp.listen(64)

    def stop(self) -> None:
        if self._loop is None:
            return  # never started (or start failed)
        self._stopping.set()
        self._loop.stop(timeout=1.0)
        self._loop = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._selector.close()
        self._close_listeners()

    def _close_listeners(self) -> None:
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = None

    # -- receive ------------------------------------------------------------

    def _step(self) -> None:
        for key, _ in self._selector.select(0.25):
            if key.fileobj is self._udp:
                self._on_udp()
            elif not self._stopping.is_set():
                self._on_accept()

    def _on_udp(self) -> None:
        udp = self._udp
        try:
            data, peer = udp.recvfrom(65535)
        except OSError:
            return
        self.handle(data, peer, lambda reply: udp.sendto(reply, peer), tcp=False)

    def _on_accept(self) -> None:
        try:
            conn, peer = self._tcp.accept()
        except OSError:
            return
        if not self._tcp_slots.acquire(blocking=False):
            self._count("tcp_rejected")
            self._bad.warning("tcp", "dns: too many TCP connections, closing %s", peer[0])
            conn.close()
            return
        with self._lock:
            self._conns.add(conn)
        threading.Thread(target=self._tcp_conn, args=(conn, peer), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket, peer) -> None:
        """RFC 1035 section 4.2.2: each message is prefixed by a 2-octet length."""
        try:
            conn.settimeout(self._tcp_idle)
            while not self._stopping.is_set():
                prefix = _recv_exact(conn, 2)
                if prefix is None:
                    return
                data = _recv_exact(conn, struct.unpack("!H", prefix)[0])
                if data is None:
                    return
                send = lambda reply: conn.sendall(struct.pack("!H", len(reply)) + reply)  # noqa: E731
                self.handle(data, peer, send, tcp=True)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
            self._tcp_slots.release()

    # -- serve pipeline -----------------------------------------------------

    def handle(self, data: bytes, peer, send: Send, tcp: bool) -> None:
        """The pipeline for one message from ``peer`` (no socket: ``send`` delivers)."""
        self._count("queries")
        check = check_query(data)
        if check.verdict is Verdict.DROP:
            self._count("dropped_malformed")
            self._bad.warning("drop", "dns: dropped message from %s: %s", peer[0], check.reason)
            return
        if not tcp:
            if not self._admit(data, peer, send):
                return
            send = self._capped(send, udp_limit(data, self._max_udp))
        query = self._parse(data, check, peer, send)
        if query is None:
            return
        may_forward = self._upstream is not None and self._clients.allows(peer[0])
        decision = resolve(query, self._zone, self._directory, may_forward)
        if decision.outcome is Outcome.FORWARD:
            self._count("forwarded")
            self._forward(data, query, send, tcp)
            return
        self._count(_OUTCOME_STAT[decision.outcome])
        if decision.outcome is Outcome.REFUSED and self._upstream is not None:
            self._count("forward_denied")
            self._bad.warning("acl", "dns: %s may not use the upstream (REFUSED)", peer[0])
        _send(send, decision.reply.pack(), self._log)

    def _admit(self, data: bytes, peer, send: Send) -> bool:
        """Response-rate limit (UDP only: TCP sources cannot be spoofed)."""
        action = self._rrl.check(peer[0])
        if action is Action.SEND:
            return True
        self._count("rate_limited")
        self._bad.warning("rrl", "dns: rate limit for %s's prefix: %s", peer[0], action.value)
        if action is Action.SLIP:
            self._count("slipped")
            _send(send, truncate(data, 0), self._log)
        return False

    def _capped(self, send: Send, limit: int) -> Send:
        """``send`` for UDP: a reply over ``limit`` octets goes out truncated (TC=1)."""

        def capped(reply: bytes) -> None:
            if len(reply) > limit:
                self._count("truncated")
                reply = truncate(reply, limit)
            send(reply)

        return capped

    def _parse(self, data: bytes, check, peer, send: Send) -> DNSRecord | None:
        reason = check.reason
        if check.verdict is Verdict.OK:
            try:
                return DNSRecord.parse(data)
            except Exception as e:  # dnslib raises DNSError, ValueError, KeyError...
                reason = f"unparseable: {e}"
        self._count("formerr")
        self._bad.warning("formerr", "dns: FORMERR to %s: %s", peer[0], reason)
        _send(send, error_reply(check.header, RCODE_FORMERR), self._log)
        return None

    def _forward(self, data: bytes, query: DNSRecord, send: Send, tcp: bool) -> None:
        if tcp:  # already in the connection's own thread
            self._forward_job(data, query, send, tcp)
            return
        with self._lock:
            full = self._pending >= self._max_pending
            self._pending += 0 if full else 1
        if full:
            self._servfail(query, send, "too many queries waiting for the upstream")
            return
        try:
            self._pool.submit(self._forward_job, data, query, send, tcp, True)
        except RuntimeError:  # pool shut down: stopping
            self._release_pending()

    def _forward_job(self, data: bytes, query: DNSRecord, send: Send, tcp: bool, pooled=False):
        try:
            reply = up.forward(data, self._upstream, self._forward_timeout, tcp)
        except up.UpstreamError as e:
            self._servfail(query, send, str(e))
        else:
            _send(send, reply, self._log)
        finally:
            if pooled:
                self._release_pending()

    def _release_pending(self) -> None:
        with self._lock:
            self._pending -= 1

    def _servfail(self, query: DNSRecord, send: Send, reason: str) -> None:
        self._count("servfail")
        self._bad.warning("upstream", "dns: SERVFAIL for %s: %s", query.q.qname, reason)
        reply = query.reply(ra=1, aa=0)
        reply.header.rcode = RCODE_SERVFAIL
        _send(send, reply.pack(), self._log)

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1


def _send(send: Send, reply: bytes, log) -> None:
    try:
        send(reply)
    except OSError as e:
        log.debug("dns: reply not sent: %s", e)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
