"""Property-based fuzzing of the TFTP codec and of the real service's request port.

Properties:
- ``parse`` of any bytes returns a packet or raises :class:`MalformedPacket`;
- ``parse(p.pack()) == p`` for every packet type;
- ``clean_filename`` returns a relative name without ``..`` or raises
  :class:`PathRefused`; ``negotiate`` never raises and grants only what the
  limits allow; ``absolute_block`` maps only into (acked, sent];
- the running :class:`TftpService` (loopback, kernel-chosen port) classifies
  every datagram sent to its request port exactly once: malformed ones are
  counted in ``dropped_malformed``, and the serve loop never dies.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisiond import pxesettings
from provisiond.config import Config, ServicesConfig
from pxe.tftp.codec import (
    MAX_BLKSIZE,
    Ack,
    Data,
    Error,
    Limits,
    MalformedPacket,
    Opcode,
    OptionAck,
    PathRefused,
    Request,
    absolute_block,
    clean_filename,
    negotiate,
    parse,
)
from pxe.tftp.server import TftpService
from tests.fuzz.tally import tried

FIELD = st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=30)
OPTION_NAMES = st.sampled_from(["blksize", "tsize", "timeout", "windowsize", "x"])
OPTION_VALUES = st.one_of(st.integers(-5, 70000).map(str), FIELD)
OPTIONS = st.lists(st.tuples(st.one_of(OPTION_NAMES, FIELD), OPTION_VALUES), max_size=6)


@st.composite
def near_valid(draw) -> bytes:
    """Opcode + NUL-separated fields: reaches the request and option parsers."""
    opcode = draw(st.integers(0, 7)).to_bytes(2, "big")
    fields = draw(st.lists(st.one_of(FIELD, st.sampled_from(["octet", "netascii", "mail"])),
                           max_size=8))  # fmt: skip
    body = b"".join(f.encode() + b"\0" for f in fields)
    return opcode + body + draw(st.binary(max_size=4))


DATAGRAMS = st.one_of(st.binary(max_size=600), near_valid())


@given(DATAGRAMS)
def test_parse_raises_only_malformed(data):
    tried("tftp.parse")
    try:
        parse(data)
    except MalformedPacket:
        pass


LOWER = st.text(
    st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=20
).filter(lambda s: s == s.lower())
PACKETS = st.one_of(
    st.builds(
        Request,
        st.sampled_from([Opcode.RRQ, Opcode.WRQ]),
        FIELD.filter(bool),
        LOWER,
        st.lists(st.tuples(LOWER, FIELD), max_size=4).map(tuple),
    ),
    st.builds(Data, st.integers(0, 65535), st.binary(max_size=1500)),
    st.builds(Ack, st.integers(0, 65535)),
    st.builds(
        Error,
        st.integers(0, 65535),
        st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=40),
    ),
    st.builds(OptionAck, st.lists(st.tuples(LOWER, FIELD), max_size=4).map(tuple)),
)


@given(PACKETS)
def test_pack_parse_round_trip(packet):
    tried("tftp.round_trip")
    assert parse(packet.pack()) == packet


@given(st.one_of(FIELD, st.text(st.sampled_from("./\\a.\0"), max_size=20)))
def test_clean_filename_stays_inside(name):
    tried("tftp.clean_filename")
    try:
        cleaned = clean_filename(name)
    except PathRefused:
        return
    parts = cleaned.split("/")
    assert cleaned and not cleaned.startswith("/") and ".." not in parts and "\\" not in cleaned


@given(OPTIONS, st.one_of(st.none(), st.integers(0, 2**40)), st.integers(8, MAX_BLKSIZE))
def test_negotiate_grants_only_within_limits(options, size, max_blksize):
    tried("tftp.negotiate")
    limits = Limits(max_blksize=max_blksize)
    params, oack = negotiate([(n.lower(), v) for n, v in options], size, limits)
    assert 8 <= params.blksize <= max(512, max_blksize)
    assert 1 <= params.windowsize <= limits.max_windowsize
    names = [n for n, _ in oack]
    assert len(names) == len(set(names)) and set(names) <= {"blksize", "tsize", "timeout",
                                                              "windowsize"}  # fmt: skip


@given(st.integers(0, 65535), st.integers(-1, 200_000), st.integers(0, 200_000))
def test_absolute_block_only_newly_acknowledged(wire, acked, sent):
    tried("tftp.absolute_block")
    block = absolute_block(wire, acked, sent)
    assert block is None or (acked < block <= sent and block & 0xFFFF == wire)


# -- the running service ------------------------------------------------------

CLASSES = ("dropped_malformed", "wrq", "rrq")


@pytest.fixture(scope="module")
def tftp(tmp_path_factory):
    root = tmp_path_factory.mktemp("tftproot")
    (root / "undionly.kpxe").write_bytes(b"x" * 700)
    cfg = Config(
        address=ipaddress.IPv4Address("127.0.0.1"),
        services=ServicesConfig(tftp_port=0),
        boot_assets_dir=root,
    )
    svc = TftpService(pxesettings.tftp(cfg), max_retries=0)
    svc.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    yield svc, client
    client.close()
    svc.stop()


def _classified(svc: TftpService) -> int:
    return sum(svc.stats.get(k, 0) for k in CLASSES)


@given(st.one_of(DATAGRAMS, st.sampled_from([b"\0\x01undionly.kpxe\0octet\0"])))
def test_service_counts_every_request_datagram(tftp, data):
    tried("tftp.serve_loop")
    svc, client = tftp
    try:
        packet = parse(data)
        malformed = not isinstance(packet, Request)
    except MalformedPacket:
        malformed = True
    before, dropped = _classified(svc), svc.stats["dropped_malformed"]
    client.sendto(data, ("127.0.0.1", svc.port))
    deadline = time.monotonic() + 5
    while _classified(svc) == before:
        assert time.monotonic() < deadline, f"datagram {data!r} was never classified"
        time.sleep(0.0002)
    assert _classified(svc) == before + 1
    assert svc.stats["dropped_malformed"] == dropped + int(malformed)
    assert svc._loop is not None and svc._loop._thread.is_alive()
