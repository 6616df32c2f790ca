"""Life cycles as data: the transition tables of resources, appliances and jobs.

This module is the only place that says which state may follow which.
Everything that changes a state calls :func:`check` (through
:func:`provisiond.resources.set_state`, :func:`provisiond.appliances.set_state`
and :func:`provisiond.jobs.transition`), so an illegal move raises
:class:`IllegalTransition` naming both states. ``TRANSIENT_*`` list the states
a daemon restart must not silently resume: on start-up the instance's own
(and those of instances whose lease expired) become ``failed`` with the
reason ``daemon restarted during <state>`` (:mod:`provisiond.recovery`).
"""

from __future__ import annotations

from enum import StrEnum


class ResourceState(StrEnum):
    NEW = "new"
    IDLE = "idle"
    DEPLOYING = "deploying"
    ACTIVE = "active"
    RELEASING = "releasing"
    FAILED = "failed"
    OFFLINE = "offline"
    KEY_CHANGED = "key-changed"  # registered with another host key; needs accept-key


class ApplianceState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    ACTIVE = "active"
    STOPPING = "stopping"
    FAILED = "failed"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


R, A, J = ResourceState, ApplianceState, JobState

RESOURCE_TRANSITIONS: dict[ResourceState, frozenset[ResourceState]] = {
    R.NEW: frozenset({R.IDLE, R.DEPLOYING, R.FAILED, R.OFFLINE}),
    R.IDLE: frozenset({R.IDLE, R.DEPLOYING, R.RELEASING, R.FAILED, R.OFFLINE, R.KEY_CHANGED}),
    R.DEPLOYING: frozenset({R.ACTIVE, R.FAILED, R.KEY_CHANGED}),
    R.ACTIVE: frozenset({R.RELEASING, R.FAILED, R.IDLE}),
    R.RELEASING: frozenset({R.IDLE, R.FAILED, R.KEY_CHANGED}),
    R.FAILED: frozenset({R.IDLE, R.DEPLOYING, R.RELEASING, R.OFFLINE, R.KEY_CHANGED}),
    R.OFFLINE: frozenset({R.IDLE, R.FAILED, R.DEPLOYING, R.KEY_CHANGED}),
    # only `resource accept-key` (-> idle) or giving up on the machine leaves it
    R.KEY_CHANGED: frozenset({R.IDLE, R.FAILED}),
}

APPLIANCE_TRANSITIONS: dict[ApplianceState, frozenset[ApplianceState]] = {
    A.STOPPED: frozenset({A.STARTING}),
    A.STARTING: frozenset({A.ACTIVE, A.FAILED}),
    A.ACTIVE: frozenset({A.STOPPING, A.FAILED}),
    A.STOPPING: frozenset({A.STOPPED, A.FAILED}),
    A.FAILED: frozenset({A.STARTING, A.STOPPING, A.STOPPED}),
}

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    J.QUEUED: frozenset({J.RUNNING, J.CANCELLED, J.FAILED}),
    J.RUNNING: frozenset({J.SUCCEEDED, J.FAILED, J.CANCELLED}),
    J.SUCCEEDED: frozenset(),
    J.FAILED: frozenset(),
    J.CANCELLED: frozenset(),
}

TRANSIENT_RESOURCE = frozenset({R.DEPLOYING, R.RELEASING})
TRANSIENT_APPLIANCE = frozenset({A.STARTING, A.STOPPING})
TRANSIENT_JOB = frozenset({J.QUEUED, J.RUNNING})

_TABLES = {
    ResourceState: ("resource", RESOURCE_TRANSITIONS),
    ApplianceState: ("appliance", APPLIANCE_TRANSITIONS),
    JobState: ("job", JOB_TRANSITIONS),
}


class IllegalTransition(ValueError):
    def __init__(self, kind: str, current: str, target: str) -> None:
        self.kind, self.current, self.target = kind, current, target
        allowed = ", ".join(sorted(_allowed(kind, current))) or "nothing (final state)"
        super().__init__(
            f"{kind} cannot go from '{current}' to '{target}' (from '{current}' it may go to: "
            f"{allowed})"
        )


def _allowed(kind: str, current: str) -> set[str]:
    for enum, (name, table) in _TABLES.items():
        if name == kind and current in enum.__members__.values():
            return {str(s) for s in table[enum(current)]}
    return set()


def check(current: StrEnum | str, target: StrEnum) -> None:
    """Raise IllegalTransition unless ``current -> target`` is in the table."""
    enum = type(target)
    kind, table = _TABLES[enum]
    try:
        cur = enum(current)
    except ValueError:
        raise IllegalTransition(kind, str(current), str(target))
    if target not in table[cur]:
        raise IllegalTransition(kind, str(cur), str(target))


def restart_reason(state: str) -> str:
    return f"daemon restarted during {state}"
