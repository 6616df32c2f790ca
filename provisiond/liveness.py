"""Liveness: the last sign of life of every agent, kept in memory, group-committed.

Owns :class:`Liveness`. A heartbeat, or the start or end of a long poll,
costs a dict write, not a database transaction: :meth:`Liveness.flush`
writes every changed ``resources.last_heartbeat`` in *one* transaction. A
poll that merely waits is not a sign of life (a machine that died mid-poll
sends nothing): the agent's heartbeats, sent on their own schedule, are. The agent service
(:mod:`provisiond.agentd`) flushes once a second; the scheduler flushes
before its offline sweep, so the sweep never judges a stale row. The
database stays the place where other processes (CLI, API, other instances)
read liveness, at most one flush interval behind.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import bindparam, update

from provisiond.db import Database
from provisiond.model import Resource, utcnow


class Liveness:
    """Last signs of life per resource, kept in memory and group-committed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, Any] = {}  # resource id -> datetime, not yet written

    def touch(self, resource_id: int) -> None:
        with self._lock:
            self._seen[resource_id] = utcnow()

    def pending(self) -> int:
        with self._lock:
            return len(self._seen)

    def flush(self, db: Database) -> int:
        """Write every pending ``last_heartbeat`` in one transaction; returns rows."""
        with self._lock:
            rows, self._seen = self._seen, {}
        if not rows:
            return 0
        table = Resource.__table__
        stmt = (
            update(table)
            .where(table.c.id == bindparam("rid"))
            # updated_at stays: a heartbeat is not an inventory change, and the
            # inventory refresher reloads everything when max(updated_at) moves
            .values(last_heartbeat=bindparam("beat"), updated_at=table.c.updated_at)
        )
        try:
            with db.transaction() as s:
                s.connection().execute(
                    stmt, [{"rid": rid, "beat": beat} for rid, beat in rows.items()]
                )
        except Exception:
            with self._lock:  # keep them for the next flush; newer touches win
                for rid, beat in rows.items():
                    self._seen.setdefault(rid, beat)
            raise
        return len(rows)
