"""Property-based fuzzing of the DNS wire guard, the resolver and the serve pipeline.

Properties:
- ``check_query`` never raises and ``read_name`` raises only :class:`WireError`
  (the guard that keeps hostile packets from dnslib);
- ``edns_payload`` / ``udp_limit`` never raise and stay within 512..ceiling;
- ``truncate`` either returns the message or a TC=1 message of header +
  the same question, uncompressed (+ a bare OPT RR);
- a question dnslib packs passes the guard with the same labels (round trip);
- for whatever passes the guard and dnslib parses, ``resolve`` answers
  without raising and its reply packs;
- ``DnsService.handle`` (the serve pipeline both transports call) never
  raises, classifies every message exactly once (malformed ones counted
  in ``dropped_malformed`` or ``formerr``), and never sends a UDP reply
  larger than the query's size allows.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from dnslib import EDNS0, DNSQuestion, DNSRecord
from hypothesis import example, given
from hypothesis import strategies as st

from provisiond import pxesettings
from provisiond.config import Config, DnsConfig, ServicesConfig
from pxe.dns.directory import StaticDirectory
from pxe.dns.resolver import Zone, resolve
from pxe.dns.server import DnsService
from pxe.dns.wire import (
    HEADER_LEN,
    Header,
    Verdict,
    WireError,
    check_query,
    edns_payload,
    read_name,
    truncate,
    udp_limit,
)
from tests.fuzz.tally import tried

ENTRIES = {"web1": "10.0.0.51", "r-525400123456": "10.0.0.50"}
ZONE = Zone("lab.test", 30, "10.0.0.1")
LABEL = st.binary(min_size=1, max_size=63)
KNOWN = [
    [b"web1", b"lab", b"test"],
    [b"lab", b"test"],
    [b"ns", b"lab", b"test"],
    [b"51", b"0", b"0", b"10", b"in-addr", b"arpa"],
    [b"nope", b"lab", b"test"],
    [b"a", b"b", b"lab", b"test"],
    [b"x", b"example", b"com"],
]
NAMES = st.one_of(st.lists(LABEL, min_size=0, max_size=5), st.sampled_from(KNOWN))
QTYPES = st.one_of(st.sampled_from([1, 2, 6, 12, 15, 16, 28, 41, 255, 252]), st.integers(0, 65535))


def _name(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\0"


@st.composite
def near_valid(draw) -> bytes:
    """A header + one question + maybe an OPT RR or random records: reaches dnslib."""
    flags = draw(st.one_of(st.just(0x0100), st.integers(0, 0xFFFF)))
    labels = draw(NAMES)
    question = _name(labels) + struct.pack("!HH", draw(QTYPES), draw(st.sampled_from([1, 3, 255])))
    extra, arcount = b"", 0
    if draw(st.booleans()):  # an OPT RR, sometimes with a bogus rdlength
        size = draw(st.integers(0, 65535))
        rdata = draw(st.binary(max_size=12))
        rdlen = len(rdata) + draw(st.sampled_from([0, 0, 0, 1, -1]))
        extra += b"\0" + struct.pack("!HHIH", 41, size, 0, max(rdlen, 0)) + rdata
        arcount += 1
    extra += draw(st.binary(max_size=16))
    arcount += draw(st.integers(0, 2))
    head = struct.pack("!6H", draw(st.integers(0, 65535)), flags & 0x7FFF, 1, 0, 0, arcount)
    return head + question + extra


MESSAGES = st.one_of(st.binary(max_size=600), near_valid())


@given(MESSAGES)
@example(b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0d" + b"a" * 13 + b"\xc0\x0c")
def test_guard_never_raises(data):
    tried("dns.check_query")
    check = check_query(data)
    if len(data) < HEADER_LEN:
        assert check.verdict is Verdict.DROP
    try:
        read_name(data, HEADER_LEN)
    except WireError:
        pass
    limit = udp_limit(data, 1232)
    assert 512 <= limit <= 1232
    payload = edns_payload(data)
    assert payload is None or 0 <= payload <= 65535


@given(MESSAGES, st.sampled_from([0, 512, 1232]))
def test_truncate_gives_a_parseable_tc_message(data, limit):
    tried("dns.truncate")
    if HEADER_LEN > len(data) > limit:
        with pytest.raises(WireError):
            truncate(data, limit)
        return
    out = truncate(data, limit)
    if len(data) <= limit:
        assert out is data
        return
    header = Header.parse(out)
    assert header.tc and header.qr and header.id == Header.parse(data).id
    assert (header.ancount, header.nscount) == (0, 0) and header.qdcount <= 1
    size = HEADER_LEN + 11 * header.arcount  # a bare OPT RR is 11 octets
    if header.qdcount:
        labels, end = read_name(out, HEADER_LEN)
        assert labels == read_name(data, HEADER_LEN)[0]  # the question, uncompressed
        size = end + 4 + 11 * header.arcount
    assert len(out) == size <= HEADER_LEN + 255 + 4 + 11


@given(st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=126,
                                      exclude_characters=".\\"), min_size=1, max_size=20),
                min_size=1, max_size=6), QTYPES)  # fmt: skip
def test_dnslib_question_round_trips_through_the_guard(labels, qtype):
    tried("dns.round_trip")
    packet = DNSRecord(q=DNSQuestion(".".join(labels), qtype)).pack()
    assert check_query(packet).verdict is Verdict.OK
    got, end = read_name(packet, HEADER_LEN)
    assert [x.decode() for x in got] == labels and end == len(packet) - 4


@given(MESSAGES, st.booleans())
def test_resolver_answers_whatever_dnslib_parses(data, can_forward):
    tried("dns.resolve")
    if check_query(data).verdict is not Verdict.OK:
        return
    try:
        query = DNSRecord.parse(data)
    except Exception:  # the server answers FORMERR; dnslib's errors are not ours to type
        return
    decision = resolve(query, ZONE, StaticDirectory(ENTRIES), can_forward)
    if decision.reply is not None:
        decision.reply.pack()


# -- the serve pipeline ---------------------------------------------------------

CLASSES = ("dropped_malformed", "formerr", "answered", "nxdomain", "refused", "notimp",
           "rate_limited")  # fmt: skip


@pytest.fixture(scope="module")
def service():
    cfg = Config(
        address=ipaddress.IPv4Address("127.0.0.1"),
        services=ServicesConfig(dns_port=0),
        dns=DnsConfig(domain="lab.test", upstream="", ttl=30, rate_limit=100_000),
    )
    return DnsService(pxesettings.dns(cfg), StaticDirectory(ENTRIES))


@given(
    MESSAGES,
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 65535)),
    st.sampled_from(["10.0.0.9", "192.0.2.7"]),
)
def test_serve_pipeline_classifies_everything_and_caps_udp(service, data, tcp, edns, source):
    tried("dns.serve_pipeline")
    if edns is not None and len(data) >= HEADER_LEN:
        q = DNSRecord.question("web1.lab.test", "ANY")
        q.add_ar(EDNS0(udp_len=edns))
        data = q.pack()
    before = {k: service.stats[k] for k in (*CLASSES, "queries")}
    sent: list[bytes] = []
    service.handle(data, (source, 5353), sent.append, tcp)
    after = {k: service.stats[k] for k in (*CLASSES, "queries")}
    assert after["queries"] == before["queries"] + 1
    assert sum(after[k] - before[k] for k in CLASSES) == 1
    verdict = check_query(data).verdict
    if verdict is Verdict.DROP:
        assert after["dropped_malformed"] == before["dropped_malformed"] + 1 and not sent
    elif verdict is Verdict.FORMERR:
        assert after["formerr"] == before["formerr"] + 1
    assert len(sent) <= 1
    if sent and not tcp:
        assert len(sent[0]) <= udp_limit(data, 1232)
    if sent:
        assert DNSRecord.parse(sent[0]).header.qr
