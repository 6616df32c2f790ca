"""Tests of pxe.dns.clients: who may recurse, and response-rate limiting (fake clock)."""

from __future__ import annotations

import ipaddress

import pytest

from pxe.dns.clients import Action, ClientFilter, RateLimit, ResponseRateLimiter

NETS = [ipaddress.ip_network("10.77.0.0/24"), ipaddress.ip_network("fd00::/64")]


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("10.77.0.9", True),
        ("10.77.1.9", False),
        ("127.0.0.1", True),  # loopback always
        ("127.8.9.10", True),
        ("::1", True),
        ("fd00::5", True),
        ("fd01::5", False),
        ("192.0.2.66", False),
        ("not-an-address", False),
    ],
)
def test_client_filter(address, allowed):
    assert ClientFilter(NETS).allows(address) is allowed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(**kw) -> tuple[ResponseRateLimiter, Clock]:
    clock = Clock()
    return ResponseRateLimiter(RateLimit(**kw), clock), clock


def test_burst_then_slip_every_second_limited_reply():
    rrl, _ = limiter(per_second=5, slip=2)
    actions = [rrl.check("10.0.0.1") for _ in range(11)]
    assert actions[:5] == [Action.SEND] * 5
    assert actions[5:] == [Action.DROP, Action.SLIP] * 3


def test_tokens_refill_with_time_up_to_one_second_of_burst():
    rrl, clock = limiter(per_second=10, slip=0)
    assert [rrl.check("10.0.0.1") for _ in range(11)][-1] is Action.DROP
    clock.now += 0.5  # 5 tokens back
    assert [rrl.check("10.0.0.1") for _ in range(6)] == [Action.SEND] * 5 + [Action.DROP]
    clock.now += 3600  # never more than per_second saved up
    assert sum(rrl.check("10.0.0.1") is Action.SEND for _ in range(20)) == 10


def test_one_bucket_per_prefix():
    rrl, _ = limiter(per_second=2, slip=1)
    assert [rrl.check(a) for a in ("10.0.0.1", "10.0.0.200", "10.0.0.3")] == [
        Action.SEND,
        Action.SEND,
        Action.SLIP,  # same /24
    ]
    assert rrl.check("10.0.1.1") is Action.SEND  # another /24
    assert rrl.check("2001:db8:0:ff::1") is Action.SEND
    assert rrl.check("2001:db8:0:ee::1") is Action.SEND  # same /56
    assert rrl.check("2001:db8:0:1::1") is Action.SLIP


def test_zero_rate_means_no_limit_and_no_table():
    rrl, _ = limiter(per_second=0)
    assert all(rrl.check(f"10.{i % 250}.0.1") is Action.SEND for i in range(1000))
    assert len(rrl) == 0


def test_table_is_bounded_least_recently_seen_evicted():
    rrl, _ = limiter(per_second=1, slip=0, max_clients=100)
    rrl.check("10.0.0.1")  # 10.0.0/24 has spent its token
    for i in range(1, 100):
        rrl.check(f"10.1.{i}.1")
    assert rrl.check("10.0.0.1") is Action.DROP  # still remembered (touched: now newest)
    for i in range(100, 300):  # 200 spoofed prefixes
        rrl.check(f"10.1.{i % 256}.{i // 256}")
    assert len(rrl) == 100
    assert rrl.check("10.0.0.1") is Action.SEND  # evicted, starts afresh
