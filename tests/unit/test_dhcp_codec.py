"""DHCP codec: golden dumps of crafted requests, round trips, malformed input."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from pxe.dhcp.codec import (
    MIN_SIZE,
    DhcpDecodeError,
    DhcpPacket,
    Opt,
    decode,
    dump,
    encode,
    parse_suboptions,
    parse_user_class,
)  # fmt: skip
from tests.unit import dhcp_packets as pk
from tests.unit.dhcplab import GOLDEN, check_golden  # noqa: F401


@pytest.mark.parametrize("name", sorted(pk.GOLDEN))
def test_golden_decode(name):
    check_golden(name, dump(decode(pk.GOLDEN[name]())))


@pytest.mark.parametrize("name", sorted(pk.GOLDEN))
def test_round_trip(name):
    p = decode(pk.GOLDEN[name]())
    again = decode(encode(p))
    if Opt.OVERLOAD in p.options:  # we never overload; the options move back home
        assert again.options == p.options and again.file == ""
    else:
        assert again == p


def test_typed_readers():
    p = decode(pk.pxe("discover", 7))
    assert (p.client_arch, p.chaddr) == (7, pk.MAC)
    assert p.client_uuid == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert p.text_opt(Opt.VENDOR_CLASS).startswith("PXEClient:Arch:00007")
    r = decode(pk.relayed_request())
    assert (r.giaddr, r.ip_opt(Opt.REQUESTED_IP), r.ip_opt(Opt.SERVER_ID)) == (
        "10.9.0.254",
        "10.9.0.50",
        "10.9.0.1",
    )
    assert r.suboptions(Opt.RELAY_AGENT) == {1: b"eth3", 2: b"switch"}
    i = decode(pk.ipxe())
    assert i.user_classes == ("iPXE",)
    assert i.suboptions(Opt.IPXE_ENCAP)[19] == b"\x01"


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"iPXE", ("iPXE",)),  # plain string form sent by iPXE
        (b"\x04iPXE\x03lab", ("iPXE", "lab")),  # RFC 3004 section 4
        (b"\x09iPXE", ("\tiPXE",)),  # length past the end: plain form
        (b"", ("",)),
    ],
)
def test_user_class_forms(raw, expected):
    assert parse_user_class(raw) == expected


def test_long_options_concatenate_and_split():
    """RFC 3396: a 300-byte value is split on encode and joined on decode."""
    p = DhcpPacket(op=1, xid=1, chaddr=pk.MAC, options={Opt.MESSAGE_TYPE: b"\x01", 43: bytes(300)})
    wire = encode(p)
    assert wire.count(bytes((43, 255))) == 1 and bytes((43, 45)) in wire
    assert decode(wire).options[43] == bytes(300)


def _valid() -> bytes:
    return pk.plain()


def _set(buf: bytes, offset: int, value: bytes) -> bytes:
    return buf[:offset] + value + buf[offset + len(value) :]


# each malformed input and a word of the message it must raise
BAD = [
    ("empty", lambda: b"", "truncated"),
    ("truncated header", lambda: _valid()[:100], "truncated"),
    ("no magic", lambda: _set(_valid(), 236, b"\0\0\0\0"), "magic"),
    ("bad op", lambda: _set(_valid(), 0, b"\x07"), "op 7"),
    ("hlen 17", lambda: _set(_valid(), 2, b"\x11"), "hlen"),
    ("option past end", lambda: _valid()[:MIN_SIZE] + bytes((53, 1, 1, 12, 40)) + b"ab", "past"),
    ("no length byte", lambda: _valid()[:MIN_SIZE] + bytes((53, 1, 1, 12)), "length"),
    ("no end option", lambda: _valid()[:MIN_SIZE] + bytes((53, 1, 1)), "end option"),
    ("overload bad value", lambda: _valid()[:MIN_SIZE] + bytes((52, 1, 9, 255)), "overload"),
    (
        "overload points at garbage",
        lambda: _set(_valid()[:MIN_SIZE], 108, bytes((12, 200))) + bytes((52, 1, 1, 255)),
        "file",
    ),
]


@pytest.mark.parametrize("name, make, word", BAD, ids=[b[0] for b in BAD])
def test_malformed_raises_decode_error(name, make, word):
    with pytest.raises(DhcpDecodeError, match=word):
        decode(make())


def test_bad_suboptions_raise_decode_error():
    with pytest.raises(DhcpDecodeError):
        parse_suboptions(bytes((1, 10, 0)))
    assert parse_suboptions(b"\x00\x01\x01x\xff") == {1: b"x"}


def test_255_byte_client_id_decodes():
    p = decode(pk.plain(extra=[("client_id", bytes(range(255)))]))
    assert p.options[Opt.CLIENT_ID] == bytes(range(255))


def test_encode_pads_to_bootp_minimum():
    wire = encode(DhcpPacket(op=2, xid=7, chaddr=pk.MAC, options={53: b"\x02"}))
    assert len(wire) == 300 and struct.unpack_from("!I", wire, 4)[0] == 7


@pytest.mark.parametrize("name", sorted(pk.GOLDEN))
def test_decode_fills_every_field_and_stays_frozen(name):
    """decode fills a new DhcpPacket's __dict__ in one step: every field, nothing more."""
    p = decode(pk.GOLDEN[name]())
    assert list(vars(p)) == [f.name for f in dataclasses.fields(DhcpPacket)]
    assert p == DhcpPacket(**vars(p))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.xid = 1
