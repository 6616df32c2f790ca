"""Who may receive a per-boot secret: the DHCP sightings and the boot registry."""

from __future__ import annotations

from provisiond.boots import BootRegistry
from pxe.dhcp.codec import decode
from pxe.dhcp.sightings import VIA_DHCP, VIA_PROXY_4011, VIA_PROXY_OFFER, sighting
from tests.unit import dhcp_packets as pk
from tests.unit.dhcplab import make, run

MAC = pk.MAC


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _seen(raw: bytes, source=None):
    h, _stats, _ = make()
    reply = run(h, raw, source=source)
    return sighting(decode(raw), reply.kind, reply.data, source) if reply else None


def test_sightings_of_full_mode_proxy_and_plain_clients():
    h, _stats, _ = make()
    disc = pk.pxe("discover", 0)
    r = run(h, disc)
    offer = decode(r.data)
    assert sighting(decode(disc), r.kind, r.data, None) is None  # an offer is no boot yet
    req = pk.pxe("request", 0, extra=[("requested_addr", offer.yiaddr), ("server_id", "10.9.0.1")])
    ack = run(h, req)
    assert sighting(decode(req), ack.kind, ack.data, None) == (MAC, offer.yiaddr, VIA_DHCP)
    # an OS's DHCP client (the agent's udhcpc) is not a boot
    plain = pk.plain("request", [("requested_addr", offer.yiaddr), ("server_id", "10.9.0.1")])
    r = run(h, plain)
    assert sighting(decode(plain), r.kind, r.data, None) is None
    # proxyDHCP: the offer (address unknown) and the 4011 request (its source)
    assert _seen(pk.pxe("discover", 0, giaddr="10.30.0.1")) == (MAC, None, VIA_PROXY_OFFER)
    src = ("10.30.0.50", 4011)
    assert _seen(pk.pxe("request", 0, ciaddr="10.30.0.50"), source=src) == (
        MAC, "10.30.0.50", VIA_PROXY_4011)  # fmt: skip


def test_token_once_per_boot_and_only_to_the_boot_address():
    reg = BootRegistry(window=60, clock=Clock())
    assert reg.claim_token(MAC, "10.0.0.5") is None
    assert reg.why_not(MAC, "10.0.0.5") == "provisiond's DHCP has not seen this MAC boot"
    reg.booted(MAC, "10.0.0.5", VIA_DHCP)
    assert reg.claim_token(MAC, "10.0.0.66") is None
    assert "belongs to 10.0.0.5" in reg.why_not(MAC, "10.0.0.66")
    assert reg.claim_token(MAC, "10.0.0.5").ip == "10.0.0.5"
    assert reg.claim_token(MAC, "10.0.0.5") is None  # once
    assert "already issued" in reg.why_not(MAC, "10.0.0.5")
    assert reg.boot_of(MAC, "10.0.0.5") is not None  # the SAN script may still go there
    reg.booted(MAC, "10.0.0.5", VIA_DHCP)  # a new DHCP exchange is a new boot
    assert reg.claim_token(MAC, "10.0.0.5") is not None


def test_boot_window_and_proxy_binding():
    clock = Clock()
    reg = BootRegistry(window=60, clock=clock)
    reg.booted(MAC, None, VIA_PROXY_OFFER)
    assert reg.boot_of(MAC, None) is None
    assert reg.claim_token(MAC, "10.30.0.7") is not None  # the first request binds it
    assert reg.boot_of(MAC, "10.30.0.8") is None
    reg.booted(MAC, "0.0.0.0", VIA_PROXY_4011)  # no usable source: like an offer
    clock.t += 61
    assert reg.claim_token(MAC, "10.30.0.7") is None and not reg.seen(MAC)
    assert "older than 60 s" in reg.why_not(MAC, "10.30.0.7")


def test_memory_is_bounded():
    reg = BootRegistry(cap=3, clock=Clock())
    for i in range(5):
        reg.booted(f"52:54:00:00:00:0{i}", f"10.0.0.{i}", VIA_DHCP)
    assert [reg.seen(f"52:54:00:00:00:0{i}") for i in range(5)] == [False, False, True, True, True]
