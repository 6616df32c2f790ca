"""Chunked image format: fixed-size chunks, zero detection, manifests, frames.

Owns the pure (stdlib-only, no sockets) part of local deploy and capture:

* An image is cut into fixed-size chunks (``CHUNK_SIZE`` = 4 MiB; the last
  one may be shorter). A chunk of only zero bytes is a *zero chunk*: it is
  not sent, not hashed and not listed.
* A :class:`Manifest` lists, for every non-zero chunk, its index, the sha256
  of its raw bytes and its encoding on the wire (``r`` raw, ``z`` zstd —
  chosen once, when the manifest is computed: a chunk is served compressed
  only if compression saves at least 10 %), plus the image size, chunk size
  and the sha256 of the whole image (the ``dd | nc`` transport verifies
  that one). It is computed once per image and cached as JSON
  (``Image.manifest``); :meth:`Manifest.text` is the line form the agent
  reads with ``read`` in busybox sh.
* A stream frame is one header line ``C <index> <enc> <length> <sha256>``
  followed by exactly ``length`` bytes; the stream ends with ``E <count>``.
  The agent reads the header with ``read`` and the bytes with
  ``dd bs=<length> count=1 iflag=fullblock``.

:func:`scan` reads a file (or any binary file object) once, skipping holes
with ``SEEK_DATA`` where the file system has them, so an 8 GiB sparse image
with 2 GiB of data costs a 2 GiB read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

CHUNK_SIZE = 4 * 2**20
FORMAT = 1
RAW, ZSTD = "r", "z"
#: a chunk is served compressed only when compression saves at least this share
MIN_SAVING = 0.10

Compressor = Callable[[bytes], bytes]


class ManifestError(ValueError):
    """A manifest or frame that does not follow the format."""


@dataclass(frozen=True)
class ChunkEntry:
    index: int
    sha256: str
    enc: str = RAW


@dataclass(frozen=True)
class Manifest:
    size: int
    chunk_size: int = CHUNK_SIZE
    chunks: tuple[ChunkEntry, ...] = ()
    sha256: str = ""  # of the whole image (zero chunks included)
    format: int = FORMAT
    _by_index: dict[int, ChunkEntry] = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_index", {c.index: c for c in self.chunks})

    @property
    def count(self) -> int:
        """Number of chunk slots of the image (zero chunks included)."""
        return chunk_count(self.size, self.chunk_size)

    @property
    def data_bytes(self) -> int:
        """Bytes of the non-zero chunks (what the HTTP transport sends, before zstd)."""
        return sum(self.length(c.index) for c in self.chunks)

    def length(self, index: int) -> int:
        return chunk_length(self.size, self.chunk_size, index)

    def entry(self, index: int) -> ChunkEntry | None:
        return self._by_index.get(index)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "sha256": self.sha256,
            "chunks": [[c.index, c.sha256, c.enc] for c in self.chunks],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        try:
            chunks = tuple(ChunkEntry(int(i), str(h), str(e)) for i, h, e in data["chunks"])
            m = cls(
                int(data["size"]),
                int(data["chunk_size"]),
                chunks,
                str(data.get("sha256", "")),
                int(data.get("format", FORMAT)),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # inf: OverflowError
            raise ManifestError(f"manifest is malformed: {exc}") from None
        validate(m)
        return m

    def text(self) -> str:
        """Line form for the agent: a header line, then ``index sha256 enc`` per chunk."""
        head = (
            f"size={self.size} chunk_size={self.chunk_size} chunks={len(self.chunks)} "
            f"sha256={self.sha256}\n"
        )
        return head + "".join(f"{c.index} {c.sha256} {c.enc}\n" for c in self.chunks)


def chunk_count(size: int, chunk_size: int) -> int:
    return (size + chunk_size - 1) // chunk_size


def chunk_length(size: int, chunk_size: int, index: int) -> int:
    if not 0 <= index < chunk_count(size, chunk_size):
        raise ManifestError(f"chunk {index} is outside an image of {size} bytes")
    return min(chunk_size, size - index * chunk_size)


def is_zero(data: bytes | memoryview, _zeros: dict[int, bytes] = {}) -> bool:  # noqa: B006
    """True when ``data`` holds only zero bytes (a memcmp against a cached zero block)."""
    n = len(data)
    z = _zeros.get(n)
    if z is None:
        z = _zeros.setdefault(n, bytes(n)) if n <= CHUNK_SIZE else bytes(n)
    return data == z


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def choose_encoding(data: bytes, compress: Compressor | None) -> str:
    if compress is None:
        return RAW
    return ZSTD if len(compress(data)) <= len(data) * (1 - MIN_SAVING) else RAW


def validate(m: Manifest) -> None:
    if m.format != FORMAT:
        raise ManifestError(f"manifest format {m.format} is not {FORMAT}")
    if m.size < 0 or m.chunk_size <= 0 or m.chunk_size % 512:
        raise ManifestError(f"bad size {m.size} or chunk size {m.chunk_size}")
    last = -1
    for c in m.chunks:
        if c.index <= last or c.index >= m.count:
            raise ManifestError(f"chunk index {c.index} out of order or beyond the image")
        if len(c.sha256) != 64 or c.enc not in (RAW, ZSTD):
            raise ManifestError(f"chunk {c.index}: bad sha256 or encoding {c.enc!r}")
        last = c.index


def _data_ranges(fh: BinaryIO, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges that may hold data; holes skipped when the FS says so."""
    try:
        fd = fh.fileno()
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                return
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            yield start, end
            pos = end
    except (AttributeError, OSError, ValueError):
        yield 0, size


def _chunk_indices(fh: BinaryIO, size: int, chunk_size: int) -> Iterator[int]:
    seen = -1
    for start, end in _data_ranges(fh, size):
        for index in range(start // chunk_size, chunk_count(end, chunk_size)):
            if index > seen:
                seen = index
                yield index


def scan(
    fh: BinaryIO,
    size: int,
    chunk_size: int = CHUNK_SIZE,
    compress: Compressor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Read an image once and build its manifest (whole-image sha256 included)."""
    whole = hashlib.sha256()
    entries: list[ChunkEntry] = []
    next_index = 0
    for index in _chunk_indices(fh, size, chunk_size):
        _hash_zeros(whole, (index - next_index) * chunk_size)
        length = chunk_length(size, chunk_size, index)
        fh.seek(index * chunk_size)
        data = fh.read(length).ljust(length, b"\0")
        whole.update(data)
        if not is_zero(data):
            entries.append(ChunkEntry(index, sha256(data), choose_encoding(data, compress)))
        next_index = index + 1
        if progress:
            progress(index * chunk_size + length, size)
    _hash_zeros(whole, size - min(size, next_index * chunk_size))
    return Manifest(size, chunk_size, tuple(entries), whole.hexdigest())


def _hash_zeros(h: Any, n: int) -> None:
    block = bytes(min(n, CHUNK_SIZE))
    while n > 0:
        h.update(block[: min(n, len(block))])
        n -= len(block)


def frame_header(index: int, enc: str, length: int, digest: str) -> bytes:
    return f"C {index} {enc} {length} {digest}\n".encode()


def end_frame(count: int) -> bytes:
    return f"E {count}\n".encode()


def select(m: Manifest, start: int = 0, step: int = 1) -> list[ChunkEntry]:
    """Chunks at list positions start, start+step, ... (the share of one agent worker)."""
    if start < 0 or step < 1:
        raise ManifestError(f"bad selection start={start} step={step}")
    return list(m.chunks[start::step])


def parse_frames(data: bytes) -> Iterator[tuple[int, str, str, bytes]]:
    """Decode a whole framed stream (tests and tools): (index, enc, sha256, payload).

    Strict: anything but ``C <index> <enc> <length> <sha256>`` headers with
    exactly ``length`` payload bytes, ended by ``E <count>`` with the right
    count and nothing after it, raises :class:`ManifestError` (and nothing else).
    """
    pos, count = 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise ManifestError(f"frame header at byte {pos} has no newline (stream cut short?)")
        header = data[pos:nl]
        parts = header.split(b" ")
        pos = nl + 1
        if parts[0] == b"E" and len(parts) == 2:
            if _decimal(parts[1], "end frame count") != count:
                raise ManifestError(f"end frame says {parts[1]!r} chunks, the stream had {count}")
            if pos != len(data):
                raise ManifestError(f"{len(data) - pos} bytes after the end frame")
            return
        if parts[0] != b"C" or len(parts) != 5 or parts[2] not in (b"r", b"z"):
            raise ManifestError(f"bad frame header {header[:80]!r}")
        index, length = _decimal(parts[1], "chunk index"), _decimal(parts[3], "frame length")
        if len(parts[4]) != 64 or not parts[4].isalnum():
            raise ManifestError(f"chunk {index}: bad sha256 {parts[4][:80]!r}")
        if pos + length > len(data):
            raise ManifestError(
                f"chunk {index}: {length} payload bytes announced, stream cut short"
            )
        yield index, parts[2].decode(), parts[4].decode(), data[pos : pos + length]
        pos += length
        count += 1
    raise ManifestError("stream ended without its end frame")


def _decimal(field: bytes, what: str) -> int:
    """ASCII digits only (``bytes.isdigit``), at most 19 of them."""
    if not field.isdigit() or len(field) > 19:
        raise ManifestError(f"{what} {field[:40]!r} is not a decimal number")
    return int(field)
