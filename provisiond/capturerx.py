"""The ``tcp`` capture transport: long-lived framed uploads, one TCP connection per agent worker.

Owns the server side of a capture's data path when the agent sends its disk
over plain TCP (``nc SERVER PORT``) instead of one HTTP PUT per chunk, and
the pure bookkeeping that goes with it (:class:`OrderedHasher`).

Why: the busybox agent forks per request; an HTTP PUT per 4 MiB chunk plus
an fsync per chunk on the server kept capture at 1.2-2.5x ``dd | nc``
(BENCHMARKS.md, bench/capture). Here each agent worker opens *one*
connection and writes frames back to back (the format of
:mod:`provisiond.chunks`), so the agent's cost per chunk is a ``dd``, an
``openssl`` sha256, a ``zstd`` trial and a ``cat``.

Wire, agent → server, per connection::

    P <token> <lane> <lanes>\\n             hello: the agent's per-boot bearer token
    C <index> <enc> <length> <sha256>\\n     then exactly <length> bytes (r raw, z zstd)
    ...                                     indices of one lane strictly increase
    E <count>\\n                             frames sent on this connection

and server → agent: ``OK <count>\\n`` after a good end frame, or
``ERR <reason>\\n`` (bad token, bad frame, checksum mismatch); then the
server closes. Only the resource's own address may connect (like the raw
deploy transport) and only with the token of the resource being captured
(the same bearer token its HTTP calls carry, checked by ``auth``); a
connection that fails either check is closed and counted in
:attr:`Receiver.refused`. Nothing secret is put in the command argument.

Every chunk is checked (length, sha256 after zstd) before it is written at
its offset; nothing is fsynced per chunk — :meth:`Receiver.finish` fsyncs the
volume once. The sha256 of the whole image (zero chunks included) is built
while chunks arrive (:class:`OrderedHasher`, in a thread of its own: the
lanes only verify and write), so the end of a capture needs no second read
of the volume.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable

from provisiond import chunks, logs
from storage.backends.base import StorageError

log = logs.get("capture")
#: out-of-order chunk bytes the whole-image hasher may hold before a lane waits
PENDING_LIMIT = 64 * 2**20
HEADER_MAX = 200
IDLE_TIMEOUT = 120.0


class FrameError(ValueError):
    """A frame or hello line that does not follow the wire format."""


class Refused(FrameError):
    """A hello with a token that may not upload here (not counted as a capture error)."""


class OrderedHasher:
    """sha256 of a whole image from chunks that arrive out of order, on several lanes.

    Each lane delivers strictly increasing chunk indices. An index that every
    lane has passed without delivering it is a zero chunk. Chunks ahead of the
    hashing cursor are held in memory up to ``limit`` bytes; beyond that
    :meth:`add` blocks (the lane's TCP connection then applies back-pressure)
    until the cursor catches up. The lane with the lowest position never
    waits, so the lanes cannot deadlock each other.

    The hashing itself (data chunks in order and the zero runs between them)
    runs in one thread of its own, outside the lock: a lane only hands its
    chunk over, so lanes never wait while another lane's call hashes a long
    zero run, and the whole-image sha256 overlaps the lanes' checks and writes.
    """

    def __init__(self, size: int, chunk_size: int, lanes: int, limit: int = PENDING_LIMIT):
        self.size, self.chunk_size, self.limit = size, chunk_size, limit
        self.count = chunks.chunk_count(size, chunk_size)
        self._pos = [-1] * lanes
        self._pending: dict[int, bytes] = {}
        self._held = 0
        self._cursor = 0  # the next chunk slot to hash (slots below it are hashed or in hand)
        self._busy = False  # the thread hashes a segment outside the lock
        self._closed = False
        self._h = hashlib.sha256()
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="capture-sha", daemon=True)
        self._thread.start()

    @property
    def lanes(self) -> int:
        return len(self._pos)

    def add(self, lane: int, index: int, data: bytes, timeout: float = IDLE_TIMEOUT) -> None:
        with self._cv:
            self._pos[lane] = max(self._pos[lane], index)
            self._cv.notify_all()
            if index < self._cursor or index in self._pending:  # a lane resent a chunk
                return
            deadline = time.monotonic() + timeout
            while index != self._cursor and self._held + len(data) > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"chunk {index} waited {timeout:.0f} s for the other lanes")
                self._cv.wait(left)
            self._pending[index] = data
            self._held += len(data)
            self._cv.notify_all()

    def lane_done(self, lane: int) -> None:
        with self._cv:
            self._pos[lane] = self.count
            self._cv.notify_all()

    def _segment(self) -> tuple[bytes | None, int, int] | None:
        """(data, zero bytes, next cursor) to hash next, or None (under the lock)."""
        data = self._pending.pop(self._cursor, None)
        if data is not None:
            return data, 0, self._cursor + 1
        # below every lane's position, a chunk not held is a zero chunk (a lane's
        # position itself is the chunk it is adding now: held or hashed already)
        limit = min(min(self._pos) if self._pos else self.count, self.count)
        if self._cursor >= limit:
            return None
        end = min([limit, *(i for i in self._pending if i > self._cursor)])
        zeros = min(self.size, end * self.chunk_size) - self._cursor * self.chunk_size
        return None, zeros, end

    def _run(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._closed or self._cursor >= self.count:
                        self._cv.notify_all()
                        return
                    seg = self._segment()
                    if seg is not None:
                        break
                    self._cv.notify_all()  # idle: hexdigest may answer
                    self._cv.wait()
                data, zeros, nxt = seg
                self._cursor, self._busy = nxt, True  # claimed: a resend below it is ignored
            if data is not None:
                self._h.update(data)
            else:
                _hash_zeros(self._h, zeros)
            with self._cv:
                self._busy = False
                if data is not None:
                    self._held -= len(data)
                self._cv.notify_all()

    def hexdigest(self, timeout: float = IDLE_TIMEOUT) -> str | None:
        """The whole image's sha256 once every chunk slot is accounted for, else None.

        Waits while the hashing thread still has work it can do.
        """
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self._closed and (self._busy or (
                    self._cursor < self.count and self._segment_ready())):  # fmt: skip
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(min(left, 1.0))
            if self._cursor >= self.count and not self._busy:
                return self._h.hexdigest()
            return None

    def _segment_ready(self) -> bool:
        limit = min(min(self._pos) if self._pos else self.count, self.count)
        return self._cursor in self._pending or self._cursor < limit

    def close(self) -> None:
        """End the hashing thread (a capture that failed or was stopped)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()


_ZERO_BLOCK = bytes(chunks.CHUNK_SIZE)


def _hash_zeros(h, n: int) -> None:
    while n > 0:
        step = min(n, len(_ZERO_BLOCK))
        h.update(memoryview(_ZERO_BLOCK)[:step])
        n -= step


def parse_hello(line: bytes) -> tuple[str, int, int]:
    parts = line.rstrip(b"\n").split(b" ")
    if len(parts) != 4 or parts[0] != b"P" or not parts[2].isdigit() or not parts[3].isdigit():
        raise FrameError("expected 'P <token> <lane> <lanes>'")
    lane, lanes = int(parts[2]), int(parts[3])
    if not 0 <= lane < lanes <= 64:
        raise FrameError(f"lane {lane} of {lanes}: lanes 1..64")
    return parts[1].decode("ascii", "replace"), lane, lanes


def parse_header(line: bytes, m_size: int, chunk_size: int) -> tuple[str, int, str, int, str]:
    """('C', index, enc, length, sha256) or ('E', count, '', 0, ''); FrameError otherwise."""
    parts = line.rstrip(b"\n").split(b" ")
    if parts[0] == b"E" and len(parts) == 2 and parts[1].isdigit() and len(parts[1]) < 19:
        return "E", int(parts[1]), "", 0, ""
    if parts[0] != b"C" or len(parts) != 5 or parts[2] not in (b"r", b"z"):
        raise FrameError(f"bad frame header {line[:80]!r}")
    if not (parts[1].isdigit() and parts[3].isdigit()) or len(parts[1]) > 18 or len(parts[3]) > 18:
        raise FrameError(f"bad frame header {line[:80]!r}")
    index, length, digest = int(parts[1]), int(parts[3]), parts[4].decode("ascii", "replace")
    want = chunks.chunk_length(m_size, chunk_size, index)  # ManifestError beyond the image
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise FrameError(f"chunk {index}: bad sha256")
    if parts[2] == b"r" and length != want:
        raise FrameError(f"chunk {index}: {length} raw bytes, the chunk has {want}")
    if length > want + want // 8 + 65536:  # zstd's worst case is far below this
        raise FrameError(f"chunk {index}: {length} bytes is too long")
    return "C", index, parts[2].decode(), length, digest


class Receiver:
    """Accepts the lanes of one capture and writes verified chunks into ``path``."""

    def __init__(self, host: str, path: str, size: int, peer_ip: str | None,
                 auth: Callable[[str], bool], chunk_size: int = chunks.CHUNK_SIZE,
                 on_chunk: Callable[[int, int], None] | None = None,
                 sink=None) -> None:  # fmt: skip
        self.sink = sink  # a storage.remotewrite.RemoteWriter (storage host), or None: ``path``
        self.path, self.size, self.peer_ip, self.chunk_size = path, size, peer_ip, chunk_size
        self.auth = auth
        self.sock = socket.create_server((host, 0), backlog=64)
        self.sock.settimeout(1.0)
        self.port = self.sock.getsockname()[1]
        self.entries: dict[int, tuple[str, str]] = {}  # index -> (sha256, enc)
        self.errors: list[str] = []
        self.refused = 0
        self.received_bytes = 0
        self.hasher: OrderedHasher | None = None
        self.on_chunk = on_chunk
        self._lanes_done: set[int] = set()
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY) if sink is None else -1
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="capture-rx", daemon=True)

    def start(self) -> Receiver:
        self._acceptor.start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, (ip, _port) = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.peer_ip and ip != self.peer_ip:
                log.warning("capture: refused a connection from %s (not the resource)", ip)
                self.refused += 1
                conn.close()
                continue
            t = threading.Thread(target=self._serve, args=(conn,), name="capture-lane",
                                 daemon=True)  # fmt: skip
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(IDLE_TIMEOUT)
        with conn, conn.makefile("rb", buffering=1 << 20) as rf:
            try:
                answer = self._lane(rf)
            except Refused as exc:
                log.warning("capture: refused a lane: %s", exc)
                answer = f"ERR {exc}"
            except (FrameError, chunks.ManifestError, ValueError, StorageError) as exc:
                answer = f"ERR {exc}"
                log.warning("capture: lane failed: %s", exc)
                with self._lock:
                    self.errors.append(str(exc))
            except (OSError, TimeoutError) as exc:
                log.info("capture: a lane's connection ended: %s", exc)
                return
            try:
                conn.sendall(answer.encode() + b"\n")
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _lane(self, rf) -> str:
        import zstandard

        token, lane, lanes = parse_hello(rf.readline(HEADER_MAX))
        if not self.auth(token):
            with self._lock:
                self.refused += 1
            raise Refused("this token may not upload to this capture")
        with self._lock:
            if self.hasher is None:
                self.hasher = OrderedHasher(self.size, self.chunk_size, lanes)
            elif self.hasher.lanes != lanes:
                raise FrameError(f"{lanes} lanes announced, the first lane said otherwise")
            hasher = self.hasher
        dctx = zstandard.ZstdDecompressor()
        sent = 0
        while True:
            line = rf.readline(HEADER_MAX)
            if not line:
                raise OSError("connection closed before the end frame")
            kind, index, enc, length, digest = parse_header(line, self.size, self.chunk_size)
            if kind == "E":
                if index != sent:
                    raise FrameError(f"end frame says {index} chunks, lane {lane} sent {sent}")
                hasher.lane_done(lane)
                with self._lock:
                    self._lanes_done.add(lane)
                return f"OK {sent}"
            body = rf.read(length)
            if len(body) != length:
                raise OSError(f"connection lost in chunk {index}")
            want = chunks.chunk_length(self.size, self.chunk_size, index)
            if enc == chunks.ZSTD:
                try:
                    body = dctx.decompress(body, max_output_size=want)
                except zstandard.ZstdError as exc:
                    raise FrameError(f"chunk {index}: zstd: {exc}")
            if len(body) != want or chunks.sha256(body) != digest:
                raise FrameError(f"chunk {index}: length or sha256 does not match")
            if self.sink is not None:  # the storage host checks the sha256 again
                self.sink.write(index * self.chunk_size, body, digest)
            else:
                os.pwrite(self._fd, body, index * self.chunk_size)
            hasher.add(lane, index, body)
            sent += 1
            with self._lock:
                self.entries[index] = (digest, enc)
                self.received_bytes += want
            if self.on_chunk:
                self.on_chunk(index, want)

    def lanes_done(self) -> int:
        with self._lock:
            return len(self._lanes_done)

    def manifest(self) -> chunks.Manifest:
        """The manifest of what was received (every chunk verified on arrival)."""
        whole = self.hasher.hexdigest() if self.hasher else None
        if whole is None:
            raise FrameError("not every lane finished: the image is incomplete")
        with self._lock:
            entries = tuple(
                chunks.ChunkEntry(i, sha, enc) for i, (sha, enc) in sorted(self.entries.items())
            )
        return chunks.Manifest(self.size, self.chunk_size, entries, whole)

    def finish(self) -> None:
        if self.sink is None:
            os.fsync(self._fd)
            return
        for i in range(chunks.chunk_count(self.size, self.chunk_size)):  # zero where nothing came
            if i not in self.entries:
                self.sink.zero(
                    i * self.chunk_size, chunks.chunk_length(self.size, self.chunk_size, i)
                )
        self.sink.finish()

    def stop(self) -> None:
        self._stop.set()
        if self.hasher is not None:
            self.hasher.close()
        try:
            self.sock.close()
        except OSError:
            pass
        for t in self._threads:
            t.join(0.5)
        try:
            if self.sink is not None:
                self.sink.close()
            else:
                os.close(self._fd)
        except OSError:
            pass
