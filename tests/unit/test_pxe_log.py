"""pxe.log.RateLimitedLog: the one rate-limited warning of the three servers (fake clock)."""

from __future__ import annotations

import logging

import pytest

from pxe.log import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# (period, burst, [(time offset, key)], expected logged lines)
CASES = [
    ("once per period", 60, 1, [(0, "a"), (1, "a"), (2, "a")], ["a"]),
    ("after the period, with the count", 60, 1, [(0, "a"), (1, "a"), (60, "a")],
     ["a", "a (1 similar suppressed)"]),
    ("keys are independent", 60, 1, [(0, "a"), (0, "b"), (1, "a")], ["a", "b"]),
    ("a burst per window", 10, 3, [(0, "a")] * 5, ["a", "a", "a"]),
    ("the next window reports the burst's overflow", 10, 2, [(0, "a")] * 4 + [(10, "a")],
     ["a", "a", "a (2 similar suppressed)"]),
]  # fmt: skip


@pytest.mark.parametrize(("period", "burst", "events", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])  # fmt: skip
def test_rate_limited_log(period, burst, events, expected, caplog):
    clock = Clock()
    log = logging.getLogger("provisiond.test-ratelimit")
    rl = RateLimitedLog(period, log, burst=burst, clock=clock)
    start = clock.now
    with caplog.at_level(logging.WARNING, logger=log.name):
        for offset, key in events:
            clock.now = start + offset
            rl.warning(key, key)
    assert [r.getMessage() for r in caplog.records] == expected
    assert rl.suppressed == len(events) - len(expected) - sum(
        int(m.split("(")[1].split()[0]) for m in expected if "suppressed" in m
    )
