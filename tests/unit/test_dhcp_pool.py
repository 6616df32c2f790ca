"""Address allocation rules of one subnet (pure; time passed in)."""

from __future__ import annotations

import ipaddress

from provisiond.config import SubnetConfig
from pxe.dhcp.pool import BOUND, DECLINED, OFFER_HOLD, RELEASED, LeaseRow, Pool

A, B, C = "52:54:00:00:00:0a", "52:54:00:00:00:0b", "52:54:00:00:00:0c"
T = 1_000_000.0


def pool(first="10.9.0.10", last="10.9.0.12", lease=600) -> Pool:
    s = SubnetConfig(
        cidr=ipaddress.IPv4Network("10.9.0.0/24"),
        mode="full",
        range_start=ipaddress.IPv4Address(first),
        range_end=ipaddress.IPv4Address(last),
        router=ipaddress.IPv4Address("10.9.0.1"),
        lease_time=lease,
    )
    return Pool(s, server_ip="10.9.0.1")


def test_next_free_addresses_in_order_and_offer_hold():
    p = pool()
    ip = p.choose(A, None, T)
    p.offer(A, ip, T)
    assert ip == "10.9.0.10"
    assert p.choose(B, "10.9.0.10", T) == "10.9.0.11"  # requested, but held for A
    p.offer(B, "10.9.0.11", T)
    assert p.choose(B, None, T) == "10.9.0.11"  # B's own offer again
    assert p.choose(C, "10.9.0.10", T + OFFER_HOLD + 1) == "10.9.0.10"  # hold expired


def test_mac_keeps_previous_address_even_after_release():
    p = pool()
    ip = p.choose(A, None, T)
    assert [r.state for r in p.bind(A, ip, T)] == [BOUND]
    p.choose(B, None, T)
    assert p.choose(A, None, T + 1) == ip
    assert [r.state for r in p.release(A, ip, T + 2)] == [RELEASED]
    assert p.choose(A, None, T + 3) == ip


def test_bound_address_not_given_to_another_mac_until_expiry():
    p = pool(last="10.9.0.10")  # one address
    p.bind(A, "10.9.0.10", T)
    assert p.choose(B, None, T + 1) is None
    assert not p.acceptable(B, "10.9.0.10", T + 1)
    assert p.choose(B, None, T + 601) == "10.9.0.10"


def test_reservation_wins_and_is_never_given_to_others():
    p = pool()
    p.set_reservations({C: "10.9.0.10", A: "10.20.0.5"})  # A's is in another subnet
    assert p.reserved == {C: "10.9.0.10"}
    assert p.choose(A, "10.9.0.10", T) == "10.9.0.11"
    assert p.choose(C, None, T) == "10.9.0.10"
    assert p.acceptable(C, "10.9.0.10", T) and not p.acceptable(C, "10.9.0.11", T)


def test_reservation_outside_range_is_honoured():
    p = pool()
    p.set_reservations({A: "10.9.0.200"})
    assert p.choose(A, None, T) == "10.9.0.200" and p.acceptable(A, "10.9.0.200", T)


def test_router_server_network_broadcast_never_allocated():
    p = pool(first="10.9.0.0", last="10.9.0.3")
    got = set()
    for i, mac in enumerate((A, B, C)):
        ip = p.choose(mac, None, T + i)
        if ip:
            p.bind(mac, ip, T)
            got.add(ip)
    assert got == {"10.9.0.2", "10.9.0.3"}


def test_decline_takes_address_out_of_use():
    p = pool()
    p.bind(A, "10.9.0.10", T)
    assert [r.state for r in p.decline(A, "10.9.0.10", T)] == [DECLINED]
    assert p.choose(A, None, T + 1) == "10.9.0.11"
    assert not p.free_for("10.9.0.10", A, T + 1)


def test_rebinding_elsewhere_releases_old_row():
    p = pool()
    p.bind(A, "10.9.0.10", T)
    rows = p.bind(A, "10.9.0.11", T + 1)
    assert [(r.ip, r.state) for r in rows] == [("10.9.0.10", RELEASED), ("10.9.0.11", BOUND)]


def test_load_restores_leases():
    p = pool()
    p.load(LeaseRow("10.9.0.11", A, "10.9.0.0/24", BOUND, "", T + 100))
    assert p.choose(A, None, T) == "10.9.0.11"
    assert p.choose(B, "10.9.0.11", T) == "10.9.0.10"


def test_wraps_around():
    p = pool()
    for mac in (A, B, C):
        p.bind(mac, p.choose(mac, None, T), T)
    p.release(B, "10.9.0.11", T)
    assert p.choose("52:54:00:00:00:0d", None, T) == "10.9.0.11"
