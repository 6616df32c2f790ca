"""DNS wire-format guard: decide whether a datagram is a query we may parse.

Owns the checks that run *before* dnslib sees a packet (standard library only,
no sockets): the 12-octet header (RFC 1035 section 4.1.1), the question and
resource-record names with their compression pointers (section 4.1.4), label
and name length limits (section 2.3.4: labels <= 63 octets, names <= 255),
and the verdict the server acts on: OK, FORMERR (the header is readable, so
the client gets an answer) or DROP (nothing sensible to answer, e.g. too
short, or a response with QR=1 that must never be answered, lest two servers
ping-pong). It also builds header-only error replies, reads the EDNS(0)
UDP payload size a query offers (RFC 6891 section 6.2.3) and cuts a message
that does not fit a UDP reply down to header + question with TC=1
(RFC 1035 section 4.2.1, RFC 2181 section 9, RFC 6891 section 7).

dnslib's own name decoder recurses on every pointer and only catches a
pointer that points at itself: a two-pointer cycle ends in RecursionError,
and it accepts label lengths 64..191 (the reserved 0x40/0x80 label types).
:func:`read_name` rejects both, so a hostile packet never reaches dnslib.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER_LEN = 12
MAX_LABEL = 63  # RFC 1035 section 2.3.4
MAX_NAME = 255  # RFC 1035 section 2.3.4, octets on the wire including length bytes
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
TYPE_OPT = 41  # RFC 6891 section 6.1.1
MIN_UDP = 512  # RFC 1035 section 4.2.1: the size every client accepts
FLAG_QR, FLAG_TC = 0x8000, 0x0200


class WireError(ValueError):
    """The peer sent something that is not valid DNS wire format."""


@dataclass(frozen=True)
class Header:
    """RFC 1035 section 4.1.1 header."""

    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    @classmethod
    def parse(cls, data: bytes) -> Header | None:
        if len(data) < HEADER_LEN:
            return None
        return cls(*struct.unpack_from("!6H", data))

    @property
    def qr(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def tc(self) -> bool:
        return bool(self.flags & 0x0200)

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


class Verdict(enum.Enum):
    OK = "ok"
    FORMERR = "formerr"
    DROP = "drop"


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    reason: str = ""
    header: Header | None = None


def read_name(data: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """Decode the name at ``offset``; return (labels, offset after the name).

    RFC 1035 section 4.1.4: a pointer (two top bits set) refers to a *prior*
    occurrence, so every pointer must point strictly backwards and no target
    may be visited twice (a loop). Top bits 01/10 are reserved label types,
    i.e. a "label longer than 63" (section 2.3.4 / RFC 6891 section 5).
    """
    labels: list[bytes] = []
    size, pos, end, seen = 1, offset, None, set()
    while True:
        if pos >= len(data):
            raise WireError("name runs past the end of the message")
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise WireError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= pos or target in seen:
                raise WireError(f"compression pointer loop or forward pointer at {pos}")
            seen.add(target)
            end = pos + 2 if end is None else end
            pos = target
            continue
        if length & 0xC0:
            raise WireError(f"label longer than {MAX_LABEL} octets (length byte {length:#04x})")
        if length == 0:
            return tuple(labels), pos + 1 if end is None else end
        if pos + 1 + length > len(data):
            raise WireError("label runs past the end of the message")
        labels.append(data[pos + 1 : pos + 1 + length])
        size += length + 1
        if size > MAX_NAME:
            raise WireError(f"name longer than {MAX_NAME} octets")
        pos += 1 + length


def _skip_question(data: bytes, offset: int) -> int:
    _, offset = read_name(data, offset)
    if offset + 4 > len(data):
        raise WireError("question truncated before QTYPE/QCLASS")
    return offset + 4


def _skip_rr(data: bytes, offset: int) -> int:
    """RFC 1035 section 4.1.3: NAME, TYPE, CLASS, TTL, RDLENGTH, RDATA."""
    _, offset = read_name(data, offset)
    if offset + 10 > len(data):
        raise WireError("resource record truncated in its fixed fields")
    (rdlength,) = struct.unpack_from("!H", data, offset + 8)
    offset += 10 + rdlength
    if offset > len(data):
        raise WireError("resource record data runs past the end of the message")
    return offset


def check_query(data: bytes) -> Check:
    """Classify an incoming message before it is parsed."""
    header = Header.parse(data)
    if header is None:
        return Check(Verdict.DROP, f"{len(data)} octets, shorter than the DNS header")
    if header.qr:
        return Check(Verdict.DROP, "QR=1: a response, not a query", header)
    if header.qdcount != 1:
        # RFC 9619: QDCOUNT must be 1 for QUERY; zero questions cannot be answered.
        return Check(Verdict.FORMERR, f"QDCOUNT={header.qdcount}, expected 1", header)
    try:
        offset = _skip_question(data, HEADER_LEN)
        for _ in range(header.ancount + header.nscount + header.arcount):
            offset = _skip_rr(data, offset)
    except WireError as e:
        return Check(Verdict.FORMERR, str(e), header)
    return Check(Verdict.OK, "", header)


def error_reply(header: Header, rcode: int) -> bytes:
    """Header-only reply: same ID, QR=1, opcode and RD copied (RFC 1035 4.1.1)."""
    flags = 0x8000 | (header.flags & 0x7900) | (rcode & 0xF)
    return struct.pack("!6H", header.id, flags, 0, 0, 0, 0)


def _find_opt(data: bytes, header: Header) -> tuple[int, int] | None:
    """(start, end) of the first OPT RR in the additional section, or None."""
    offset = HEADER_LEN
    for _ in range(header.qdcount):
        offset = _skip_question(data, offset)
    for _ in range(header.ancount + header.nscount):
        offset = _skip_rr(data, offset)
    for _ in range(header.arcount):
        start = offset
        _, name_end = read_name(data, offset)
        offset = _skip_rr(data, offset)
        if struct.unpack_from("!H", data, name_end)[0] == TYPE_OPT:
            return start, offset
    return None


def edns_payload(data: bytes) -> int | None:
    """The UDP payload size a message's OPT RR offers (its CLASS field), or None.

    None when there is no OPT RR or the message cannot be walked (RFC 6891
    section 6.2.3: without OPT the requestor gets at most 512 octets).
    """
    header = Header.parse(data)
    try:
        found = _find_opt(data, header) if header is not None else None
    except WireError:
        return None
    if found is None:
        return None
    _, name_end = read_name(data, found[0])
    return struct.unpack_from("!H", data, name_end + 2)[0]


def udp_limit(query: bytes, ceiling: int) -> int:
    """Largest UDP reply for ``query``: its EDNS size, at least 512, at most ``ceiling``.

    RFC 6891 section 6.2.5: sizes below 512 are treated as 512. ``ceiling`` is
    the server's own limit (1232 by default: the DNS Flag Day 2020 value that
    avoids IP fragmentation).
    """
    offered = edns_payload(query) or MIN_UDP
    return max(MIN_UDP, min(offered, ceiling))


def truncate(message: bytes, limit: int) -> bytes:
    """``message`` if it fits in ``limit`` octets, else header + question with TC=1.

    The copy keeps ID and flags (QR and TC set), re-encodes the first
    question without compression, and for a response keeps its OPT RR with
    the options dropped (RFC 6891 section 7), so the client learns the
    EDNS state and retries over TCP (RFC 7766 section 5). ``limit`` 0 always
    truncates: the "slip" reply of response-rate limiting.
    """
    if len(message) <= limit:
        return message
    header = Header.parse(message)
    if header is None:
        raise WireError(f"{len(message)} octets, shorter than the DNS header")
    question = _question_bytes(message, header)
    opt = _opt_without_options(message, header) if header.qr else b""
    flags = header.flags | FLAG_QR | FLAG_TC
    head = struct.pack("!6H", header.id, flags, int(bool(question)), 0, 0, int(bool(opt)))
    return head + question + opt


def _question_bytes(message: bytes, header: Header) -> bytes:
    if header.qdcount == 0:
        return b""
    try:
        labels, offset = read_name(message, HEADER_LEN)
    except WireError:
        return b""
    if offset + 4 > len(message):
        return b""
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return name + message[offset : offset + 4]


def _opt_without_options(message: bytes, header: Header) -> bytes:
    try:
        found = _find_opt(message, header)
    except WireError:
        return b""
    if found is None:
        return b""
    _, name_end = read_name(message, found[0])
    payload, ttl = struct.unpack_from("!HI", message, name_end + 2)
    return b"\0" + struct.pack("!HHIH", TYPE_OPT, payload, ttl, 0)
