"""The HA rules (provisiond.ha), table-driven: when is a machine dead, what happens then."""

from __future__ import annotations

import datetime as dt

import pytest

from provisiond.ha import (
    Action,
    Candidate,
    HaState,
    Needs,
    Observation,
    Policy,
    Verdict,
    decide,
    fits,
    judge,
    pick_spare,
)
from provisiond.power import PowerState

NOW = dt.datetime(2026, 1, 1, 12, 0, 0)
POLICY = Policy(timeout=30, hold_down=600)
GiB = 1 << 30


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


def obs(**kw) -> Observation:
    return Observation(appliance="web1", pool="p1", **kw)


SPARE = Candidate(7, "spare1", Needs(2 * GiB, 2, "bios"))


@pytest.mark.parametrize(
    "o, verdict, words",
    [
        (obs(power=PowerState.ON), Verdict.ALIVE, "power on"),
        (obs(power=PowerState.OFF, off_since=ago(5)), Verdict.SUSPECT, "off for 5 s"),
        (obs(power=PowerState.OFF, off_since=ago(30)), Verdict.DEAD, "off for 30 s"),
        (obs(power=PowerState.OFF), Verdict.SUSPECT, "off for 0 s"),  # first poll that says off
        (obs(heartbeat_at=ago(3)), Verdict.ALIVE, "heartbeats arrive"),
        (obs(heartbeat_at=ago(20)), Verdict.SUSPECT, "no heartbeat for 20 s"),
        (obs(heartbeat_at=ago(31)), Verdict.DEAD, "no heartbeat for 31 s"),
        # a running power state does not save a machine whose OS stopped reporting
        (obs(power=PowerState.ON, heartbeat_at=ago(45)), Verdict.DEAD, "no heartbeat for 45 s"),
        (
            obs(power=PowerState.OFF, off_since=ago(40), heartbeat_at=ago(40)),
            Verdict.DEAD,
            "power is off for 40 s; no heartbeat for 40 s",
        ),
        (obs(), Verdict.UNWATCHED, "no power driver and no heartbeat reporter"),
        # an unreachable BMC is not "off"
        (
            obs(power=PowerState.UNKNOWN, power_error="BMC 10.0.0.9 unreachable"),
            Verdict.UNKNOWN,
            "BMC 10.0.0.9 unreachable",
        ),
        (obs(power=PowerState.UNKNOWN, heartbeat_at=ago(2)), Verdict.ALIVE, "heartbeats"),
    ],
)
def test_judge(o, verdict, words):
    got, why = judge(o, NOW, POLICY)
    assert got == verdict
    assert words in why


@pytest.mark.parametrize(
    "o, spare, action, state, words",
    [
        (obs(power=PowerState.ON), SPARE, Action.NONE, HaState.WATCHING, "power on"),
        (
            obs(power=PowerState.OFF, off_since=ago(10)),
            SPARE,
            Action.NONE,
            HaState.SUSPECT,
            "timeout 30 s",
        ),
        (
            obs(power=PowerState.OFF, off_since=ago(31)),
            SPARE,
            Action.FAILOVER,
            HaState.FAILING_OVER,
            "failing over to spare1",
        ),
        (
            obs(power=PowerState.OFF, off_since=ago(31)),
            None,
            Action.WAIT,
            HaState.WAITING,
            "waiting: no standby available in HA pool 'p1'",
        ),
        # at most one failover in flight per appliance
        (
            obs(power=PowerState.OFF, off_since=ago(99), in_flight=True),
            SPARE,
            Action.NONE,
            HaState.FAILING_OVER,
            "in flight",
        ),
        # hold-down: a flapping machine is not failed over twice
        (
            obs(heartbeat_at=ago(60), failover_at=ago(100)),
            SPARE,
            Action.NONE,
            HaState.HOLD_DOWN,
            "failed over 100 s ago",
        ),
        (
            obs(heartbeat_at=ago(60), failover_at=ago(601)),
            SPARE,
            Action.FAILOVER,
            HaState.FAILING_OVER,
            "no heartbeat for 60 s",
        ),
        (obs(), SPARE, Action.NONE, HaState.UNWATCHED, "cannot tell"),
        (
            obs(power=PowerState.UNKNOWN, power_error="timeout"),
            SPARE,
            Action.NONE,
            HaState.WATCHING,
            "power status unknown: timeout",
        ),
    ],
)
def test_decide(o, spare, action, state, words):
    d = decide(o, NOW, POLICY, spare)
    assert (d.action, d.state) == (action, state), d
    assert words in d.reason
    assert (d.spare is not None) == (action == Action.FAILOVER)


@pytest.mark.parametrize(
    "has, needs, ok",
    [
        (Needs(2 * GiB, 2, "bios"), Needs(2 * GiB, 2, "bios"), True),
        (Needs(4 * GiB, 4, "bios"), Needs(2 * GiB, 2, ""), True),
        (Needs(1 * GiB, 4, "bios"), Needs(2 * GiB, 2, "bios"), False),  # too little memory
        (Needs(4 * GiB, 1, "bios"), Needs(2 * GiB, 2, "bios"), False),  # too few CPUs
        (Needs(4 * GiB, 4, "uefi"), Needs(2 * GiB, 2, "bios"), False),  # other firmware
        (Needs(4 * GiB, 4, "uefi", "arm64"), Needs(0, 0, "", "x86_64"), False),
        (Needs(), Needs(), True),
    ],
)
def test_fits(has, needs, ok):
    assert fits(has, needs) is ok


def test_pick_spare_smallest_fitting_not_promised():
    small = Candidate(3, "small", Needs(1 * GiB, 1, "bios"))
    mid = Candidate(4, "mid", Needs(2 * GiB, 2, "bios"))
    big = Candidate(5, "big", Needs(8 * GiB, 8, "bios"))
    uefi = Candidate(6, "uefi", Needs(2 * GiB, 2, "uefi"))
    need = Needs(2 * GiB, 2, "bios")
    pool = [big, uefi, small, mid]
    assert pick_spare(need, pool) == mid
    assert pick_spare(need, pool, promised={4}) == big
    assert pick_spare(need, pool, promised={4, 5}) is None
    assert pick_spare(need, []) is None


def test_two_appliances_share_one_spare_the_second_waits():
    dead = obs(power=PowerState.OFF, off_since=ago(60))
    promised: set[int] = set()
    first = decide(dead, NOW, POLICY, pick_spare(Needs(), [SPARE], promised))
    assert first.action == Action.FAILOVER
    promised.add(first.spare.resource_id)
    second = decide(dead, NOW, POLICY, pick_spare(Needs(), [SPARE], promised))
    assert (second.action, second.state) == (Action.WAIT, HaState.WAITING)
    assert second.reason.startswith("waiting: no standby available")


def test_needs_of_inventory():
    inv = {"cpu": {"count": 4, "model": "x"}, "memory_bytes": 3 * GiB, "firmware": "uefi"}
    assert Needs.of(inv) == Needs(3 * GiB, 4, "uefi", "")
    assert Needs.of(None) == Needs()
    assert Needs.of({"cpu": {"count": None}, "memory_bytes": None}) == Needs()
