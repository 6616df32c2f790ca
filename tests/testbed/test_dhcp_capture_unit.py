"""vm-testbed/dhcp_capture.py: which frames become capture rows (no sockets, no QEMU)."""

from __future__ import annotations

import pytest
from dhcp_capture import parse  # vm-testbed/ is on sys.path (conftest.py)
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

BOOT = BOOTP(op=1, xid=7, chaddr=bytes.fromhex("525400000001")) / DHCP(
    options=[("message-type", "request"), "end"]
)


@pytest.mark.parametrize(
    "frame, kept",
    [
        (Ether() / IP(src="10.0.0.9", dst="10.0.0.1") / UDP(sport=4011, dport=4011) / BOOT, True),
        (Ether() / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / BOOT, True),
        (Ether() / IP(src="10.0.0.1", dst="10.0.0.9") / UDP(sport=53, dport=5353) / b"x", False),
        (Ether() / IP() / TCP(sport=67, dport=68), False),
        (Ether() / ARP(), False),
    ],
)
def test_only_dhcp_datagrams_are_kept(frame, kept):
    row = parse(bytes(frame))
    assert (row is not None) == kept
    if kept:
        assert (row["src"], row["sport"], row["dport"]) == (
            frame[IP].src, frame[UDP].sport, frame[UDP].dport,
        )  # fmt: skip
        assert bytes.fromhex(row["bootp"]) == bytes(BOOT)
