"""Table-driven tests of pxe.dns.resolver: pure decisions over a StaticDirectory."""

from __future__ import annotations

import pytest
from dnslib import OPCODE, QTYPE, RCODE, DNSRecord

from pxe.dns.directory import StaticDirectory
from pxe.dns.resolver import Outcome, Zone, ptr_address, resolve

ZONE = Zone(domain="lab.test", ttl=30, ns_address="10.0.0.1")
DIRECTORY = StaticDirectory(
    {"r-525400123456": "10.0.0.50", "web1": "10.0.0.51", "Appliance-A": "10.0.0.52"}
)


def ask(name: str, qtype: str = "A", forward: bool = False, zone: Zone = ZONE):
    return resolve(DNSRecord.question(name, qtype), zone, DIRECTORY, forward)


def rdatas(records) -> list[tuple[str, str, str]]:
    return [(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata)) for rr in records]


CASES = [
    # (id, name, qtype, forward, outcome, rcode, answers)
    (
        "resource by mac name",
        "r-525400123456.lab.test",
        "A",
        False,
        Outcome.ANSWER,
        RCODE.NOERROR,
        [("r-525400123456.lab.test.", "A", "10.0.0.50")],
    ),
    (
        "case-insensitive, case echoed",
        "WEB1.Lab.Test",
        "A",
        False,
        Outcome.ANSWER,
        RCODE.NOERROR,
        [("WEB1.Lab.Test.", "A", "10.0.0.51")],
    ),
    (
        "appliance with upper-case directory key",
        "appliance-a.lab.test",
        "A",
        False,
        Outcome.ANSWER,
        RCODE.NOERROR,
        [("appliance-a.lab.test.", "A", "10.0.0.52")],
    ),
    (
        "trailing dot",
        "web1.lab.test.",
        "ANY",
        False,
        Outcome.ANSWER,
        RCODE.NOERROR,
        [("web1.lab.test.", "A", "10.0.0.51")],
    ),
    ("AAAA of known name", "web1.lab.test", "AAAA", False, Outcome.NODATA, RCODE.NOERROR, []),
    ("MX of known name", "web1.lab.test", "MX", True, Outcome.NODATA, RCODE.NOERROR, []),
    ("unknown in zone", "nope.lab.test", "A", True, Outcome.NXDOMAIN, RCODE.NXDOMAIN, []),
    ("unknown AAAA in zone", "nope.lab.test", "AAAA", False, Outcome.NXDOMAIN, RCODE.NXDOMAIN, []),
    ("two labels below zone", "x.web1.lab.test", "A", False, Outcome.NXDOMAIN, RCODE.NXDOMAIN, []),
    (
        "apex SOA",
        "lab.test",
        "SOA",
        False,
        Outcome.ANSWER,
        RCODE.NOERROR,
        [("lab.test.", "SOA", "ns.lab.test. hostmaster.lab.test. 1 3600 600 86400 30")],
    ),
    (
        "apex NS",
        "LAB.test",
        "NS",
        False,
        Outcome.ANSWER,
        RCODE.NOERROR,
        [("LAB.test.", "NS", "ns.lab.test.")],
    ),
    ("apex A", "lab.test", "A", False, Outcome.NODATA, RCODE.NOERROR, []),
    (
        "ns host",
        "ns.lab.test",
        "A",
        False,
        Outcome.ANSWER,
        RCODE.NOERROR,
        [("ns.lab.test.", "A", "10.0.0.1")],
    ),
    (
        "PTR known",
        "50.0.0.10.in-addr.arpa",
        "PTR",
        False,
        Outcome.ANSWER,
        RCODE.NOERROR,
        [("50.0.0.10.in-addr.arpa.", "PTR", "r-525400123456.lab.test.")],
    ),
    (
        "PTR known, mixed case",
        "52.0.0.10.IN-ADDR.ARPA",
        "PTR",
        False,
        Outcome.ANSWER,
        RCODE.NOERROR,
        [("52.0.0.10.IN-ADDR.ARPA.", "PTR", "appliance-a.lab.test.")],
    ),
    (
        "PTR unknown, no upstream",
        "9.9.9.9.in-addr.arpa",
        "PTR",
        False,
        Outcome.REFUSED,
        RCODE.REFUSED,
        [],
    ),
    ("PTR unknown, upstream", "9.9.9.9.in-addr.arpa", "PTR", True, Outcome.FORWARD, None, []),
    ("PTR malformed", "300.0.0.10.in-addr.arpa", "PTR", False, Outcome.REFUSED, RCODE.REFUSED, []),
    ("foreign, no upstream", "example.com", "A", False, Outcome.REFUSED, RCODE.REFUSED, []),
    ("foreign, upstream", "example.com", "A", True, Outcome.FORWARD, None, []),
    ("suffix is not the zone", "evillab.test", "A", False, Outcome.REFUSED, RCODE.REFUSED, []),
    ("root", ".", "NS", True, Outcome.FORWARD, None, []),
]


@pytest.mark.parametrize(
    ("name", "qtype", "forward", "outcome", "rcode", "answers"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_resolve(name, qtype, forward, outcome, rcode, answers):
    decision = ask(name, qtype, forward)
    assert decision.outcome is outcome
    if outcome is Outcome.FORWARD:
        assert decision.reply is None
        return
    reply = decision.reply
    assert reply.header.qr == 1
    assert reply.header.rcode == rcode
    assert rdatas(reply.rr) == answers
    assert reply.header.ra == int(forward)
    # round trip through the wire: what we build, dnslib (and dig) can read
    assert DNSRecord.parse(reply.pack()).header.rcode == rcode


AUTHORITATIVE = [c for c in CASES if c[4] in (Outcome.ANSWER, Outcome.NODATA, Outcome.NXDOMAIN)]


@pytest.mark.parametrize(("name", "qtype"), [c[1:3] for c in AUTHORITATIVE])
def test_aa_set_for_our_answers(name, qtype):
    assert ask(name, qtype).reply.header.aa == 1


@pytest.mark.parametrize(
    ("name", "qtype"),
    [("nope.lab.test", "A"), ("web1.lab.test", "AAAA"), ("lab.test", "A")],
)
def test_negative_answers_carry_soa(name, qtype):
    """RFC 2308 sections 2.1 and 2.2: NXDOMAIN and NODATA carry the zone SOA."""
    reply = ask(name, qtype).reply
    assert rdatas(reply.auth) == [
        ("lab.test.", "SOA", "ns.lab.test. hostmaster.lab.test. 1 3600 600 86400 30")
    ]


def test_refused_is_not_authoritative():
    q = DNSRecord.question("example.com")
    reply = resolve(q, ZONE, DIRECTORY, False).reply
    assert reply.header.aa == 0
    assert reply.header.id == q.header.id


def test_ns_query_has_glue():
    reply = ask("lab.test", "NS").reply
    assert rdatas(reply.ar) == [("ns.lab.test.", "A", "10.0.0.1")]


def test_ns_without_address_is_nxdomain():
    decision = ask("ns.lab.test", "A", zone=Zone(domain="lab.test"))
    assert decision.outcome is Outcome.NXDOMAIN


def test_directory_entry_named_ns_wins():
    directory = StaticDirectory({"ns": "10.9.9.9"})
    reply = resolve(DNSRecord.question("ns.lab.test"), ZONE, directory, False).reply
    assert rdatas(reply.rr) == [("ns.lab.test.", "A", "10.9.9.9")]


def test_non_query_opcode_is_notimp():
    q = DNSRecord.question("web1.lab.test")
    q.header.opcode = OPCODE.NOTIFY
    decision = resolve(q, ZONE, DIRECTORY, True)
    assert decision.outcome is Outcome.NOTIMP
    assert decision.reply.header.rcode == RCODE.NOTIMP


def test_chaos_class_in_zone_is_not_answered_authoritatively():
    q = DNSRecord.question("web1.lab.test", "TXT", "CH")
    assert resolve(q, ZONE, DIRECTORY, False).outcome is Outcome.REFUSED


@pytest.mark.parametrize(
    ("qname", "address"),
    [
        ("4.3.2.1.in-addr.arpa", "1.2.3.4"),
        ("4.3.2.1.in-addr.arpa.", "1.2.3.4"),
        ("0.0.0.0.IN-ADDR.ARPA", "0.0.0.0"),
        ("3.2.1.in-addr.arpa", None),
        ("256.3.2.1.in-addr.arpa", None),
        ("04.3.2.1.in-addr.arpa", None),
        ("a.3.2.1.in-addr.arpa", None),
        ("5.4.3.2.1.in-addr.arpa", None),
        ("4.3.2.1.ip6.arpa", None),
    ],
)
def test_ptr_address(qname, address):
    assert ptr_address(qname) == address
