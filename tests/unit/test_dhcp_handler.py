"""Request -> reply decisions (full mode, relay, proxyDHCP), without sockets."""

from __future__ import annotations

import pytest

from pxe.dhcp.codec import ACK, NAK, OFFER, Opt, decode, dump, encode
from tests.unit import dhcp_packets as pk
from tests.unit.dhcplab import IP, SUBNETS, Policy, T, check_golden, make, run, subnet  # noqa: F401


@pytest.mark.parametrize(
    "name, make_request, file, siaddr",
    [
        ("offer_pxe_bios", lambda: pk.pxe("discover", 0), "undionly.kpxe", "10.9.0.1"),
        ("offer_pxe_uefi", lambda: pk.pxe("discover", 7), "ipxe.efi", "10.9.0.1"),
        (
            "offer_uefi_http",
            lambda: pk.pxe("discover", 16, vendor="HTTPClient"),
            "http://10.9.0.1:8080/assets/ipxe.efi",
            "0.0.0.0",
        ),
        (
            "offer_ipxe",
            pk.ipxe,
            "http://10.9.0.1:8080/boot/52-54-00-12-34-56.ipxe",
            "0.0.0.0",
        ),
        ("offer_plain", pk.plain, "", "0.0.0.0"),
    ],
)
def test_offer_golden(name, make_request, file, siaddr):
    h, stats, _ = make()
    r = run(h, make_request())
    assert r.kind == OFFER and r.dest == ("255.255.255.255", 68) and not r.durable
    p = decode(r.data)
    assert (p.yiaddr, p.file, p.siaddr) == ("10.9.0.100", file, siaddr)
    assert stats["offered"] == 1
    check_golden(name, dump(p))


def test_ipxe_reply_carries_no_pxedhcp():
    h, _, _ = make()
    p = decode(run(h, pk.ipxe()).data)
    assert p.suboptions(Opt.IPXE_ENCAP) == {176: b"\x01"}


def test_policy_none_ignores_machine():
    h, stats, policy = make(ignore={pk.MAC})
    assert run(h, pk.pxe("discover", 0)) is None
    assert stats["ignored_policy"] == 1 and policy.seen[0].mac == pk.MAC


def test_plain_client_does_not_ask_policy():
    h, _, policy = make(ignore={pk.MAC})
    assert run(h, pk.plain()).kind == OFFER and policy.seen == []


def dora(h, mac=pk.MAC, **kw):
    offer = decode(run(h, pk.plain(mac=mac, **kw)).data)
    req = pk.plain(
        "request",
        [("requested_addr", offer.yiaddr), ("server_id", "10.9.0.1"), ("hostname", b"../x")],
        mac=mac,
        **kw,
    )
    return offer, run(h, req)


def test_dora_ack_is_durable_and_hostname_sanitised():
    h, stats, _ = make()
    offer, ack = dora(h)
    assert ack.kind == ACK and decode(ack.data).yiaddr == offer.yiaddr
    (row,) = ack.durable
    assert (row.ip, row.mac, row.state, row.hostname) == (offer.yiaddr, pk.MAC, "bound", "")
    assert row.expires == T + 3600 and stats["acked"] == 1


def test_relay_selects_subnet_and_replies_to_giaddr():
    h, _, _ = make()
    offer, ack = dora(h, giaddr="10.20.0.254")
    assert offer.yiaddr == "10.20.0.100"
    assert ack.dest == ("10.20.0.254", 67)
    assert decode(ack.data).ip_opt(Opt.ROUTER) == "10.20.0.254"


def test_foreign_relay_subnet_is_silent():
    h, stats, _ = make()
    assert run(h, pk.plain(giaddr="192.168.7.1")) is None
    req = pk.plain("request", [("requested_addr", "192.168.7.9")], giaddr="192.168.7.1")
    assert run(h, req) is None
    assert stats["ignored_foreign_subnet"] == 2 and stats["nak"] == 0


def test_request_for_wrong_address_in_own_subnet_is_naked():
    h, stats, _ = make()
    dora(h, mac="52:54:00:00:00:01")  # takes .100
    bad = [("requested_addr", "10.9.0.100")]  # INIT-REBOOT for someone else's address
    r = run(h, pk.plain("request", bad))
    assert r.kind == NAK and r.dest == ("255.255.255.255", 68) and stats["nak"] == 1
    assert run(h, pk.plain("request", [("requested_addr", "10.77.0.5")])).kind == NAK


def test_request_selecting_another_server_is_silent():
    h, stats, _ = make()
    run(h, pk.plain())
    req = [("requested_addr", "10.9.0.100"), ("server_id", "10.9.0.2")]
    assert run(h, pk.plain("request", req)) is None and stats["ignored_other_server"] == 1


def test_renew_unicasts_to_ciaddr():
    h, _, _ = make()
    offer, _ = dora(h)
    r = run(h, pk.plain("request", ciaddr=offer.yiaddr), now=T + 1800)
    assert r.kind == ACK and r.dest == (offer.yiaddr, 68)


def test_inform_release_decline():
    h, _stats, _ = make()
    inform = decode(run(h, pk.plain("inform", ciaddr="10.9.0.50")).data)
    assert inform.yiaddr == "0.0.0.0" and Opt.LEASE_TIME not in inform.options
    offer, _ = dora(h)
    rel = run(h, pk.plain("release", [("server_id", "10.9.0.1")], ciaddr=offer.yiaddr))
    assert rel.data == b"" and rel.durable[0].state == "released"
    dec = [("requested_addr", offer.yiaddr), ("server_id", "10.9.0.1")]
    assert run(h, pk.plain("decline", dec)).durable[0].state == "declined"
    assert decode(run(h, pk.plain()).data).yiaddr != offer.yiaddr


def test_proxy_offer_has_no_address_and_ack_on_4011():
    h, _stats, _ = make()
    r = run(h, pk.pxe("discover", 0, giaddr="10.30.0.1"))
    p = decode(r.data)
    assert (p.yiaddr, p.file, p.text_opt(Opt.VENDOR_CLASS)) == (
        "0.0.0.0",
        "undionly.kpxe",
        "PXEClient",
    )
    assert p.ip_opt(Opt.SERVER_ID) == "10.9.0.1" and Opt.LEASE_TIME not in p.options
    check_golden("proxy_offer", dump(p))
    ack = run(h, pk.pxe("request", 0, ciaddr="10.30.0.50"), source=("10.30.0.50", 4011))
    assert ack.kind == ACK and ack.dest == ("10.30.0.50", 4011)
    assert decode(ack.data).yiaddr == "0.0.0.0" and not ack.durable


PROXY_CLIENTS = [
    ("proxy_pxe_bios", lambda kind, **kw: pk.pxe(kind, 0, **kw), "undionly.kpxe", "PXEClient"),
    ("proxy_pxe_uefi", lambda kind, **kw: pk.pxe(kind, 7, **kw), "ipxe.efi", "PXEClient"),
    (
        "proxy_ipxe",
        lambda kind, **kw: pk.ipxe(kind, **kw),
        "http://10.9.0.1:8080/boot/52-54-00-12-34-56.ipxe",
        "PXEClient",
    ),
    (
        "proxy_uefi_http",
        lambda kind, **kw: pk.pxe(kind, 16, vendor="HTTPClient", **kw),
        "http://10.9.0.1:8080/assets/ipxe.efi",
        "HTTPClient",
    ),
]


@pytest.mark.parametrize("name, make_request, file, vendor", PROXY_CLIENTS)
def test_every_proxy_answer_is_a_proxydhcp_offer(name, make_request, file, vendor):
    """Port 67 OFFER and port 4011 ACK: what iPXE's dhcp_has_pxeopts() and PXE 2.1 need."""
    only_proxy = (subnet("10.9.0.0/24", mode="proxy"),)
    h, stats, _ = make(subnets=only_proxy)
    offer = run(h, make_request("discover"))
    client = ("10.9.0.57", 68)
    ack = run(h, make_request("request", ciaddr=client[0]), source=client)
    assert (offer.dest, ack.dest) == (("255.255.255.255", 68), client)
    for reply, kind in ((offer, OFFER), (ack, ACK)):
        p = decode(reply.data)
        assert reply.kind == kind and not reply.durable
        assert p.text_opt(Opt.VENDOR_CLASS) == vendor  # iPXE: no 60 PXEClient, no proxy offer
        assert p.ip_opt(Opt.SERVER_ID) == "10.9.0.1"
        assert (p.yiaddr, p.siaddr, p.file, p.text_opt(Opt.BOOTFILE)) == (
            "0.0.0.0", "10.9.0.1", file, file,
        )  # fmt: skip
        assert Opt.LEASE_TIME not in p.options and Opt.IPXE_ENCAP not in p.options
        pxe_vendor = {6: b"\x08"} if name in ("proxy_pxe_bios", "proxy_ipxe") else {}
        assert p.suboptions(Opt.VENDOR_SPECIFIC) == pxe_vendor  # use the file, no menu
    check_golden(name, dump(decode(offer.data)))
    assert (stats["offered"], stats["acked"], stats["nak"]) == (1, 1, 0)


def test_proxy_ignores_port_67_request_and_4011_discover():
    """The site's server owns port 67 REQUESTs; a DISCOVER to 4011 is not PXE 2.1."""
    only_proxy = (subnet("10.9.0.0/24", mode="proxy"),)
    h, stats, _ = make(subnets=only_proxy)
    req = [("requested_addr", "10.9.0.57"), ("server_id", "10.9.0.2")]
    assert run(h, pk.ipxe("request", extra=req)) is None
    assert run(h, pk.ipxe("discover"), source=("10.9.0.57", 68)) is None
    assert stats["ignored_proxy_message"] == 2 and stats["nak"] == 0


def test_full_mode_ipxe_keeps_no_pxedhcp_and_no_vendor_class():
    """Full mode: 175.176 = 1 ends iPXE's ProxyDHCP wait; no option 60 (nothing to gain)."""
    h, _, _ = make()
    p = decode(run(h, pk.ipxe()).data)
    assert Opt.VENDOR_CLASS not in p.options and p.siaddr == "0.0.0.0"
    assert p.suboptions(Opt.IPXE_ENCAP) == {176: b"\x01"}


def test_proxy_mode_ignores_plain_clients_and_never_naks():
    only_proxy = (subnet("10.30.0.0/24", mode="proxy"),)
    h, stats, _ = make(subnets=only_proxy, address="10.30.0.1")
    assert run(h, pk.plain()) is None
    assert run(h, pk.pxe("request", 0, extra=[("requested_addr", "10.30.0.9")])) is None
    assert stats["nak"] == 0 and stats["ignored_proxy_not_pxe"] == 1


@pytest.mark.parametrize(
    "offset, value, reason",
    [(0, b"\x02", "dropped_not_request"), (2, b"\x10", "dropped_bad_hlen")],
)
def test_bad_header_fields_are_dropped_and_counted(offset, value, reason):
    h, stats, _ = make()
    raw = pk.plain()
    assert run(h, raw[:offset] + value + raw[offset + 1 :]) is None
    assert stats[reason] == 1


def test_pool_exhaustion_is_counted():
    tiny = (subnet("10.9.0.0/24", range_start=IP("10.9.0.100"), range_end=IP("10.9.0.100")),)
    h, stats, _ = make(subnets=tiny)
    dora(h, mac="52:54:00:00:00:01")
    assert run(h, pk.plain()) is None and stats["pool_exhausted"] == 1


# plain-client replies come from a cached tail; each must be the codec's own encoding
REPLIES = [
    ("offer", lambda mac, i: pk.plain(mac=mac), OFFER),
    ("offer, relayed", lambda mac, i: pk.plain(mac=mac, giaddr="10.20.0.254"), OFFER),
    (
        "ack",
        lambda mac, i: pk.plain("request", [("requested_addr", f"10.9.0.{100 + i}")], mac=mac),
        ACK,
    ),
    ("nak", lambda mac, i: pk.plain("request", [("requested_addr", "10.9.0.7")], mac=mac), NAK),
    ("inform", lambda mac, i: pk.plain("inform", mac=mac, ciaddr="10.9.0.150"), ACK),
    ("pxe offer", lambda mac, i: pk.pxe("discover", 0, mac=mac), OFFER),
]


@pytest.mark.parametrize("name, make_request, kind", REPLIES, ids=[r[0] for r in REPLIES])
def test_reply_bytes_are_the_codec_encoding(name, make_request, kind):
    h, _, _ = make()
    for i, mac in enumerate((pk.MAC, "52:54:00:00:00:09")):  # the second takes the cached tail
        r = run(h, make_request(mac, i))
        p = decode(r.data)
        assert r.kind == kind and p.chaddr == mac and p.xid == 0x2A2A2A2A
        assert encode(p) == r.data and len(r.data) >= 300
