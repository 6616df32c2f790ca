"""provisiond.capturerx: wire header checks; a manifest only when every lane has ended."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from provisiond import capturerx
from provisiond.capturerx import FrameError

CS = 4096


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


def _lane(port: int, lane: int, lanes: int, frames: list[tuple[int, bytes, str]]) -> str:
    """Send one lane over a real connection; the server's answer line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(f"P tok {lane} {lanes}\n".encode())
        for index, body, digest in frames:
            c.sendall(f"C {index} r {len(body)} {digest}\n".encode() + body)
        c.sendall(f"E {len(frames)}\n".encode())
        c.shutdown(socket.SHUT_WR)
        return c.makefile("rb").readline().decode().strip()


@pytest.mark.parametrize(
    "tamper,answers,complete",
    [
        (None, ["OK 2", "OK 1"], True),
        ("chunk", ["ERR chunk 2: length or sha256 does not match", "OK 1"], False),
    ],
)
def test_receiver_lists_verified_chunks_once_every_lane_ended(tmp_path, tamper, answers, complete):
    size = 4 * CS + 100
    img = bytearray(size)
    for i in (0, 2, 4):  # chunks 1 and 3 are zero: not sent
        img[i * CS : (i + 1) * CS] = os.urandom(min(CS, size - i * CS))
    vol = tmp_path / "vol"
    vol.write_bytes(bytes(size))
    rx = capturerx.Receiver("127.0.0.1", str(vol), size, "127.0.0.1", lambda t: t == "tok",
                            chunk_size=CS).start()  # fmt: skip
    try:

        def frame(i: int) -> tuple[int, bytes, str]:
            body = bytes(img[i * CS : (i + 1) * CS])
            digest = hashlib.sha256(body).hexdigest()
            if tamper == "chunk" and i == 2:
                body = b"\x01" + body[1:]  # the bytes changed after the agent hashed them
            return i, body, digest

        assert _lane(rx.port, 0, 2, [frame(0), frame(2)]) == answers[0]
        with pytest.raises(FrameError):  # lane 1 has not ended: no manifest yet
            rx.manifest()
        assert _lane(rx.port, 1, 2, [frame(4)]) == answers[1]
        if not complete:
            with pytest.raises(FrameError):
                rx.manifest()
            return
        rx.finish()
        m = rx.manifest()
        assert [(c.index, c.sha256) for c in m.chunks] == [
            (i, hashlib.sha256(img[i * CS : (i + 1) * CS]).hexdigest()) for i in (0, 2, 4)
        ]
        assert m.sha256 == ""  # the whole sha256 comes later (provisiond.imagedigest)
        assert vol.read_bytes() == bytes(img)
    finally:
        rx.stop()
