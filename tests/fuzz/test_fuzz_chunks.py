"""Property-based fuzzing of the chunk-stream framing and the image manifest.

Properties:
- ``parse_frames`` of any bytes yields frames or raises :class:`ManifestError`,
  nothing else, and never yields a payload shorter than its header says;
- frames built with ``frame_header`` / ``end_frame`` parse back to what was framed;
- ``Manifest.from_json`` of any JSON value returns a valid manifest or raises
  :class:`ManifestError`; ``from_json(to_json(m)) == m``;
- ``select`` raises only :class:`ManifestError` and returns the manifest's chunks.
"""

from __future__ import annotations

import hashlib

from hypothesis import example, given
from hypothesis import strategies as st

from provisiond.chunks import (
    RAW,
    ZSTD,
    ChunkEntry,
    Manifest,
    ManifestError,
    end_frame,
    frame_header,
    parse_frames,
    select,
)
from tests.fuzz.tally import tried

DIGEST = st.binary(min_size=1, max_size=8).map(lambda b: hashlib.sha256(b).hexdigest())
FRAMES = st.lists(
    st.tuples(st.integers(0, 10**6), st.sampled_from([RAW, ZSTD]), DIGEST, st.binary(max_size=64)),
    max_size=6,
)


def framed(frames) -> bytes:
    body = b"".join(frame_header(i, e, len(p), d) + p for i, e, d, p in frames)
    return body + end_frame(len(frames))


@st.composite
def near_valid_stream(draw) -> bytes:
    """Real frames, then one cut, flipped or inserted byte somewhere."""
    data = bytearray(framed(draw(FRAMES)))
    where = draw(st.integers(0, len(data)))
    action = draw(st.sampled_from(["cut", "flip", "insert"]))
    if action == "cut":
        return bytes(data[:where])
    if action == "flip" and where < len(data):
        data[where] = draw(st.integers(0, 255))
    else:
        data[where:where] = draw(st.sampled_from([b"\n", b" ", b"-", b"\xff", b"9" * 30]))
    return bytes(data)


STREAMS = st.one_of(st.binary(max_size=300), near_valid_stream())


@given(STREAMS)
# found by this fuzzer (UnicodeDecodeError, IndexError, ValueError escaped parse_frames):
@example(b"\x80\n")
@example(b"\n")
@example(b"\x00")
@example(frame_header(1, RAW, 10, "f" * 64) + b"abc")  # payload cut short
@example(end_frame(0) + b"C")  # bytes after the end frame
def test_parse_frames_raises_only_manifest_error(data):
    tried("chunks.parse_frames")
    try:
        frames = list(parse_frames(data))
    except ManifestError:
        return
    again = framed(frames)  # what parsed is a stream in its own right, no longer than data
    assert list(parse_frames(again)) == frames and len(again) <= len(data)


@given(FRAMES)
def test_frames_round_trip(frames):
    tried("chunks.frames_round_trip")
    assert list(parse_frames(framed(frames))) == [(i, e, d, p) for i, e, d, p in frames]


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
VALUE = st.one_of(st.integers(-5, 2**40), st.floats(), st.text(max_size=6), st.none(), JSON)


@st.composite
def manifest_like(draw):
    chunk = st.lists(st.one_of(st.integers(-2, 40), DIGEST, st.sampled_from([RAW, ZSTD]), VALUE),
                     min_size=0, max_size=4)  # fmt: skip
    keys = {
        "format": st.one_of(st.just(1), VALUE),
        "size": st.one_of(st.integers(0, 10**9), VALUE),
        "chunk_size": st.one_of(st.sampled_from([512, 4 * 2**20]), VALUE),
        "sha256": st.one_of(DIGEST, VALUE),
        "chunks": st.one_of(st.lists(chunk, max_size=4), VALUE),
    }
    return {k: draw(v) for k, v in keys.items() if draw(st.integers(0, 9))}


@given(st.one_of(JSON, manifest_like()))
@example({"size": float("inf"), "chunks": []})  # found by the long run: OverflowError escaped
def test_manifest_from_json_raises_only_manifest_error(data):
    tried("chunks.manifest_from_json")
    try:
        m = Manifest.from_json(data)
    except ManifestError:
        return
    assert Manifest.from_json(m.to_json()) == m


@st.composite
def manifests(draw) -> Manifest:
    chunk_size = draw(st.sampled_from([512, 4096, 4 * 2**20]))
    size = draw(st.integers(0, 50 * chunk_size))
    count = (size + chunk_size - 1) // chunk_size
    indices = sorted(draw(st.sets(st.integers(0, max(count - 1, 0)), max_size=min(count, 8))))
    chunks = tuple(ChunkEntry(i, draw(DIGEST), draw(st.sampled_from([RAW, ZSTD]))) for i in indices)
    return Manifest(size, chunk_size, chunks, draw(DIGEST))


@given(manifests(), st.integers(-3, 20), st.integers(-3, 70))
def test_manifest_round_trip_and_select(m, start, step):
    tried("chunks.manifest_round_trip")
    assert Manifest.from_json(m.to_json()) == m
    try:
        chosen = select(m, start, step)
    except ManifestError:
        assert start < 0 or step < 1
        return
    assert set(chosen) <= set(m.chunks)
