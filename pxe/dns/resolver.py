"""DNS decisions: what to answer for one parsed query (no sockets, no clock).

Owns the authoritative zone for the configured domain and the reverse
(PTR) answers, both read from a :class:`pxe.dns.directory.NameDirectory`:

- ``<name>.<domain>`` A (and ANY) -> the directory's address, AA set;
  other types of a known name -> NOERROR, no data, SOA in authority
  (RFC 2308 section 2.2); unknown name in the domain -> NXDOMAIN with SOA
  (RFC 2308 section 2.1).
- the apex -> SOA and NS (``ns.<domain>``, whose A is the server's address).
- ``d.c.b.a.in-addr.arpa`` PTR (RFC 1035 section 3.5) for an address the
  directory knows -> ``<name>.<domain>``.
- anything else -> FORWARD to the upstream when one is configured (the
  server does the I/O), else REFUSED (RFC 1035 section 4.1.1).

Names compare case-insensitively (RFC 4343); answers echo the case asked.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from dnslib import NS, PTR, QTYPE, RCODE, RR, SOA, A, DNSRecord

from pxe.dns.directory import NameDirectory

OPCODE_QUERY = 0
CLASS_IN = 1


class Outcome(enum.Enum):
    ANSWER = "answered"
    NODATA = "nodata"
    NXDOMAIN = "nxdomain"
    REFUSED = "refused"
    NOTIMP = "notimp"
    FORWARD = "forwarded"


@dataclass(frozen=True)
class Zone:
    """The authoritative data that does not come from the directory."""

    domain: str
    ttl: int = 60
    ns_address: str | None = None  # A record of ns.<domain> (the server itself)
    serial: int = 1

    @property
    def origin(self) -> str:
        return self.domain.strip(".").lower()


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reply: DNSRecord | None  # None when outcome is FORWARD


def resolve(query: DNSRecord, zone: Zone, directory: NameDirectory, can_forward: bool) -> Decision:
    """Answer ``query`` (exactly one question, already validated)."""
    if query.header.opcode != OPCODE_QUERY:
        return _error(query, Outcome.NOTIMP, RCODE.NOTIMP, can_forward)
    question = query.q
    qname = str(question.qname).rstrip(".").lower()
    if question.qclass == CLASS_IN and _in_zone(qname, zone.origin):
        return _authoritative(query, qname, zone, directory, can_forward)
    if question.qclass == CLASS_IN and question.qtype in (QTYPE.PTR, QTYPE.ANY):
        decision = _reverse(query, qname, zone, directory, can_forward)
        if decision is not None:
            return decision
    if can_forward:
        return Decision(Outcome.FORWARD, None)
    return _error(query, Outcome.REFUSED, RCODE.REFUSED, can_forward)


def _in_zone(qname: str, origin: str) -> bool:
    return qname == origin or qname.endswith("." + origin)


def _authoritative(
    query: DNSRecord, qname: str, zone: Zone, directory: NameDirectory, can_forward: bool
) -> Decision:
    reply = query.reply(ra=int(can_forward), aa=1)
    records = _records(qname, query.q.qtype, zone, directory)
    if records is None:
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(_soa(zone))
        return Decision(Outcome.NXDOMAIN, reply)
    answers, additional = records
    for rr in answers:
        reply.add_answer(_rename(rr, query))
    for rr in additional:
        reply.add_ar(rr)
    if not answers:
        reply.add_auth(_soa(zone))
        return Decision(Outcome.NODATA, reply)
    return Decision(Outcome.ANSWER, reply)


def _records(
    qname: str, qtype: int, zone: Zone, directory: NameDirectory
) -> tuple[list[RR], list[RR]] | None:
    """(answers, additional) for a name in the zone; None when it does not exist."""
    if qname == zone.origin:
        return _apex(qtype, zone), (_ns_glue(zone) if qtype == QTYPE.NS else [])
    host = qname[: -len(zone.origin) - 1]
    address = _host_address(host, zone, directory)
    if address is None:
        return None
    if qtype in (QTYPE.A, QTYPE.ANY):
        return [RR(qname, QTYPE.A, rdata=A(address), ttl=zone.ttl)], []
    return [], []


def _host_address(host: str, zone: Zone, directory: NameDirectory) -> str | None:
    if "." in host:  # only single-label hosts live in the zone
        return None
    address = directory.address_of(host)
    if address is None and host == "ns":
        return zone.ns_address
    return address


def _apex(qtype: int, zone: Zone) -> list[RR]:
    if qtype == QTYPE.SOA:
        return [_soa(zone)]
    if qtype == QTYPE.NS:
        return [_ns(zone)]
    if qtype == QTYPE.ANY:
        return [_soa(zone), _ns(zone)]
    return []


def _soa(zone: Zone) -> RR:
    """RFC 1035 section 3.3.13; MINIMUM is the negative-caching TTL (RFC 2308 s4)."""
    times = (zone.serial, 3600, 600, 86400, zone.ttl)
    rdata = SOA(f"ns.{zone.origin}.", f"hostmaster.{zone.origin}.", times)
    return RR(zone.origin + ".", QTYPE.SOA, rdata=rdata, ttl=zone.ttl)


def _ns(zone: Zone) -> RR:
    return RR(zone.origin + ".", QTYPE.NS, rdata=NS(f"ns.{zone.origin}."), ttl=zone.ttl)


def _ns_glue(zone: Zone) -> list[RR]:
    if zone.ns_address is None:
        return []
    return [RR(f"ns.{zone.origin}.", QTYPE.A, rdata=A(zone.ns_address), ttl=zone.ttl)]


def _rename(rr: RR, query: DNSRecord) -> RR:
    """Echo the owner name in the case the client asked (RFC 4343 section 4.1)."""
    if str(rr.rname).rstrip(".").lower() == str(query.q.qname).rstrip(".").lower():
        rr.rname = query.q.qname
    return rr


def _reverse(
    query: DNSRecord, qname: str, zone: Zone, directory: NameDirectory, can_forward: bool
) -> Decision | None:
    address = ptr_address(qname)
    name = directory.name_of(address) if address else None
    if name is None:
        return None
    reply = query.reply(ra=int(can_forward), aa=1)
    target = f"{name.lower()}.{zone.origin}."
    reply.add_answer(RR(query.q.qname, QTYPE.PTR, rdata=PTR(target), ttl=zone.ttl))
    return Decision(Outcome.ANSWER, reply)


def ptr_address(qname: str) -> str | None:
    """``4.3.2.1.in-addr.arpa`` -> ``1.2.3.4`` (RFC 1035 section 3.5), else None."""
    labels = qname.rstrip(".").lower().split(".")
    if len(labels) != 6 or labels[4:] != ["in-addr", "arpa"]:
        return None
    if not all(label.isdigit() and len(label) <= 3 for label in labels[:4]):
        return None
    try:
        return str(ipaddress.IPv4Address(".".join(reversed(labels[:4]))))
    except ipaddress.AddressValueError:
        return None


def _error(query: DNSRecord, outcome: Outcome, rcode: int, can_forward: bool) -> Decision:
    reply = query.reply(ra=int(can_forward), aa=0)
    reply.header.rcode = rcode
    return Decision(outcome, reply)
