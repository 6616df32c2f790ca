"""Racks: several provisiond instances on one database, and which one serves a machine.

Owns the rules that make N instances (one per rack / L2 segment) share one
inventory, as MAAS's rack controllers or Ironic's conductors do:

* **A machine belongs to the rack that reaches it.** ``resource.owner`` is
  the instance whose agent channel the machine's agent registered with (or
  came back to after being offline): :func:`adopt`. That rack is the one
  that can export its iSCSI targets, answer its boot scripts and hand its
  agent commands.
* **A job runs exactly once, on that rack.** :func:`claimable` is the
  condition a job runner adds to its claim: jobs without a resource, of
  resources nobody owns, of resources this instance owns, or of resources
  whose rack's lease has expired (someone must run or fail them). The claim
  itself is a conditional ``UPDATE ... WHERE state = 'queued'``: of two
  runners that race for one job exactly one updates a row (PostgreSQL
  re-checks the condition after the first commits; SQLite has one writer).
  Agent commands need no claim rule: a machine's long poll reaches only its
  own rack.
* **A rack that stops heartbeating** (its lease, :mod:`provisiond.instance`,
  expired: killed, crashed, cut off from the database) loses its machines:
  :func:`sweep_expired`, run by every other instance's scheduler, puts its
  idle and offline-able machines ``offline`` with the reason, and fails its
  transient work by :mod:`provisiond.recovery`'s rules, so nothing waits on a
  dead rack. Rows are taken ``FOR UPDATE SKIP LOCKED``: two surviving racks
  never both transition one machine. When the rack comes back, its agents'
  next heartbeat brings their machines back to ``idle``.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from provisiond import recovery, resources
from provisiond.lifecycle import ResourceState as RS
from provisiond.model import Instance, Job, Resource, utcnow

# machines whose agent depended on the rack and can be called offline
OFFLINE_FROM = (RS.IDLE, RS.NEW)


def adopt(res: Resource, me: str) -> None:
    """The machine's agent reached instance ``me``: that rack serves it from now on."""
    res.owner = me


def claimable(me: str, now: dt.datetime | None = None) -> ColumnElement[bool]:
    """The condition on ``Job`` rows that instance ``me`` may claim (see the module)."""
    now = now or utcnow()
    alive = select(Instance.id).where(Instance.expires_at > now)
    owner = (
        select(Resource.owner).where(Resource.id == Job.resource_id).correlate(Job)
    ).scalar_subquery()
    return or_(Job.resource_id.is_(None), owner.is_(None), owner == me, owner.not_in(alive))


def expired(session: Session, me: str, now: dt.datetime | None = None) -> dict[str, dt.datetime]:
    """Other instances whose lease has run out: id -> when it expired."""
    now = now or utcnow()
    rows = session.execute(
        select(Instance.id, Instance.expires_at).where(
            Instance.expires_at <= now, Instance.id != me
        )
    )
    return {row.id: row.expires_at for row in rows}


def offline_reason(rack: str, expires_at: dt.datetime) -> str:
    return (
        f"rack {rack} stopped heartbeating (its lease expired at "
        f"{expires_at:%Y-%m-%d %H:%M:%S} UTC); the machine's agent talks to that rack"
    )


def sweep_expired(session: Session, me: str, now: dt.datetime | None = None) -> list[str]:
    """Machines of expired racks go offline, their transient work fails; returns what changed."""
    now = now or utcnow()
    gone = expired(session, me, now)
    if not gone:
        return []
    changed: list[str] = []
    rows = session.scalars(
        select(Resource)
        .where(Resource.owner.in_(list(gone)), Resource.state.in_([str(s) for s in OFFLINE_FROM]))
        .with_for_update(skip_locked=True)
    ).all()
    for res in rows:
        reason = offline_reason(res.owner, gone[res.owner])
        resources.set_state(session, res, RS.OFFLINE, reason)
        changed.append(f"resource {res.display_name}: offline: {reason}")
    for f in recovery.recover(session, me, now, running=True):
        changed.append(f"{f.kind} {f.name}: {f.reason}")
    return changed
