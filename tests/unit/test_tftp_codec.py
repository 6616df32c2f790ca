"""Unit tests of pxe.tftp.codec: packet round trips, negotiation, names, blocks."""

from __future__ import annotations

import pytest

from pxe.tftp.codec import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Limits,
    MalformedPacket,
    Opcode,
    OptionAck,
    Params,
    PathRefused,
    Request,
    absolute_block,
    clean_filename,
    negotiate,
    parse,
    to_netascii,
)

# --------------------------------------------------------------------------- packets

GOLDEN = [
    (Request(Opcode.RRQ, "undionly.kpxe", "octet"), b"\0\x01undionly.kpxe\0octet\0"),
    (
        Request(Opcode.RRQ, "a", "octet", (("blksize", "1428"), ("tsize", "0"))),
        b"\0\x01a\0octet\0blksize\x001428\0tsize\x000\0",
    ),
    (Request(Opcode.WRQ, "up", "netascii"), b"\0\x02up\0netascii\0"),
    (Data(1, b"hello"), b"\0\x03\0\x01hello"),
    (Data(65535, b""), b"\0\x03\xff\xff"),
    (Ack(0), b"\0\x04\0\0"),
    (Ack(258), b"\0\x04\x01\x02"),
    (Error(ErrorCode.ACCESS_VIOLATION, "read-only"), b"\0\x05\0\x02read-only\0"),
    (Error(ErrorCode.UNKNOWN_TID, ""), b"\0\x05\0\x05\0"),
    (
        OptionAck((("blksize", "1428"), ("windowsize", "16"))),
        b"\0\x06blksize\x001428\0windowsize\x0016\0",
    ),
]


@pytest.mark.parametrize(("packet", "wire"), GOLDEN)
def test_golden_pack_and_parse(packet, wire):
    assert packet.pack() == wire
    assert parse(wire) == packet


def test_data_block_number_wraps_on_the_wire():
    assert Data(65536, b"x").pack() == b"\0\x03\0\0x"
    assert Data(65537, b"x").pack() == b"\0\x03\0\x01x"


def test_request_mode_and_option_names_are_case_insensitive():
    req = parse(b"\0\x01F\0OCTET\0BlkSize\x00512\0")
    assert req == Request(Opcode.RRQ, "F", "octet", (("blksize", "512"),))


def test_error_without_trailing_nul_is_tolerated():
    assert parse(b"\0\x05\0\x01gone") == Error(1, "gone")
    assert parse(b"\0\x05\0\x08") == Error(8, "")


MALFORMED = [
    (b"", "no opcode"),
    (b"\0", "no opcode"),
    (b"\0\x09abc", "unknown opcode"),
    (b"\0\x05\0", "3-byte ERROR"),
    (b"\0\x04\0", "3-byte ACK"),
    (b"\0\x03", "DATA without block"),
    (b"\0\x01undionly.kpxe", "truncated RRQ (no NUL)"),
    (b"\0\x01undionly.kpxe\0", "RRQ missing mode"),
    (b"\0\x01undionly.kpxe\0oct", "RRQ mode truncated"),
    (b"\0\x01\0octet\0", "empty file name"),
    (b"\0\x01f\0octet\0blksize\0", "option without value"),
    (b"\0\x01\xff\xfe\0octet\0", "file name not UTF-8"),
    (b"\0\x06blksize\0", "OACK option without value"),
]


@pytest.mark.parametrize(("wire", "why"), MALFORMED, ids=[w for _, w in MALFORMED])
def test_malformed_packets_raise(wire, why):
    with pytest.raises(MalformedPacket):
        parse(wire)


def test_unknown_mode_parses_and_is_left_to_the_server():
    # "mail" / "binary" are not malformed packets; the server answers ERROR 4.
    assert parse(b"\0\x01f\0mail\0").mode == "mail"


# --------------------------------------------------------------------------- negotiation

LIM = Limits(max_blksize=65464, max_windowsize=64, default_timeout=1.0)

NEGOTIATION = [
    # (requested options, file size, expected params, expected OACK)
    ((), 100, Params(512, 1.0, 1), ()),
    ((("blksize", "1428"),), 100, Params(1428, 1.0, 1), (("blksize", "1428"),)),
    ((("blksize", "8"),), 100, Params(8, 1.0, 1), (("blksize", "8"),)),
    ((("blksize", "65464"),), 100, Params(65464, 1.0, 1), (("blksize", "65464"),)),
    ((("blksize", "0"),), 100, Params(512, 1.0, 1), ()),
    ((("blksize", "1"),), 100, Params(512, 1.0, 1), ()),
    ((("blksize", "7"),), 100, Params(512, 1.0, 1), ()),
    ((("blksize", "65465"),), 100, Params(512, 1.0, 1), ()),
    ((("blksize", "65536"),), 100, Params(512, 1.0, 1), ()),
    ((("blksize", "-1"),), 100, Params(512, 1.0, 1), ()),
    ((("blksize", "1e3"),), 100, Params(512, 1.0, 1), ()),
    ((("blksize", " 512"),), 100, Params(512, 1.0, 1), ()),
    ((("blksize", "9" * 40),), 100, Params(512, 1.0, 1), ()),
    ((("tsize", "0"),), 74213, Params(), (("tsize", "74213"),)),
    ((("tsize", "0"),), None, Params(), ()),
    ((("tsize", "x"),), 5, Params(), ()),
    ((("timeout", "3"),), 1, Params(512, 3.0, 1), (("timeout", "3"),)),
    ((("timeout", "255"),), 1, Params(512, 255.0, 1), (("timeout", "255"),)),
    ((("timeout", "0"),), 1, Params(), ()),
    ((("timeout", "256"),), 1, Params(), ()),
    ((("timeout", "999999999"),), 1, Params(), ()),
    ((("windowsize", "16"),), 1, Params(512, 1.0, 16), (("windowsize", "16"),)),
    ((("windowsize", "1000"),), 1, Params(512, 1.0, 64), (("windowsize", "64"),)),
    ((("windowsize", "0"),), 1, Params(), ()),
    ((("windowsize", "65536"),), 1, Params(), ()),
    ((("multicast", ""), ("foo", "1")), 1, Params(), ()),
    ((("blksize", "1024"), ("blksize", "2048")), 1, Params(1024, 1.0, 1), (("blksize", "1024"),)),
    (
        (("tsize", "0"), ("blksize", "1428"), ("windowsize", "16"), ("timeout", "2")),
        850528,
        Params(1428, 2.0, 16),
        (("tsize", "850528"), ("blksize", "1428"), ("windowsize", "16"), ("timeout", "2")),
    ),
]


@pytest.mark.parametrize(("requested", "size", "params", "oack"), NEGOTIATION)
def test_negotiate(requested, size, params, oack):
    assert negotiate(requested, size, LIM) == (params, oack)


def test_negotiate_respects_server_blksize_cap():
    params, oack = negotiate((("blksize", "9000"),), 1, Limits(max_blksize=1468))
    assert params.blksize == 1468 and oack == (("blksize", "1468"),)


# --------------------------------------------------------------------------- file names

NAMES = [
    ("undionly.kpxe", "undionly.kpxe"),
    ("/undionly.kpxe", "undionly.kpxe"),
    ("//x//y/", "x/y"),
    ("./efi/./ipxe.efi", "efi/ipxe.efi"),
    ("efi\\ipxe.efi", "efi/ipxe.efi"),
    ("/etc/passwd", "etc/passwd"),  # inside the root, never the host's file
    ("C:\\boot\\x", "C:/boot/x"),
    ("a..b", "a..b"),
]


@pytest.mark.parametrize(("name", "clean"), NAMES)
def test_clean_filename(name, clean):
    assert clean_filename(name) == clean


REFUSED = ["../etc/passwd", "..\\..\\", "a/../../b", "/..", "..", "", "/", ".", "a\0b"]


@pytest.mark.parametrize("name", REFUSED)
def test_clean_filename_refuses(name):
    with pytest.raises(PathRefused):
        clean_filename(name)


# --------------------------------------------------------------------------- blocks

BLOCKS = [
    # (wire ACK, acked, sent, absolute or None)
    (1, 0, 1, 1),
    (0, 0, 1, None),  # duplicate ACK 0 after DATA 1 went out
    (5, 2, 10, 5),  # windowed: partial ACK inside the window
    (10, 2, 10, 10),
    (2, 2, 10, None),  # duplicate of the last ACK: no retransmission (apprentice)
    (11, 2, 10, None),  # future block
    (0, 65535, 65536, 65536),  # rollover to 0
    (65535, 65534, 65537, 65535),
    (1, 65535, 65537, 65537),
    (65535, 65536, 65540, None),  # old ACK from before the wrap
    (3, 131072, 131075, 131075),  # second rollover
]


@pytest.mark.parametrize(("wire", "acked", "sent", "want"), BLOCKS)
def test_absolute_block(wire, acked, sent, want):
    assert absolute_block(wire, acked, sent) == want


def test_netascii_conversion():
    assert to_netascii(b"a\nb\rc\r\n") == b"a\r\nb\r\0c\r\0\r\n"
