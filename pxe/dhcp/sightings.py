"""The port through which the DHCP service reports boots: "MAC booted with IP now".

Owns the :class:`BootSightings` protocol, the only thing the DHCP service
tells the core about a machine besides the boot policy question. The core
implements it (``provisiond.boots.BootRegistry``, an in-memory dict) and
hands per-boot secrets — the agent token, a SAN script's CHAP secret — only
to the address a sighting names. Reports happen after the reply is decided,
one dict write each, so the hot path stays free of the database.

=================  ======================================================
via                 ip
=================  ======================================================
``dhcp``            the address we ACKed to a network-boot client (full mode)
``proxy-4011``      the source address of its PXE request on port 4011
``proxy-offer``     ``None``: the client got its address elsewhere; the
                    first boot-script request in the boot window binds it
=================  ======================================================
"""

from __future__ import annotations

import socket
from typing import Protocol

from pxe.dhcp import bootfile
from pxe.dhcp import codec as c
from pxe.dhcp.codec import DhcpPacket

VIA_DHCP, VIA_PROXY_4011, VIA_PROXY_OFFER = "dhcp", "proxy-4011", "proxy-offer"


class BootSightings(Protocol):
    def booted(self, mac: str, ip: str | None, via: str) -> None: ...


def sighting(
    p: DhcpPacket, kind: int, data: bytes, source: tuple[str, int] | None
) -> tuple[str, str | None, str] | None:
    """(mac, ip, via) when the reply ``kind``/``data`` to ``p`` answers a booting machine."""
    if kind not in (c.ACK, c.OFFER) or bootfile.detect(p) is None:
        return None  # a full-mode offer is no boot yet; an OS's DHCP client is no boot
    yiaddr = socket.inet_ntoa(data[16:20])  # BOOTP header offset 16 (RFC 2131 section 2)
    if source is not None:
        return (p.chaddr, source[0], VIA_PROXY_4011)
    if kind == c.ACK and yiaddr != c.ZERO_IP:
        return (p.chaddr, yiaddr, VIA_DHCP)
    if kind == c.OFFER and yiaddr == c.ZERO_IP:
        return (p.chaddr, None, VIA_PROXY_OFFER)
    return None
