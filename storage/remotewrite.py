"""Verified chunks into a volume on a storage host: the host checks every chunk's sha256.

Owns the data path of an image that lands on a storage host (import and
capture onto a ``[[storage]]`` with ``host``). One SSH exec per volume runs
:data:`WRITER` with the host's ``python3``; the server streams frames on its
stdin::

    W <offset> <length> <sha256>\\n  then <length> bytes: checked, then written at <offset>
    Z <offset> <length>\\n           that range must read as zero (zeroed if it does not)
    E\\n                             fsync; the host answers OK <frames> <bytes> <sha256|->

The host recomputes each chunk's sha256 before it writes it and stops at the
first mismatch with ``ERR …`` (the server raises it, naming the chunk). ``Z``
frames matter on a classic LV, which can hold an earlier volume's bytes
where an image has zeros: the host reads the range and writes zeros only if
something else is there (a thin LV's unallocated blocks read as zero, so
nothing is allocated). When frames arrive in offset order (an import), the
host also hashes the whole stream and answers its sha256, which the server
compares with the one it computed while reading the source.

Nothing secret travels here; the command line holds only the volume path.
"""

from __future__ import annotations

import hashlib
import shlex
import threading
from collections.abc import Callable

import paramiko

from storage.backends.base import StorageError

CHUNK = 4 << 20
HEADER_MAX = 200

#: ``python3 -c WRITER PATH`` on the storage host (stdlib only)
WRITER = r"""
import hashlib, os, sys
inp, h, nxt, ordered, frames, nbytes = sys.stdin.buffer, hashlib.sha256(), 0, True, 0, 0
def end(line, rc):
    sys.stdout.write(line + "\n"); sys.stdout.flush(); sys.exit(rc)
try:
    fd = os.open(sys.argv[1], os.O_RDWR)
except OSError as exc:
    end("ERR cannot open %s: %s" % (sys.argv[1], exc.strerror), 1)
while True:
    p = inp.readline(200).split()
    if not p:
        end("ERR the stream ended without an end frame", 1)
    if p[0] == b"E":
        os.fsync(fd)
        end("OK %d %d %s" % (frames, nbytes, h.hexdigest() if ordered else "-"), 0)
    off, n = int(p[1]), int(p[2])
    if p[0] == b"W":
        data = inp.read(n)
        if len(data) != n:
            end("ERR chunk at offset %d: %d of %d bytes arrived" % (off, len(data), n), 1)
        got = hashlib.sha256(data).hexdigest()
        if got != p[3].decode():
            end("ERR chunk at offset %d: sha256 %s here, %s sent" % (off, got, p[3].decode()), 1)
        os.pwrite(fd, data, off)
        nbytes += n
    elif p[0] == b"Z":
        data = os.pread(fd, n, off)
        if data.count(0) != len(data):
            os.pwrite(fd, bytes(n), off)
        data = bytes(n)
    else:
        end("ERR bad frame %r" % p[0], 1)
    frames += 1
    if ordered and off == nxt:
        h.update(data)
        nxt += n
    else:
        ordered = False
"""


class RemoteWriter:
    """Frames into ``path`` on the host of ``runner`` (an SshRunner); thread-safe."""

    def __init__(self, runner, path: str) -> None:
        self.runner, self.path = runner, path
        self.label = f"{runner.target.host}:{path}"
        self._lock = threading.Lock()
        self._chan = runner.open_exec(f"python3 -c {shlex.quote(WRITER)} {shlex.quote(path)}")

    def write(self, offset: int, data: bytes, sha256: str | None = None) -> None:
        digest = sha256 or hashlib.sha256(data).hexdigest()
        self._send(f"W {offset} {len(data)} {digest}\n".encode(), data)

    def zero(self, offset: int, length: int) -> None:
        self._send(f"Z {offset} {length}\n".encode(), b"")

    def _send(self, head: bytes, body: bytes) -> None:
        with self._lock:
            if self._chan.recv_ready() or self._chan.exit_status_ready():
                self._fail()
            try:
                self._chan.sendall(head)
                if body:
                    self._chan.sendall(body)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self._fail(exc)

    def finish(self) -> tuple[int, int, str | None]:
        """Fsync on the host: (frames, data bytes, sha256 of the stream if in order)."""
        with self._lock:
            try:
                self._chan.sendall(b"E\n")
                self._chan.shutdown_write()
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self._fail(exc)
            rc, out, err = self._answer(300)
        parts = out.split()
        if rc != 0 or len(parts) != 4 or parts[0] != "OK":
            raise StorageError(f"write to {self.label} failed: {(out or err).strip()[-400:]}")
        return int(parts[1]), int(parts[2]), None if parts[3] == "-" else parts[3]

    def _answer(self, timeout: float) -> tuple[int, str, str]:
        out, err = bytearray(), bytearray()
        self._chan.settimeout(timeout)
        try:
            while chunk := self._chan.recv(65536):
                out += chunk
            while self._chan.recv_stderr_ready():
                err += self._chan.recv_stderr(65536)
            rc = self._chan.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise StorageError(f"write to {self.label}: no answer from the host ({exc})")
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    def _fail(self, exc: BaseException | None = None):
        try:
            rc, out, err = self._answer(10)
            why = (out or err).strip()[-400:] or f"exit {rc}"
        except StorageError:
            why = str(exc or "the host closed the stream")
        self.close()
        raise StorageError(f"write to {self.label} failed: {why}")

    def close(self) -> None:
        self._chan.close()


def upload(
    runner,
    src: str,
    dst: str,
    size: int,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = CHUNK,
) -> str:
    """Stream ``size`` bytes of local ``src`` into ``dst`` on the host; the sha256.

    Every chunk is verified on the host before it is written; zero chunks are
    sent as ``Z`` frames. The host's sha256 of the whole stream must equal
    the one computed here while reading.
    """
    h = hashlib.sha256()
    writer = RemoteWriter(runner, dst)
    try:
        done = 0
        with open(src, "rb") as fh:
            while done < size and (buf := fh.read(min(chunk, size - done))):
                h.update(buf)
                if buf.count(0) == len(buf):
                    writer.zero(done, len(buf))
                else:
                    writer.write(done, buf)
                done += len(buf)
                if progress is not None:
                    progress(done, size)
        if done != size:
            raise StorageError(f"{src}: ended after {done} of {size} bytes")
        _, _, there = writer.finish()
    finally:
        writer.close()
    if there != h.hexdigest():
        raise StorageError(
            f"upload to {runner.target.host}:{dst}: sha256 on the host is {there or 'unknown'}, "
            f"sent {h.hexdigest()}"
        )
    return there
