"""Pure chunk format: zero detection, manifests (scan, JSON, text), frames."""

from __future__ import annotations

import hashlib
import io
import os
import zlib

import pytest

from provisiond import chunks
from provisiond.chunks import ChunkEntry, Manifest, ManifestError

CS = 4096


def _image(*parts: tuple[int, bytes], size: int) -> bytes:
    buf = bytearray(size)
    for off, data in parts:
        buf[off : off + len(data)] = data
    return bytes(buf)


@pytest.mark.parametrize(
    "data, zero",
    [(b"", True), (bytes(CS), True), (bytes(CS - 1) + b"\1", False), (b"\1" + bytes(10), False)],
)
def test_is_zero(data, zero):
    assert chunks.is_zero(data) is zero


@pytest.mark.parametrize(
    "size, index, length",
    [(10 * CS, 0, CS), (10 * CS, 9, CS), (10 * CS + 512, 10, 512), (CS, 0, CS)],
)
def test_chunk_length(size, index, length):
    assert chunks.chunk_length(size, CS, index) == length


@pytest.mark.parametrize("size, index", [(CS, 1), (CS, -1), (0, 0)])
def test_chunk_length_outside(size, index):
    with pytest.raises(ManifestError):
        chunks.chunk_length(size, CS, index)


def test_scan_skips_zero_chunks_and_hashes_the_whole_image():
    rand = os.urandom(CS)
    img = _image((CS, rand), (5 * CS + 7, b"x"), size=8 * CS + 512)
    m = chunks.scan(io.BytesIO(img), len(img), CS)
    assert [c.index for c in m.chunks] == [1, 5]
    assert m.chunks[0].sha256 == hashlib.sha256(rand).hexdigest()
    assert m.sha256 == hashlib.sha256(img).hexdigest()
    assert m.count == 9 and m.data_bytes == 2 * CS


def test_scan_of_a_sparse_file_uses_holes(tmp_path):
    p = tmp_path / "sparse.raw"
    with open(p, "wb") as fh:
        fh.truncate(64 * 2**20)
        fh.seek(40 * 2**20 + 100)
        fh.write(b"DATA")
    with open(p, "rb") as fh:
        m = chunks.scan(fh, 64 * 2**20)
    assert [c.index for c in m.chunks] == [10]
    assert m.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_encoding_follows_compressibility():
    text = b"hello world " * 400
    compress = zlib.compress
    img = _image((0, text[:CS]), (CS, os.urandom(CS)), size=2 * CS)
    m = chunks.scan(io.BytesIO(img), len(img), CS, compress=compress)
    assert [c.enc for c in m.chunks] == [chunks.ZSTD, chunks.RAW]


def test_manifest_json_round_trip_and_text():
    m = Manifest(3 * CS, CS, (ChunkEntry(0, "a" * 64), ChunkEntry(2, "b" * 64, "z")), "c" * 64)
    assert Manifest.from_json(m.to_json()) == m
    lines = m.text().splitlines()
    assert lines[0] == f"size={3 * CS} chunk_size={CS} chunks=2 sha256={'c' * 64}"
    assert lines[1:] == [f"0 {'a' * 64} r", f"2 {'b' * 64} z"]


@pytest.mark.parametrize(
    "data",
    [
        {"size": CS, "chunk_size": CS, "chunks": [[1, "a" * 64, "r"]]},  # beyond the image
        {"size": 2 * CS, "chunk_size": CS, "chunks": [[1, "a" * 64, "r"], [0, "a" * 64, "r"]]},
        {"size": CS, "chunk_size": CS, "chunks": [[0, "short", "r"]]},
        {"size": CS, "chunk_size": CS, "chunks": [[0, "a" * 64, "x"]]},
        {"size": CS, "chunk_size": 1000, "chunks": []},
        {"size": CS, "chunks": []},
        {"size": CS, "chunk_size": CS, "chunks": [], "format": 9},
    ],
)
def test_bad_manifests_are_refused(data):
    with pytest.raises(ManifestError):
        Manifest.from_json(data)


@pytest.mark.parametrize(
    "start, step, want",
    [(0, 1, [0, 1, 2, 3]), (0, 2, [0, 2]), (1, 2, [1, 3]), (3, 4, [3]), (5, 1, [])],
)
def test_select_is_one_workers_share(start, step, want):
    m = Manifest(4 * CS, CS, tuple(ChunkEntry(i, f"{i:064x}") for i in range(4)))
    assert [c.index for c in chunks.select(m, start, step)] == want


def test_frames_round_trip():
    payloads = [(3, "r", b"abc\n\nC x"), (7, "z", b"")]
    blob = b"".join(chunks.frame_header(i, e, len(p), "f" * 64) + p for i, e, p in payloads)
    out = list(chunks.parse_frames(blob + chunks.end_frame(2)))
    assert [(i, e, p) for i, e, _s, p in out] == payloads
    with pytest.raises(ManifestError):
        list(chunks.parse_frames(blob))
