"""HA pools and reporters: the database side of N-to-1 HA that CLI, API and UI share.

Owns making a resource a spare of an HA pool, the HA status listing (each
HA appliance with its state, and each pool's spares), minting an
appliance's heartbeat reporter token and recording a heartbeat. The rules
are :mod:`provisiond.ha`; the loop that fails over is :mod:`provisiond.hawatch`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisiond import appliances, events
from provisiond.lifecycle import ResourceState as RS
from provisiond.model import Appliance, Resource, utcnow
from provisiond.present import iso
from provisiond.security import hash_token, new_token


def set_pool(session: Session, res: Resource, pool: str | None, actor: str = "cli") -> None:
    """Make ``res`` a spare of ``pool`` (None or "": of no pool)."""
    pool = appliances.check_pool(pool) if pool else None
    before = res.ha_pool
    res.ha_pool = pool
    events.record(session, actor, "ha.spare", res.display_name,
                  f"HA pool {before or 'none'} -> {pool or 'none'}")  # fmt: skip


def status(session: Session) -> dict[str, Any]:
    """HA appliances and, per pool, its spares (idle ones can take over)."""
    apps = session.scalars(select(Appliance).where(Appliance.ha.is_(True)).order_by(Appliance.id))
    rows = [
        {
            "name": a.name,
            "resource": a.resource.display_name,
            "state": a.state,
            "ha_pool": a.ha_pool,
            "ha_state": a.ha_state,
            "ha_reason": a.ha_reason,
            "ha_failover_at": iso(a.ha_failover_at),
            "ha_heartbeat_at": iso(a.ha_heartbeat_at),
        }
        for a in apps
    ]
    busy = {r: a for r, a in session.execute(select(Appliance.resource_id, Appliance.name))}
    spares = [
        {
            "name": r.display_name,
            "ha_pool": r.ha_pool,
            "state": r.state,
            "appliance": busy.get(r.id),
            "standby": r.state == RS.IDLE and r.id not in busy,
        }
        for r in session.scalars(
            select(Resource).where(Resource.ha_pool.is_not(None)).order_by(Resource.id)
        )
    ]
    return {"appliances": rows, "spares": spares}


def new_reporter_token(session: Session, app: Appliance, actor: str = "cli") -> str:
    """A fresh heartbeat token for ``app``'s OS reporter (shown once; its hash is kept)."""
    token = new_token()
    app.ha_token_hash = hash_token(token)
    app.ha_heartbeat_at = None
    events.record(session, actor, "ha.token", app.name, "new heartbeat reporter token")
    return token


def heartbeat(session: Session, token: str) -> str | None:
    """Record a heartbeat of the appliance whose reporter token this is; its name or None."""
    if len(token) < 16:
        return None
    app = session.scalars(
        select(Appliance).where(Appliance.ha_token_hash == hash_token(token))
    ).first()
    if app is None or not app.ha:
        return None
    app.ha_heartbeat_at = utcnow()
    return app.name
