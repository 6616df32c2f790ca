"""Interop tests of pxe.dns.server: the real `dig` against DnsService on loopback.

Every service listens on 127.0.0.1 on a kernel-chosen high port (port 0).
Bad-input tests use raw sockets and then prove the loop still serves.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest
from dnslib import RCODE, DNSRecord

from provisiond import pxesettings
from provisiond.config import Config, DnsConfig, ServicesConfig
from pxe.dns.directory import StaticDirectory
from pxe.dns.server import DnsService, DnsStartError

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed (dnsutils)"),
]

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
ENTRIES = {"r-525400123456": "10.0.0.50", "web1": "10.0.0.51"}


def config(domain: str = "lab.test", upstream: str = "", port: int = 0) -> Config:
    return Config(
        address=LOOPBACK,
        services=ServicesConfig(dns_port=port),
        dns=DnsConfig(domain=domain, upstream=upstream, ttl=30),
    )


def running(cfg: Config, entries=None, **kw) -> DnsService:
    svc = DnsService(
        pxesettings.dns(cfg), StaticDirectory(ENTRIES if entries is None else entries), **kw
    )
    svc.start()
    return svc


@pytest.fixture
def dns():
    svc = running(config())
    yield svc
    svc.stop()


def dig(svc: DnsService, *args: str) -> str:
    cmd = ["dig", "@127.0.0.1", "-p", str(svc.address[1]), "+time=3", "+tries=1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=15).stdout


def test_dig_resolves_resource_name(dns):
    assert dig(dns, "r-525400123456.lab.test", "A", "+short").strip() == "10.0.0.50"
    out = dig(dns, "R-525400123456.LAB.TEST", "A")
    assert "status: NOERROR" in out and " aa" in out.split("flags:")[1].split(";")[0]
    assert dns.stats["answered"] == 2


def test_dig_reverse(dns):
    assert dig(dns, "-x", "10.0.0.51", "+short").strip() == "web1.lab.test."


def test_dig_nxdomain_has_soa(dns):
    out = dig(dns, "nope.lab.test", "A")
    assert "status: NXDOMAIN" in out
    assert "AUTHORITY: 1" in out and "SOA" in out.split("AUTHORITY SECTION:")[1]
    assert dns.stats["nxdomain"] == 1


def test_dig_nodata_for_aaaa(dns):
    out = dig(dns, "web1.lab.test", "AAAA")
    assert "status: NOERROR" in out and "ANSWER: 0" in out


def test_dig_apex_soa_and_ns(dns):
    assert dig(dns, "lab.test", "NS", "+short").strip() == "ns.lab.test."
    assert dig(dns, "lab.test", "SOA", "+short").startswith("ns.lab.test. hostmaster.lab.test.")
    assert dig(dns, "ns.lab.test", "+short").strip() == "127.0.0.1"


def test_refused_without_upstream(dns):
    assert "status: REFUSED" in dig(dns, "example.com", "A")
    assert "status: REFUSED" in dig(dns, "-x", "192.0.2.1")
    assert dns.stats["refused"] == 2


def test_dig_over_tcp(dns):
    assert dig(dns, "+tcp", "web1.lab.test", "+short").strip() == "10.0.0.51"
    assert "status: NXDOMAIN" in dig(dns, "+tcp", "nope.lab.test")


def test_forwarding_to_second_service():
    upstream = running(config("other.test"), {"db1": "10.1.0.9"})
    front = running(config(upstream=f"127.0.0.1:{upstream.address[1]}"))
    try:
        assert dig(front, "db1.other.test", "+short").strip() == "10.1.0.9"
        assert dig(front, "-x", "10.1.0.9", "+short").strip() == "db1.other.test."
        assert dig(front, "+tcp", "db1.other.test", "+short").strip() == "10.1.0.9"
        assert "status: NXDOMAIN" in dig(front, "nope.other.test")
        assert dig(front, "web1.lab.test", "+short").strip() == "10.0.0.51"  # still ours
        assert front.stats["forwarded"] == 4
        assert upstream.stats["queries"] == 4
    finally:
        front.stop()
        upstream.stop()


@pytest.fixture
def silent_upstream():
    """A UDP socket that swallows queries: an upstream that never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def test_upstream_timeout_is_servfail_and_blocks_nothing(silent_upstream):
    port = silent_upstream.getsockname()[1]
    svc = running(config(upstream=f"127.0.0.1:{port}"), forward_timeout=1.0)
    try:
        slow = []
        worker = threading.Thread(target=lambda: slow.append(dig(svc, "example.com")))
        worker.start()
        time.sleep(0.2)
        started = time.monotonic()
        assert dig(svc, "web1.lab.test", "+short").strip() == "10.0.0.51"
        assert time.monotonic() - started < 0.5  # not queued behind the forward
        worker.join(10)
        assert "status: SERVFAIL" in slow[0]
        assert svc.stats["servfail"] == 1
    finally:
        svc.stop()


def test_too_many_pending_forwards_answer_servfail(silent_upstream):
    port = silent_upstream.getsockname()[1]
    svc = running(
        config(upstream=f"127.0.0.1:{port}"), forward_timeout=1.0, forward_workers=1, max_pending=2
    )
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(3)
            for i in range(4):
                client.sendto(_query(f"x{i}.example.com", 100 + i), svc.address)
            rcodes = sorted(DNSRecord.parse(client.recv(4096)).header.rcode for _ in range(4))
        assert rcodes == [RCODE.SERVFAIL] * 4
        assert svc.stats["servfail"] == 4 and svc.stats["forwarded"] == 4
    finally:
        svc.stop()


def test_start_fails_clearly_when_port_taken(dns):
    clash = DnsService(pxesettings.dns(config(port=dns.address[1])), StaticDirectory())
    with pytest.raises(DnsStartError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
        clash.start()


def test_stop_is_prompt_and_frees_the_port():
    svc = running(config())
    port = svc.address[1]
    started = time.monotonic()
    svc.stop()
    assert time.monotonic() - started < 2.0
    again = running(config(port=port))  # UDP and TCP both free again
    again.stop()


# -- bad input ------------------------------------------------------------


def _query(name: str, qid: int = 0x4242) -> bytes:
    q = DNSRecord.question(name)
    q.header.id = qid
    return q.pack()


def _header(qd: int = 1, flags: int = 0x0100, ar: int = 0) -> bytes:
    return struct.pack("!6H", 0x4242, flags, qd, 0, 0, ar)


QTAIL = b"\x00\x01\x00\x01"
BAD = [
    # (id, packet, expected rcode or None for dropped, counter)
    ("empty", b"", None, "dropped_malformed"),
    ("garbage 5 octets", b"\xde\xad\xbe\xef\x00", None, "dropped_malformed"),
    (
        "response QR=1",
        _header(flags=0x8180) + _query("web1.lab.test")[12:],
        None,
        "dropped_malformed",
    ),
    ("zero questions", _header(qd=0), RCODE.FORMERR, "formerr"),
    ("truncated question", _query("web1.lab.test")[:20], RCODE.FORMERR, "formerr"),
    (
        "pointer loop",
        _header() + b"\xc0\x0d" + b"a" * 13 + b"\xc0\x0c" + QTAIL,
        RCODE.FORMERR,
        "formerr",
    ),
    ("label > 63", _header() + b"\x40" + b"a" * 64 + b"\x00" + QTAIL, RCODE.FORMERR, "formerr"),
    (
        "name > 255",
        _header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00" + QTAIL,
        RCODE.FORMERR,
        "formerr",
    ),
    (
        "bad additional RR",
        _header(ar=1) + _query("web1.lab.test")[12:] + b"\x00\x00",
        RCODE.FORMERR,
        "formerr",
    ),
]


@pytest.mark.parametrize(
    ("packet", "rcode", "counter"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_bad_input_then_valid_query(dns, packet, rcode, counter, transport):
    reply = _exchange(dns, packet, transport)
    if rcode is None:
        assert reply is None
    else:
        header = DNSRecord.parse(reply).header
        assert (header.id, header.qr, header.rcode) == (0x4242, 1, rcode)
    assert dns.stats[counter] == 1
    assert dig(dns, "web1.lab.test", "+short").strip() == "10.0.0.51"  # loop still serves
    assert dns.stats["queries"] == 2


def _exchange(svc: DnsService, packet: bytes, transport: str) -> bytes | None:
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            s.sendto(packet, svc.address)
            try:
                return s.recv(4096)
            except TimeoutError:
                return None
    with socket.create_connection(svc.address, timeout=0.5) as s:
        s.sendall(struct.pack("!H", len(packet)) + packet)
        try:
            (n,) = struct.unpack("!H", s.recv(2))
            return s.recv(n)
        except (TimeoutError, struct.error):
            return None


def test_bad_input_is_logged_once(dns, caplog):
    caplog.set_level(logging.WARNING, logger="provisiond.dns")
    for _ in range(5):
        _exchange(dns, _header(qd=0), "udp")
    assert dns.stats["formerr"] == 5
    assert len([r for r in caplog.records if "FORMERR" in r.getMessage()]) == 1


def test_tcp_connection_limit(dns):
    svc = running(config(), max_tcp=1, tcp_idle=2.0)
    try:
        with socket.create_connection(svc.address, timeout=2):
            time.sleep(0.2)  # the first connection holds the only slot
            with socket.create_connection(svc.address, timeout=2) as second:
                assert second.recv(2) == b""  # closed at once
        assert svc.stats["tcp_rejected"] == 1
        time.sleep(0.2)
        assert dig(svc, "+tcp", "web1.lab.test", "+short").strip() == "10.0.0.51"
    finally:
        svc.stop()
