"""provisiond.capturerx: whole-image sha256 from out-of-order lanes, wire header checks."""

from __future__ import annotations

import hashlib
import os
import random
import threading

import pytest

from provisiond import capturerx
from provisiond.capturerx import FrameError, OrderedHasher

CS = 4096


def _image(n_chunks: int, tail: int, data_every: int, seed: int) -> tuple[bytes, list[int]]:
    rnd = random.Random(seed)
    size = n_chunks * CS - (CS - tail if tail else 0)
    img = bytearray(size)
    used = []
    for i in range(0, n_chunks, data_every):
        end = min(size, (i + 1) * CS)
        img[i * CS : end] = rnd.randbytes(end - i * CS)
        used.append(i)
    return bytes(img), used


@pytest.mark.parametrize(
    "n_chunks,tail,every,lanes,limit",
    [
        (1, 0, 1, 1, 10 * CS),  # one chunk, one lane
        (10, 0, 3, 2, 10 * CS),  # zero runs between data chunks
        (17, 100, 1, 3, 2 * CS),  # short tail, every chunk data, tight buffer
        (40, 0, 7, 5, CS),  # more lanes than helpful; buffer of one chunk
        (9, 512, 4, 4, 3 * CS),  # the tail chunk is a zero chunk
        (30, 0, 100, 3, 10 * CS),  # only chunk 0 holds data: lanes 1, 2 send nothing
    ],
)
def test_threads_on_lanes_give_the_whole_image_sha256(n_chunks, tail, every, lanes, limit):
    img, used = _image(n_chunks, tail, every, seed=n_chunks)
    h = OrderedHasher(len(img), CS, lanes, limit=limit)

    def lane(w: int) -> None:
        for i in used[w::lanes]:
            h.add(w, i, img[i * CS : (i + 1) * CS], timeout=10)
        h.lane_done(w)

    threads = [threading.Thread(target=lane, args=(w,)) for w in reversed(range(lanes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert h.hexdigest() == hashlib.sha256(img).hexdigest()


def test_unfinished_lane_gives_no_digest_and_a_resend_is_ignored():
    img, _ = _image(4, 0, 1, seed=1)
    h = OrderedHasher(len(img), CS, 2)
    h.add(0, 0, img[:CS])
    h.add(0, 0, img[:CS])  # a retried lane sends chunk 0 again
    h.lane_done(0)
    assert h.hexdigest() is None  # lane 1 has not ended
    h.add(1, 1, img[CS : 2 * CS])
    h.add(1, 3, img[3 * CS :])
    h.lane_done(1)
    assert h.hexdigest() == hashlib.sha256(img[: 2 * CS] + bytes(CS) + img[3 * CS :]).hexdigest()


def test_a_lane_that_waits_too_long_times_out():
    h = OrderedHasher(8 * CS, CS, 2, limit=CS)
    h.add(0, 5, os.urandom(CS))  # held: lane 1 has not started
    with pytest.raises(TimeoutError):
        h.add(0, 6, os.urandom(CS), timeout=0.2)


SHA = "ab" * 32


@pytest.mark.parametrize(
    "line,want",
    [
        (b"E 3\n", ("E", 3, "", 0, "")),
        (f"C 0 r {CS} {SHA}\n".encode(), ("C", 0, "r", CS, SHA)),
        (f"C 2 r 100 {SHA}\n".encode(), ("C", 2, "r", 100, SHA)),  # the short tail
        (f"C 1 z 17 {SHA}\n".encode(), ("C", 1, "z", 17, SHA)),
    ],
)
def test_good_headers(line, want):
    assert capturerx.parse_header(line, 2 * CS + 100, CS) == want


@pytest.mark.parametrize(
    "line",
    [
        b"X 1\n",
        b"E -1\n",
        f"C 0 r 100 {SHA}\n".encode(),  # raw length is not the chunk's
        f"C 3 r {CS} {SHA}\n".encode(),  # beyond the image
        f"C 0 q {CS} {SHA}\n".encode(),  # unknown encoding
        f"C 0 z 999999 {SHA}\n".encode(),  # longer than any zstd of a chunk
        f"C 0 r {CS} {SHA.upper()}\n".encode(),
        f"C 0 r {CS} {SHA[:-1]}\n".encode(),
        f"C x r {CS} {SHA}\n".encode(),
        f"C 0 r {CS}\n".encode(),
        b"C 99999999999999999999999 r 1 " + SHA.encode() + b"\n",
    ],
)
def test_bad_headers_raise_frame_errors(line):
    with pytest.raises(ValueError):  # FrameError, or ManifestError beyond the image
        capturerx.parse_header(line, 2 * CS + 100, CS)


@pytest.mark.parametrize(
    "line,ok",
    [
        (b"P tok 0 2\n", True),
        (b"P tok 1 1\n", False),
        (b"P tok 0 65\n", False),
        (b"P tok\n", False),
        (b"Q tok 0 1\n", False),
        (b"P tok -1 2\n", False),
    ],
)
def test_hello(line, ok):
    if ok:
        assert capturerx.parse_hello(line) == ("tok", 0, 2)
    else:
        with pytest.raises(FrameError):
            capturerx.parse_hello(line)
