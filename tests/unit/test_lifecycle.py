"""Transition tables: every legal and every illegal move, for every kind."""

from __future__ import annotations

import itertools

import pytest

from provisiond import lifecycle as lc

TABLES = [
    (lc.ResourceState, lc.RESOURCE_TRANSITIONS, "resource"),
    (lc.ApplianceState, lc.APPLIANCE_TRANSITIONS, "appliance"),
    (lc.JobState, lc.JOB_TRANSITIONS, "job"),
]
PAIRS = [
    (enum, table, kind, a, b)
    for enum, table, kind in TABLES
    for a, b in itertools.product(list(enum), repeat=2)
]


def test_every_state_has_a_row():
    for enum, table, _ in TABLES:
        assert set(table) == set(enum)


@pytest.mark.parametrize(("enum", "table", "kind", "a", "b"), PAIRS,
                         ids=[f"{p[2]}:{p[3]}->{p[4]}" for p in PAIRS])  # fmt: skip
def test_transition(enum, table, kind, a, b):
    if b in table[a]:
        lc.check(a, b)
    else:
        with pytest.raises(lc.IllegalTransition) as err:
            lc.check(a, b)
        msg = str(err.value)
        assert f"'{a}'" in msg and f"'{b}'" in msg and kind in msg


def test_unknown_current_state_is_illegal():
    with pytest.raises(lc.IllegalTransition, match="'bogus'"):
        lc.check("bogus", lc.ResourceState.IDLE)


def test_transient_states_can_fail():
    for s in lc.TRANSIENT_RESOURCE:
        assert lc.ResourceState.FAILED in lc.RESOURCE_TRANSITIONS[s]
    for s in lc.TRANSIENT_APPLIANCE:
        assert lc.ApplianceState.FAILED in lc.APPLIANCE_TRANSITIONS[s]
    for s in lc.TRANSIENT_JOB:
        assert lc.JobState.FAILED in lc.JOB_TRANSITIONS[s]
    assert lc.restart_reason("deploying") == "daemon restarted during deploying"


def test_failed_resource_can_be_retried():
    lc.check(lc.ResourceState.FAILED, lc.ResourceState.DEPLOYING)
    lc.check(lc.ApplianceState.FAILED, lc.ApplianceState.STARTING)
