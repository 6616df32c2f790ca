"""Audit events: who did what to which object, and when.

Owns writing :class:`provisiond.model.Event` rows. Callers pass the session
of the change they audit, so the event commits (or rolls back) with it.
Details are passed through :func:`provisiond.logs.redact` so no secret lands
in the audit trail.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from provisiond.logs import redact
from provisiond.model import Event


def record(session: Session, actor: str, action: str, target: str = "", detail: str = "") -> Event:
    ev = Event(actor=actor, action=action, target=target, detail=redact(detail)[:4000])
    session.add(ev)
    return ev
