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

from sqlalchemy.engine import Dialect

from provisiond.db import Database
from provisiond.model import Resource, utcnow


def _update_sql(dialect: Dialect) -> tuple[str, Any]:
    """``UPDATE resource SET last_heartbeat = ? WHERE id = ?`` in the driver's paramstyle.

    ``updated_at`` stays: a heartbeat is not an inventory change, and the
    inventory refresher reloads everything when max(updated_at) moves.
    """
    table = Resource.__table__
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    quote = dialect.identifier_preparer.quote
    sql = (f"UPDATE {quote(table.name)} SET {quote('last_heartbeat')} = {mark} "
           f"WHERE {quote('id')} = {mark}")  # fmt: skip
    proc = table.c.last_heartbeat.type.bind_processor(dialect)
    return sql, proc or (lambda v: v)


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
        try:
            with db.transaction() as s:
                conn = s.connection()
                sql, convert = _update_sql(conn.dialect)
                # the driver's own executemany: SQLAlchemy's per-row parameter processing
                # was most of this flush's time in a py-spy profile (2,000 agents)
                conn.exec_driver_sql(sql, [(convert(beat), rid) for rid, beat in rows.items()])
        except Exception:
            with self._lock:  # keep them for the next flush; newer touches win
                for rid, beat in rows.items():
                    self._seen.setdefault(rid, beat)
            raise
        return len(rows)
