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

from typing import Protocol

VIA_DHCP, VIA_PROXY_4011, VIA_PROXY_OFFER = "dhcp", "proxy-4011", "proxy-offer"


class BootSightings(Protocol):
    def booted(self, mac: str, ip: str | None, via: str) -> None: ...
