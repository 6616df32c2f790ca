"""Tests of pxe.dns.wire: the guard that runs before dnslib parses a packet."""

from __future__ import annotations

import struct

import pytest
from dnslib import DNSRecord

from pxe.dns.wire import (
    Header,
    Verdict,
    WireError,
    check_query,
    edns_payload,
    error_reply,
    read_name,
    truncate,
    udp_limit,
)


def header(qd: int = 1, flags: int = 0x0100, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!6H", 0x1234, flags, qd, an, ns, ar)


def qname(*labels: bytes) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\0"


QTAIL = b"\x00\x01\x00\x01"
GOOD = header() + qname(b"web1", b"lab", b"test") + QTAIL
# A two-pointer loop that dnslib recurses on until RecursionError: the name
# at 12 points to 13, whose byte (13) reads as a 13-octet label ending at 27,
# where a pointer leads back to 12.
LOOP = header() + b"\xc0\x0d" + b"a" * 13 + b"\xc0\x0c" + QTAIL
SELF_POINTER = header() + b"\xc0\x0c" + QTAIL
FORWARD_POINTER = header() + b"\xc0\x20" + QTAIL + b"\0" * 32
LONG_LABEL = header() + bytes([64]) + b"a" * 64 + b"\0" + QTAIL
LONG_NAME = header() + qname(*[b"a" * 63] * 4) + QTAIL  # 4*64+1 = 257 octets

CASES = [
    # (id, packet, verdict, reason fragment)
    ("valid", GOOD, Verdict.OK, ""),
    ("valid from dnslib", DNSRecord.question("x.lab.test", "AAAA").pack(), Verdict.OK, ""),
    ("empty", b"", Verdict.DROP, "shorter"),
    ("11 octets", GOOD[:11], Verdict.DROP, "shorter"),
    ("response QR=1", header(flags=0x8100) + GOOD[12:], Verdict.DROP, "QR=1"),
    ("zero questions", header(qd=0), Verdict.FORMERR, "QDCOUNT=0"),
    ("two questions", header(qd=2) + GOOD[12:] * 2, Verdict.FORMERR, "QDCOUNT=2"),
    ("header only, qd=1", header(), Verdict.FORMERR, "past the end"),
    ("truncated label", GOOD[:16], Verdict.FORMERR, "past the end"),
    ("truncated qtype", GOOD[:-2], Verdict.FORMERR, "QTYPE"),
    ("pointer loop", LOOP, Verdict.FORMERR, "loop"),
    ("self pointer", SELF_POINTER, Verdict.FORMERR, "loop"),
    ("forward pointer", FORWARD_POINTER, Verdict.FORMERR, "forward pointer"),
    ("truncated pointer", header() + b"\xc0", Verdict.FORMERR, "truncated compression"),
    ("label > 63", LONG_LABEL, Verdict.FORMERR, "longer than 63"),
    ("name > 255", LONG_NAME, Verdict.FORMERR, "longer than 255"),
    ("missing additional RR", header(ar=1) + GOOD[12:], Verdict.FORMERR, "past the end"),
    ("truncated OPT RR", header(ar=1) + GOOD[12:] + b"\x00\x00\x29", Verdict.FORMERR, "fixed"),
    (
        "RR rdata past end",
        header(ar=1) + GOOD[12:] + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x05ab",
        Verdict.FORMERR,
        "data runs past",
    ),
    (
        "valid OPT RR",
        header(ar=1) + GOOD[12:] + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00",
        Verdict.OK,
        "",
    ),
]


@pytest.mark.parametrize(
    ("packet", "verdict", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_check_query(packet, verdict, reason):
    check = check_query(packet)
    assert check.verdict is verdict
    assert reason in check.reason


def test_dnslib_really_recurses_on_loop():
    """Why the guard exists: dnslib alone does not turn this loop into DNSError."""
    with pytest.raises(RecursionError):
        DNSRecord.parse(LOOP)


def test_read_name_follows_backward_pointer():
    packet = GOOD + b"\x03www\xc0\x0c"  # www + pointer to web1.lab.test
    labels, end = read_name(packet, len(GOOD))
    assert labels == (b"www", b"web1", b"lab", b"test")
    assert end == len(packet)


def test_read_name_exactly_255_octets():
    name = qname(*[b"a" * 63] * 3, b"a" * 61)  # 3*64 + 62 + 1 = 255
    labels, end = read_name(name, 0)
    assert len(labels) == 4 and end == 255
    with pytest.raises(WireError):
        read_name(qname(*[b"a" * 63] * 3, b"a" * 62), 0)


@pytest.mark.parametrize(("opcode_rd", "rcode"), [(0x0100, 1), (0x2000, 4), (0x0000, 5)])
def test_error_reply(opcode_rd, rcode):
    hdr = Header.parse(header(flags=opcode_rd | 0x0030))  # Z/AD bits must not leak
    reply = Header.parse(error_reply(hdr, rcode))
    assert reply.id == 0x1234
    assert reply.qr
    assert reply.rcode == rcode
    assert reply.flags & 0x7900 == opcode_rd
    assert (reply.qdcount, reply.ancount, reply.nscount, reply.arcount) == (0, 0, 0, 0)


def opt(payload: int, rdata: bytes = b"") -> bytes:
    """RFC 6891 section 6.1.2: root name, TYPE 41, CLASS = UDP payload size."""
    return b"\x00\x00\x29" + struct.pack("!HIH", payload, 0, len(rdata)) + rdata


EDNS = header(ar=1) + GOOD[12:] + opt(4096)


@pytest.mark.parametrize(
    ("packet", "payload", "limit"),
    [
        (GOOD, None, 512),
        (EDNS, 4096, 1232),  # never above the server's ceiling
        (header(ar=1) + GOOD[12:] + opt(800), 800, 800),
        (header(ar=1) + GOOD[12:] + opt(100), 100, 512),  # RFC 6891 6.2.5: < 512 is 512
        (header(ar=1) + GOOD[12:] + b"\x00\x00\x29", None, 512),  # malformed: no EDNS
        (b"", None, 512),
    ],
)
def test_edns_payload_and_udp_limit(packet, payload, limit):
    assert edns_payload(packet) == payload
    assert udp_limit(packet, 1232) == limit


def big_reply(with_opt: bool) -> bytes:
    """A response of 40 A records (compressed owner names) and maybe an OPT RR with options."""
    answers = b"".join(
        b"\xc0\x0c\x00\x01\x00\x01" + struct.pack("!IH", 60, 4) + bytes([10, 0, 0, i])
        for i in range(40)
    )
    tail = opt(4096, b"\x00\x0a\x00\x08cookie!!") if with_opt else b""
    hdr = struct.pack("!6H", 0x1234, 0x8180, 1, 40, 0, int(with_opt))
    return hdr + GOOD[12:] + answers + tail


def test_truncate_keeps_a_message_that_fits():
    reply = big_reply(False)
    assert truncate(reply, len(reply)) is reply


@pytest.mark.parametrize("with_opt", [False, True])
def test_truncate_cuts_to_header_question_and_bare_opt(with_opt):
    cut = truncate(big_reply(with_opt), 512)
    record = DNSRecord.parse(cut)
    assert record.header.id == 0x1234 and record.header.tc and record.header.qr
    assert record.header.ra and record.header.rd  # flags kept
    assert str(record.q.qname) == "web1.lab.test." and not record.rr
    if with_opt:
        (o,) = record.ar
        assert (o.rtype, o.rclass, o.rdata) == (41, 4096, [])  # options dropped
        assert len(cut) == len(GOOD) + 11
    else:
        assert cut == struct.pack("!6H", 0x1234, 0x8380, 1, 0, 0, 0) + GOOD[12:]


def test_truncate_zero_is_the_slip_reply_for_a_query():
    cut = truncate(EDNS, 0)
    assert cut == struct.pack("!6H", 0x1234, 0x8300, 1, 0, 0, 0) + GOOD[12:]  # no OPT echoed


def test_truncate_without_readable_question_is_header_only():
    assert truncate(header() + b"\xc0", 0) == struct.pack("!6H", 0x1234, 0x8300, 0, 0, 0, 0)
    with pytest.raises(WireError):
        truncate(b"\x12\x34", 0)
