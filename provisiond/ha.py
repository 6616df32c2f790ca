"""N-to-1 high availability: the rules, with no clock, socket or database of their own.

Owns deciding, for one HA appliance at one moment, whether its machine is
dead, whether it may be failed over now, and onto which spare. The daemon's
watcher (:mod:`provisiond.hawatch`) gathers an :class:`Observation` per
appliance, asks :func:`decide`, and carries the :class:`Decision` out
(fence, move, boot, notify). openQRM's N-to-1 model: several HA appliances
name one HA pool; the pool's idle resources are their shared spares.

Signs of death (either is enough, each for longer than ``[ha] timeout``):

* the power driver says **off** while the appliance should run;
* the appliance's OS reported heartbeats (``POST /api/v1/ha/heartbeat``) and
  then stopped.

An appliance with neither a power driver nor a reporter is ``unwatched``:
HA cannot tell whether it runs, and says so instead of guessing. A power
status the driver cannot read (BMC unreachable) is not "off": it never
triggers a failover by itself.

Further rules: at most one failover in flight per appliance; a spare is
promised to one failover at a time (N appliances may share one spare, the
second waits with ``waiting: no standby available``); a machine that was
failed over less than ``hold_down`` seconds ago is not failed over again
(a flapping machine would otherwise ping-pong between spares).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable
from dataclasses import dataclass

from provisiond.power import PowerState


class HaState(enum.StrEnum):
    OFF = "off"  # HA is not on for this appliance
    WATCHING = "watching"  # alive
    UNWATCHED = "unwatched"  # no power driver and no heartbeat reporter
    SUSPECT = "suspect"  # a sign of death, for less than the timeout
    FENCING = "fencing"  # claimed by one daemon, which fences it now
    FAILING_OVER = "failing-over"  # fenced and moved; the spare is booting
    WAITING = "waiting"  # dead, no standby available yet
    FENCE_FAILED = "fence-failed"  # dead, could not be fenced: no takeover
    HOLD_DOWN = "hold-down"  # dead again within the hold-down time
    FAILED = "failed"  # the failover began but the spare did not come up


class Verdict(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    UNKNOWN = "unknown"
    UNWATCHED = "unwatched"


class Action(enum.StrEnum):
    NONE = "none"
    FAILOVER = "failover"
    WAIT = "wait"


@dataclass(frozen=True)
class Policy:
    timeout: float = 30.0  # seconds a sign of death must last
    hold_down: float = 600.0  # seconds after a failover before another one


@dataclass(frozen=True)
class Needs:
    """What a machine must have to run the appliance (0 / "" = no requirement)."""

    memory_bytes: int = 0
    cpus: int = 0
    firmware: str = ""
    arch: str = ""

    @classmethod
    def of(cls, inventory: dict | None) -> Needs:
        inv = inventory or {}
        cpu = inv.get("cpu") or {}
        return cls(
            memory_bytes=int(inv.get("memory_bytes") or 0),
            cpus=int(cpu.get("count") or 0),
            firmware=str(inv.get("firmware") or ""),
            arch=str(inv.get("arch") or ""),
        )


@dataclass(frozen=True)
class Candidate:
    """An idle resource of the pool, and what it has."""

    resource_id: int
    name: str
    has: Needs


@dataclass(frozen=True)
class Observation:
    """One HA appliance as the watcher sees it now."""

    appliance: str
    pool: str
    power: PowerState | None = None  # None: the machine has no power driver
    power_error: str = ""
    off_since: dt.datetime | None = None  # first poll that said off, in this off spell
    heartbeat_at: dt.datetime | None = None  # the OS reporter's last heartbeat, None: none
    failover_at: dt.datetime | None = None  # the last failover of this appliance
    in_flight: bool = False  # a failover of it has not finished


@dataclass(frozen=True)
class Decision:
    action: Action
    state: HaState
    reason: str
    spare: Candidate | None = None


def _secs(delta: dt.timedelta) -> int:
    return int(delta.total_seconds())


def judge(obs: Observation, now: dt.datetime, policy: Policy) -> tuple[Verdict, str]:
    """Is the appliance's machine dead? (verdict, the evidence in words)."""
    evidence: list[tuple[Verdict, str]] = []
    if obs.power == PowerState.OFF:
        since = obs.off_since or now
        off_for = _secs(now - since)
        kind = Verdict.DEAD if off_for >= policy.timeout else Verdict.SUSPECT
        evidence.append((kind, f"power is off for {off_for} s"))
    if obs.heartbeat_at is not None:
        quiet = _secs(now - obs.heartbeat_at)
        if quiet >= policy.timeout:
            evidence.append((Verdict.DEAD, f"no heartbeat for {quiet} s"))
        elif quiet >= policy.timeout / 2:
            evidence.append((Verdict.SUSPECT, f"no heartbeat for {quiet} s"))
    for kind in (Verdict.DEAD, Verdict.SUSPECT):
        found = [text for k, text in evidence if k == kind]
        if found:
            return kind, "; ".join(found)
    if obs.power is None and obs.heartbeat_at is None:
        return Verdict.UNWATCHED, (
            "no power driver and no heartbeat reporter: HA cannot tell whether it runs "
            "(`provisiond resource set-power`, or report heartbeats from its OS)"
        )
    if obs.power == PowerState.UNKNOWN and obs.heartbeat_at is None:
        return Verdict.UNKNOWN, f"power status unknown: {obs.power_error or 'no answer'}"
    return Verdict.ALIVE, "power on" if obs.power == PowerState.ON else "heartbeats arrive"


def fits(has: Needs, needs: Needs) -> bool:
    """True when a machine that has ``has`` can run what needs ``needs``."""
    return (
        has.memory_bytes >= needs.memory_bytes
        and has.cpus >= needs.cpus
        and (not needs.firmware or has.firmware == needs.firmware)
        and (not needs.arch or has.arch == needs.arch)
    )


def pick_spare(
    needs: Needs, candidates: Iterable[Candidate], promised: Iterable[int] = ()
) -> Candidate | None:
    """The smallest idle machine that fits and is not promised to another failover."""
    taken = set(promised)
    fitting = [c for c in candidates if c.resource_id not in taken and fits(c.has, needs)]
    if not fitting:
        return None
    return min(fitting, key=lambda c: (c.has.memory_bytes, c.has.cpus, c.resource_id))


def decide(obs: Observation, now: dt.datetime, policy: Policy, spare: Candidate | None) -> Decision:
    """What to do about one appliance now; ``spare`` is :func:`pick_spare`'s answer."""
    if obs.in_flight:
        return Decision(Action.NONE, HaState.FAILING_OVER, "a failover is in flight")
    verdict, evidence = judge(obs, now, policy)
    if verdict == Verdict.ALIVE:
        return Decision(Action.NONE, HaState.WATCHING, evidence)
    if verdict == Verdict.SUSPECT:
        return Decision(Action.NONE, HaState.SUSPECT, f"{evidence} (timeout {policy.timeout:g} s)")
    if verdict == Verdict.UNWATCHED:
        return Decision(Action.NONE, HaState.UNWATCHED, evidence)
    if verdict == Verdict.UNKNOWN:
        return Decision(Action.NONE, HaState.WATCHING, evidence)
    if obs.failover_at is not None:
        ago = _secs(now - obs.failover_at)
        if ago < policy.hold_down:
            return Decision(
                Action.NONE,
                HaState.HOLD_DOWN,
                f"dead ({evidence}) but failed over {ago} s ago; no second failover within "
                f"the hold-down of {policy.hold_down:g} s",
            )
    if spare is None:
        return Decision(
            Action.WAIT,
            HaState.WAITING,
            f"waiting: no standby available in HA pool '{obs.pool}' ({evidence})",
        )
    return Decision(
        Action.FAILOVER, HaState.FAILING_OVER, f"{evidence}: failing over to {spare.name}", spare
    )
