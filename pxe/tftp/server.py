"""The TFTP service: one event loop serving read-only transfers from boot assets.

This module owns the sockets. One UDP socket listens on
``(config.address, config.services.tftp_port)``; every accepted read request
gets its own ephemeral socket (the server's TID, RFC 1350 section 4) and a
sans-IO :class:`pxe.tftp.transfer.Transfer`. A single thread runs an
``epoll`` loop over all of them plus a timer scan for
retransmissions, so 50+ concurrent transfers cost one thread, one socket
each, and no more memory than the bounded file cache (:mod:`pxe.tftp.files`).

Why not tftpy's server: tftpy (the project's TFTP library) grants no
windowsize (RFC 7440), which is what makes a PXE boot file fast, and spends
more per packet (50 lockstep clients: 1.08 s against 0.5-0.9 s here; see
BENCHMARKS.md). So the codec and the transfer loop are written here,
and tftpy's *client* is used in the interop tests as an independent peer.
Windows go out as one ``sendmsg`` with UDP segmentation offload
(``UDP_SEGMENT``, Linux 4.18+) when the kernel allows it, else one datagram
per call.

Policy: write requests are refused (ERROR 2); names are confined to the root
(:func:`pxe.tftp.codec.clean_filename` + symlink containment in
:class:`pxe.tftp.files.FileStore`); a datagram from a wrong TID gets ERROR 5
and leaves the transfer alone (RFC 1350 section 4). Every bad input is
counted in :attr:`TftpService.stats`, logged once (rate-limited) and the loop
goes on.

``stats`` keys: rrq, wrq, completed, failed (timeouts + client aborts),
timeouts, client_errors, errors (ERROR packets we sent), dropped_malformed,
refused_path, not_found, bad_mode, busy, wrong_tid, retransmits,
bytes_sent, active.
"""

from __future__ import annotations

import errno
import select
import socket
import sys
import time
from dataclasses import dataclass

from pxe.log import RateLimitedLog, get
from pxe.service import LoopThread
from pxe.settings import TftpSettings
from pxe.tftp.codec import (
    MODES,
    Ack,
    Error,
    ErrorCode,
    Limits,
    MalformedPacket,
    Opcode,
    PathRefused,
    Request,
    clean_filename,
    negotiate,
    parse,
)
from pxe.tftp.files import FileStore, Source
from pxe.tftp.transfer import Datagram, State, Transfer

log = get("tftp")

STAT_KEYS = (
    "rrq", "wrq", "completed", "failed", "timeouts", "client_errors", "errors",
    "dropped_malformed", "refused_path", "not_found", "bad_mode", "busy", "wrong_tid",
    "retransmits", "bytes_sent", "active",
)  # fmt: skip
_BATCH = 64  # datagrams read per readiness event before yielding to others
_TICK = 0.2  # longest select() wait: bounds stop() latency
_UDP_SEGMENT = 103  # linux/udp.h: UDP generic segmentation offload (cmsg, SOL_UDP)
_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES = 64, 65000


class TftpStartError(RuntimeError):
    """The service could not listen (address in use, no permission...)."""


@dataclass
class _Active:
    sock: socket.socket
    peer: tuple[str, int]
    name: str
    transfer: Transfer
    started: float


class TftpService:
    """Read-only TFTP on ``(config.address, config.services.tftp_port)``.

    ``start()`` returns once the socket is bound (raises :class:`TftpStartError`
    otherwise); ``stop()`` returns within ~1.5 s. A port of 0 picks a free port
    (tests); :attr:`port` tells which.
    """

    name = "tftp"

    def __init__(
        self,
        settings: TftpSettings,
        *,
        limits: Limits | None = None,
        max_transfers: int = 256,
        max_retries: int = 5,
        gso: bool = True,
        store: FileStore | None = None,
    ) -> None:
        if not isinstance(settings, TftpSettings):
            raise TypeError(
                "TftpService takes pxe.settings.TftpSettings (provisiond.pxesettings.tftp)"
            )
        self.address = str(settings.address)
        self.port = settings.port
        self.limits = limits or Limits()
        self.max_transfers, self.max_retries = max_transfers, max_retries
        self.gso = gso  # send windows with UDP_SEGMENT; turned off if the kernel refuses
        self.store = store or FileStore(settings.root)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._ep: select.epoll | None = None
        self._listen: socket.socket | None = None
        self._listen_fd = -1
        self._active: dict[int, _Active] = {}
        self._next_timer = float("inf")
        self._throttle = RateLimitedLog(period=10.0, log=log, burst=20)
        self._loop: LoopThread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((self.address, self.port))
        except OSError as exc:
            sock.close()
            raise TftpStartError(
                f"tftp: cannot listen on {self.address}:{self.port}/udp: {exc.strerror or exc}"
            ) from exc
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._listen, self._listen_fd = sock, sock.fileno()
        self._ep = select.epoll()
        self._ep.register(sock.fileno(), select.EPOLLIN)
        if not self.store.root.is_dir():
            log.warning("tftp: boot assets directory %s does not exist", self.store.root)
        self._loop = LoopThread("tftp", self._step, log)
        self._loop.start()
        log.info("tftp: serving %s on %s:%d/udp", self.store.root, self.address, self.port)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop(timeout=1.5)
            self._loop = None
        for active in list(self._active.values()):
            active.transfer.abort("server stopping")
            self._close(active)
        if self._ep is not None:
            self._ep.close()
            self._ep = None
        if self._listen is not None:
            self._listen.close()
            self._listen = None

    # ------------------------------------------------------------------ the loop

    def _step(self) -> None:
        assert self._ep is not None
        wait = max(0.0, min(_TICK, self._next_timer - time.monotonic()))
        for fd, _ in self._ep.poll(wait, 256):
            if fd == self._listen_fd:
                self._on_listen()
            elif (active := self._active.get(fd)) is not None:
                self._on_transfer(active)
        now = time.monotonic()
        if now >= self._next_timer:
            self._run_timers(now)

    def _on_listen(self) -> None:
        assert self._listen is not None
        for _ in range(_BATCH):
            try:
                data, peer = self._listen.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            self._on_request(data, peer)

    def _on_request(self, data: bytes, peer: tuple[str, int]) -> None:
        try:
            packet = parse(data)
        except MalformedPacket as exc:
            self._bad("dropped_malformed", "tftp: malformed datagram from %s:%d: %s", peer, exc)
            if data[:2] in (b"\0\x01", b"\0\x02"):  # a broken request deserves an answer
                self._refuse(peer, ErrorCode.ILLEGAL_OPERATION, "malformed request")
            return
        if not isinstance(packet, Request):
            kind = type(packet).__name__
            self._bad("dropped_malformed", "tftp: %s:%d sent %s to the request port", peer, kind)
            return
        if packet.opcode is Opcode.WRQ:  # read-only server
            self._bad("wrq", "tftp: %s:%d write request %r refused", peer, packet.filename)
            self._refuse(peer, ErrorCode.ACCESS_VIOLATION, "read-only server")
            return
        self.stats["rrq"] += 1
        self._start_transfer(packet, peer)

    def _start_transfer(self, req: Request, peer: tuple[str, int]) -> None:
        if req.mode not in MODES:
            self._bad("bad_mode", "tftp: %s:%d asked for mode %r", peer, req.mode)
            self._refuse(peer, ErrorCode.ILLEGAL_OPERATION, f"unsupported mode {req.mode}")
            return
        if len(self._active) >= self.max_transfers:
            self._bad("busy", "tftp: %s:%d refused: %d transfers active", peer, len(self._active))
            self._refuse(peer, ErrorCode.NOT_DEFINED, "server busy, try again")
            return
        source = self._open(req, peer)
        if source is None:
            return
        params, oack = negotiate(req.options, source.size, self.limits)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.address, 0))  # the server's TID for this transfer
        except OSError as exc:
            source.close()
            self._bad("busy", "tftp: no socket for %s:%d: %s", peer, exc)
            self._refuse(peer, ErrorCode.NOT_DEFINED, "server busy, try again")
            return
        sock.setblocking(False)
        transfer = Transfer(source, params, oack, self.max_retries)
        active = _Active(sock, peer, req.filename, transfer, time.monotonic())
        self._active[sock.fileno()] = active
        assert self._ep is not None
        self._ep.register(sock.fileno(), select.EPOLLIN)
        self.stats["active"] = len(self._active)
        self._send(active, transfer.start(active.started))
        self._next_timer = min(self._next_timer, transfer.deadline)

    def _open(self, req: Request, peer: tuple[str, int]) -> Source | None:
        try:
            return self.store.open(clean_filename(req.filename), req.mode == "netascii")
        except PathRefused as exc:
            self._bad("refused_path", "tftp: %s:%d asked for %r: %s", peer, req.filename, exc)
            self._refuse(peer, ErrorCode.ACCESS_VIOLATION, "access violation")
        except (FileNotFoundError, NotADirectoryError):
            self._bad("not_found", "tftp: %s:%d asked for missing %r", peer, req.filename)
            self._refuse(peer, ErrorCode.FILE_NOT_FOUND, "file not found")
        except OSError as exc:  # not a regular file, permission, symlink loop...
            self._bad("refused_path", "tftp: %s:%d cannot have %r: %s", peer, req.filename, exc)
            self._refuse(peer, ErrorCode.ACCESS_VIOLATION, "access violation")
        return None

    def _on_transfer(self, active: _Active) -> None:
        """One datagram per readiness event: epoll is level-triggered, so a
        second one comes back on the next poll, and the lockstep hot path
        saves a recvfrom that would fail."""
        try:
            data, peer = active.sock.recvfrom(2048)
        except OSError:  # EAGAIN, or an ICMP port unreachable reported late
            return
        if peer != active.peer:  # RFC 1350 section 4: wrong TID -> ERROR 5
            self._bad("wrong_tid", "tftp: datagram from %s:%d on a foreign TID", peer)
            self._send_error(active.sock, peer, ErrorCode.UNKNOWN_TID, "unknown transfer ID")
            return
        if len(data) == 4 and data[0] == 0 and data[1] == Opcode.ACK:  # the hot path
            out = active.transfer.on_ack(int.from_bytes(data[2:4], "big"), time.monotonic())
        else:
            out = self._slow_packet(active, data)
        if out:
            self._send(active, out)
        if active.transfer.state is not State.RUNNING:
            self._close(active)

    def _slow_packet(self, active: _Active, data: bytes) -> list[Datagram]:
        try:
            packet = parse(data)
        except MalformedPacket as exc:
            self._bad(
                "dropped_malformed", "tftp: malformed datagram from %s:%d: %s", active.peer, exc
            )
            return []
        if isinstance(packet, Ack):
            return active.transfer.on_ack(packet.block, time.monotonic())
        if isinstance(packet, Error):  # the client gives up (or refuses our OACK)
            self.stats["client_errors"] += 1
            active.transfer.abort(f"client error {packet.code}: {packet.message}")
            return []
        self._bad("dropped_malformed", "tftp: %s:%d sent unexpected %s", active.peer, packet)
        return []

    def _run_timers(self, now: float) -> None:
        nxt = float("inf")
        for active in list(self._active.values()):
            transfer = active.transfer
            if transfer.deadline <= now:
                out = transfer.on_timer(now)
                self.stats["retransmits"] += bool(out)
                self._send(active, out)
                if transfer.state is not State.RUNNING:
                    self.stats["timeouts"] += 1
                    self._close(active)
                    continue
            nxt = min(nxt, transfer.deadline)
        self._next_timer = nxt

    # ------------------------------------------------------------------ helpers

    def _send(self, active: _Active, datagrams: list[Datagram]) -> None:
        try:
            if self.gso and len(datagrams) > 1:
                self._send_gso(active, datagrams)
            else:
                for parts in datagrams:
                    active.sock.sendmsg(parts, (), 0, active.peer)
        except OSError as exc:  # buffer full or network down: the timer retransmits
            if self.gso and exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT):
                log.info("tftp: UDP segmentation offload unavailable (%s); sending one by one", exc)
                self.gso = False
                self._send(active, datagrams)

    def _send_gso(self, active: _Active, datagrams: list[Datagram]) -> None:
        """A window in few syscalls: DATA packets of equal size (the last may be
        shorter) concatenated and split by the kernel (UDP_SEGMENT, Linux 4.18+)."""
        seg = sum(len(p) for p in datagrams[0])
        per_send = max(1, min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // seg))
        for i in range(0, len(datagrams), per_send):
            chunk = datagrams[i : i + per_send]
            if len(chunk) == 1:
                active.sock.sendmsg(chunk[0], (), 0, active.peer)
                continue
            buf = b"".join([b for parts in chunk for b in parts])
            cmsg = [(socket.SOL_UDP, _UDP_SEGMENT, seg.to_bytes(2, sys.byteorder))]
            active.sock.sendmsg([buf], cmsg, 0, active.peer)

    def _close(self, active: _Active) -> None:
        transfer = active.transfer
        if self._active.pop(active.sock.fileno(), None) is None:
            return
        if self._ep is not None:
            self._ep.unregister(active.sock.fileno())
        active.sock.close()
        transfer.abort("closed")  # no-op when already finished; releases the file
        self.stats["active"] = len(self._active)
        self.stats["bytes_sent"] += transfer.bytes_sent
        elapsed = time.monotonic() - active.started
        peer = f"{active.peer[0]}:{active.peer[1]}"
        if transfer.state is State.DONE:
            self.stats["completed"] += 1
            log.info("tftp: sent %s to %s (%d bytes, %s) in %.2f s",
                     active.name, peer, transfer.source.size, transfer.params, elapsed)  # fmt: skip
        else:
            self.stats["failed"] += 1
            log.info("tftp: transfer of %s to %s failed: %s", active.name, peer, transfer.reason)

    def _refuse(self, peer: tuple[str, int], code: ErrorCode, message: str) -> None:
        """Answer a refused request from a fresh TID, as a transfer would."""
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((self.address, 0))
                self._send_error(sock, peer, code, message)
        except OSError as exc:
            log.debug("tftp: cannot answer %s:%d: %s", *peer, exc)

    def _send_error(self, sock: socket.socket, peer, code: ErrorCode, message: str) -> None:
        try:
            sock.sendto(Error(code, message).pack(), peer)
            self.stats["errors"] += 1
        except OSError as exc:
            log.debug("tftp: cannot send ERROR to %s:%d: %s", *peer, exc)

    def _bad(self, kind: str, fmt: str, peer: tuple[str, int], *args: object) -> None:
        self.stats[kind] = self.stats.get(kind, 0) + 1
        self._throttle.warning(kind, fmt, *peer, *args)
