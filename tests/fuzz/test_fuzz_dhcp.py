"""Property-based fuzzing of the DHCP codec and the service's datagram path.

Properties:
- ``decode`` of any bytes returns a packet or raises :class:`DhcpDecodeError`,
  nothing else; so do the typed option readers and ``dump`` of what it returns;
- ``decode(encode(p)) == p`` for every packet the codec can represent;
- one step of the service's serve loop (``DhcpService._serve``: receive,
  decode, handle, send) never raises: malformed input is counted in
  ``dropped_malformed`` and dropped, and every reply it sends decodes. The
  socket it reads is :class:`DatagramQueue` (a fake: the real service binds
  port 67 on an interface, which a fuzz test in ``make test`` must not).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from provisiond import logs, pxesettings
from provisiond.config import Config, SubnetConfig
from provisiond.db import Database
from provisiond.leases import SqlLeaseStore
from pxe.dhcp.__main__ import BootEveryone
from pxe.dhcp.codec import (
    BOOTREPLY,
    MAGIC,
    DhcpDecodeError,
    DhcpPacket,
    Opt,
    decode,
    dump,
    encode,
)
from pxe.dhcp.server import DhcpService
from tests.fuzz.tally import tried

# options the handler reads, weighted in so that structured inputs reach it
INTERESTING = [53, 43, 50, 52, 54, 55, 60, 61, 77, 82, 93, 94, 97, 175, 12, 57]
MESSAGE = st.sampled_from([b"\x01", b"\x03", b"\x04", b"\x07", b"\x08", b"\x02", b""])


@st.composite
def option_area(draw) -> bytes:
    out = bytearray()
    for _ in range(draw(st.integers(0, 12))):
        code = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255)))
        if code == 53:
            value = draw(MESSAGE)
        elif code in (43, 82, 175):  # encapsulated TLVs, sometimes broken
            value = draw(st.binary(max_size=40))
        else:
            value = draw(st.binary(max_size=20))
        out += bytes((code, min(len(value) + draw(st.integers(-1, 1)), 255) & 0xFF)) + value
    if draw(st.booleans()):
        out.append(Opt.END)
    return bytes(out) + draw(st.binary(max_size=8))


@st.composite
def near_valid(draw) -> bytes:
    """A BOOTP header with a cookie and TLV options: gets past the first checks."""
    header = bytearray(draw(st.binary(min_size=236, max_size=236)))
    header[0] = draw(st.sampled_from([1, 1, 1, 2, 3]))
    header[2] = draw(st.sampled_from([6, 6, 0, 16, 17, 255]))
    if draw(st.booleans()):
        header[24:28] = bytes(4)  # giaddr 0: not relayed
    return bytes(header) + MAGIC + draw(option_area())


@st.composite
def well_formed(draw) -> bytes:
    """A DISCOVER / REQUEST / INFORM with PXE options of random content: reaches the handler."""
    options = {Opt.MESSAGE_TYPE: draw(st.sampled_from([b"\x01", b"\x03", b"\x08", b"\x07"]))}
    pxe = {
        Opt.VENDOR_CLASS: st.sampled_from([b"PXEClient:Arch:00007:UNDI:003016", b"PXEClient"]),
        Opt.CLIENT_ARCH: st.one_of(st.sampled_from([b"\x00\x00", b"\x00\x07"]), st.binary()),
        Opt.CLIENT_UUID: st.one_of(st.just(b"\x00" + bytes(16)), st.binary(max_size=18)),
        Opt.USER_CLASS: st.sampled_from([b"iPXE", b"\x04iPXE", b"\x09"]),
        Opt.IPXE_ENCAP: st.binary(max_size=12),
        Opt.VENDOR_SPECIFIC: st.binary(max_size=12),
        Opt.RELAY_AGENT: st.binary(max_size=12),
        Opt.REQUESTED_IP: st.sampled_from([b"\x0a\x09\x00\x64", b"\x0a\x09\x00\x01", b"\x01"]),
        Opt.SERVER_ID: st.sampled_from([b"\x0a\x09\x00\x01", b"\x0a\x09\x00\x02"]),
        Opt.CLIENT_ID: st.binary(max_size=10),
        Opt.MAX_SIZE: st.binary(max_size=3),
    }
    for code, values in pxe.items():
        if draw(st.booleans()):
            options[code] = draw(values)
    chaddr = draw(st.sampled_from([bytes.fromhex("525400aa0001"), bytes.fromhex("525400aa0002")]))
    packet = DhcpPacket(
        op=1,
        xid=draw(st.integers(0, 2**32 - 1)),
        chaddr=chaddr.hex(":"),
        flags=draw(st.sampled_from([0, 0x8000])),
        ciaddr=draw(st.sampled_from(["0.0.0.0", "10.9.0.100", "10.30.0.9"])),
        giaddr=draw(st.sampled_from(["0.0.0.0", "0.0.0.0", "10.20.0.1", "10.9.0.1"])),
        options=options,
    )
    return encode(packet)


DATAGRAMS = st.one_of(st.binary(max_size=700), near_valid(), well_formed())


@given(DATAGRAMS)
def test_decode_raises_only_its_error(data):
    tried("dhcp.decode")
    try:
        packet = decode(data)
    except DhcpDecodeError:
        return
    dump(packet)
    for read in (
        lambda p: p.message_type,
        lambda p: p.client_arch,
        lambda p: p.client_uuid,
        lambda p: p.user_classes,
        lambda p: p.ip_opt(Opt.REQUESTED_IP),
        lambda p: p.text_opt(Opt.VENDOR_CLASS),
        lambda p: p.suboptions(Opt.RELAY_AGENT),
        lambda p: p.suboptions(Opt.IPXE_ENCAP),
        lambda p: p.suboptions(Opt.VENDOR_SPECIFIC),
    ):
        try:
            read(packet)
        except DhcpDecodeError:
            pass


def _ip() -> st.SearchStrategy[str]:
    return st.binary(min_size=4, max_size=4).map(socket.inet_ntoa)


def _cstring(limit: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=limit)


@st.composite
def packets(draw) -> DhcpPacket:
    hlen = draw(st.integers(0, 16))
    codes = st.integers(1, 254).filter(lambda c: c != Opt.OVERLOAD)
    return DhcpPacket(
        op=draw(st.sampled_from([1, 2])),
        xid=draw(st.integers(0, 2**32 - 1)),
        chaddr=draw(st.binary(min_size=hlen, max_size=hlen)).hex(":"),
        htype=draw(st.integers(0, 255)),
        hlen=hlen,
        hops=draw(st.integers(0, 255)),
        secs=draw(st.integers(0, 65535)),
        flags=draw(st.integers(0, 65535)),
        ciaddr=draw(_ip()),
        yiaddr=draw(_ip()),
        siaddr=draw(_ip()),
        giaddr=draw(_ip()),
        sname=draw(_cstring(64)),
        file=draw(_cstring(128)),
        options=draw(st.dictionaries(codes, st.binary(max_size=600), max_size=8)),
    )


@given(packets())
def test_encode_decode_round_trip(packet):
    tried("dhcp.round_trip")
    assert decode(encode(packet)) == packet


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dhcpfuzz")
    net = ipaddress.IPv4Network
    subnets = (
        SubnetConfig(
            net("10.9.0.0/24"),
            "full",
            ipaddress.IPv4Address("10.9.0.100"),
            ipaddress.IPv4Address("10.9.0.199"),
        ),
        SubnetConfig(net("10.30.0.0/24"), "proxy"),
    )
    cfg = Config(interface="lo", address=ipaddress.IPv4Address("10.9.0.1"), subnets=subnets)
    db = Database(f"sqlite:///{tmp / 'fuzz.db'}")
    db.migrate()
    svc = DhcpService(pxesettings.dhcp(cfg), BootEveryone(), SqlLeaseStore(db, logs.get("dhcp")))
    svc.prepare()
    yield svc
    db.dispose()


class DatagramQueue:
    """The socket calls ``_serve`` makes (recvfrom, also with MSG_DONTWAIT), over one datagram."""

    def __init__(self, data: bytes, source: tuple[str, int]) -> None:
        self.inbox, self.sent = [(data, source)], []

    def recvfrom(self, _size: int, _flags: int = 0) -> tuple[bytes, tuple[str, int]]:
        if not self.inbox:
            raise BlockingIOError  # EAGAIN: what the real socket raises when nothing is queued
        return self.inbox.pop()

    def sendto(self, data: bytes, dest: tuple[str, int]) -> int:
        self.sent.append((data, dest))
        return len(data)


@given(DATAGRAMS, st.booleans(), st.sampled_from(["10.9.0.50", "10.30.0.9", "192.0.2.1"]))
def test_serve_step_drops_and_counts_malformed(service, data, proxy, source):
    tried("dhcp.serve_path")
    try:
        decode(data)
        malformed = False
    except DhcpDecodeError:
        malformed = True
    before = dict(service.stats)
    sock = DatagramQueue(data, (source, 68))
    service._serve(sock, proxy)
    event("malformed" if malformed else f"decoded, {len(sock.sent)} replies sent")
    assert service.stats["received"] == before["received"] + 1
    if malformed:
        assert not sock.sent
        assert service.stats["dropped_malformed"] == before["dropped_malformed"] + 1
    for reply, _dest in sock.sent:  # ACKs wait for the lease writer (not started): none here
        out = decode(reply)
        assert out.op == BOOTREPLY and out.xid == struct.unpack_from("!I", data, 4)[0]
