"""The ``tcp`` capture transport: long-lived framed uploads, one TCP connection per agent worker.

Owns the server side of a capture's data path when the agent sends its disk
over plain TCP (``nc SERVER PORT``) instead of one HTTP PUT per chunk, and
the pure wire checks that go with it (:func:`parse_hello`, :func:`parse_header`).

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
volume once. The manifest (every chunk's sha256) is complete when every lane
has sent its end frame. The sha256 of the whole raw image is *not* computed
here: it was one thread hashing every byte, zero runs included, and it held
the capture's end back on a loaded machine; :mod:`provisiond.imagedigest`
computes it after the image is ready.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

from provisiond import chunks, logs
from storage.backends.base import StorageError

log = logs.get("capture")
HEADER_MAX = 200
IDLE_TIMEOUT = 120.0


class FrameError(ValueError):
    """A frame or hello line that does not follow the wire format."""


class Refused(FrameError):
    """A hello with a token that may not upload here (not counted as a capture error)."""


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
        self.lanes: int | None = None  # as the first hello announced
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
            if self.lanes is None:
                self.lanes = lanes
            elif self.lanes != lanes:
                raise FrameError(f"{lanes} lanes announced, the first lane said otherwise")
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
        """The manifest of what was received (every chunk verified on arrival).

        Its whole-image ``sha256`` is empty: :mod:`provisiond.imagedigest`
        fills it in after the image is ready.
        """
        with self._lock:
            if self.lanes is None or len(self._lanes_done) < self.lanes:
                done = len(self._lanes_done)
                raise FrameError(
                    f"{done} of {self.lanes or '?'} lanes finished: the image is incomplete"
                )
            entries = tuple(
                chunks.ChunkEntry(i, sha, enc) for i, (sha, enc) in sorted(self.entries.items())
            )
        return chunks.Manifest(self.size, self.chunk_size, entries, "")

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
