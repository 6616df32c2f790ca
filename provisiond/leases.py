"""Durable leases with group commit: the SQL implementation of ``pxe``'s lease store.

:class:`SqlLeaseStore` satisfies :class:`pxe.dhcp.leases.LeaseStore` (the DHCP
server knows only that protocol; the composition root passes this one in).
Owns loading the lease table and the reservations (``Resource.reserved_ip``)
into the in-memory pools at start, and :meth:`SqlLeaseStore.write`, which
commits the lease rows of one batch of requests in one transaction. The
serve loop (``server``) drains every request waiting on its socket, answers
them, writes the batch's lease rows with one ``write`` and only then sends
the batch's ACKs: an ACKed lease is on disk before the client hears of it
(SQLite WAL survives ``kill -9``), and the batch grows with the offered rate.

The write path bypasses SQLAlchemy: one DBAPI connection (sqlite3 or
psycopg, taken from the engine so that its pragmas apply) runs
``executemany`` of plain tuples for one prepared upsert and commits. Measured
on this machine (bench/dhcp/run.py, py-spy): a SQLAlchemy Core transaction
per ACK cost ~60 us of Python against ~15 us for the DBAPI path, and the
hand-off to a writer thread (condition variable, GIL switches, futex calls)
cost as much again; both were most of provisiond's ~2x Kea's CPU per DORA.

SQLite checkpoints: by default the connection whose commit pushes the WAL
past 1,000 pages copies the WAL into the database file (with an fsync) in
that commit — measured as 5-450 ms stalls of every queued ACK
(bench/dhcp/latency.py). The writer therefore commits on a connection of its
own with ``wal_autocheckpoint=0``, and a maintenance thread runs
``PRAGMA wal_checkpoint(PASSIVE)`` once a second on another connection (the
sqlite3 module releases the GIL meanwhile) and re-reads the reservations
every few seconds. Durability is unchanged: each commit is in the WAL
before its ACK leaves.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy import event, select, text

from provisiond.db import Database, make_engine
from provisiond.model import Lease, Resource
from pxe.dhcp.pool import LeaseRow

RESERVATION_REFRESH = 5.0  # seconds between re-reads of Resource.reserved_ip
CHECKPOINT_INTERVAL = 1.0  # seconds between passive WAL checkpoints (SQLite)
COLUMNS = ("ip", "mac", "subnet", "state", "hostname", "expires_at", "updated_at")


def _to_dt(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(tzinfo=None)


def _to_epoch(value: dt.datetime) -> float:
    return value.replace(tzinfo=dt.UTC).timestamp()


def upsert_sql(dialect) -> str:
    """The lease upsert in the driver's own SQL (SQLite >= 3.24 and PostgreSQL agree)."""
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    sets = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])
    return (
        f"INSERT INTO {Lease.__tablename__} ({', '.join(COLUMNS)}) "
        f"VALUES ({', '.join([mark] * len(COLUMNS))}) ON CONFLICT (ip) DO UPDATE SET {sets}"
    )


class Stamps:
    """Epoch seconds -> the value the driver stores for a DateTime column.

    Whole seconds, rounded up (a stored expiry is never earlier than the one
    the client was given), through SQLAlchemy's own conversion for the
    dialect (SQLite: text such as ``2027-01-15 08:00:01.000000``; psycopg: the
    datetime itself). The values of the last few seconds are kept: the rows
    of a batch share them, and formatting was a third of a one-row write's
    Python time.
    """

    def __init__(self, dialect) -> None:
        kind = Lease.__table__.c.expires_at.type.dialect_impl(dialect)
        self._process = kind.bind_processor(dialect) or (lambda value: value)
        self._cache: dict[int, object] = {}

    def __call__(self, epoch: float):
        second = math.ceil(epoch)
        value = self._cache.get(second)
        if value is None:
            if len(self._cache) > 16:
                self._cache.clear()
            value = self._cache[second] = self._process(_to_dt(second))
        return value


def _no_autocheckpoint(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


class SqlLeaseStore:
    """Loads leases and reservations; commits the lease rows of each batch."""

    def __init__(
        self,
        db: Database,
        log: logging.Logger,
        on_reservations: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        self.db, self.log = db, log
        self.on_reservations = on_reservations
        self.batches = self.rows_written = self.failures = 0
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._sqlite = db.engine.dialect.name == "sqlite"
        self._writer = db.engine
        if self._sqlite:
            self._writer = make_engine(db.url)
            event.listen(self._writer, "connect", _no_autocheckpoint)
        dialect = self._writer.dialect
        self._sql = upsert_sql(dialect)
        # how the dialect stores a DateTime (SQLite: ISO text; psycopg: the datetime itself)
        self._stamp = Stamps(dialect)
        self._conn = None  # the writer's pooled connection, checked out on demand
        self._dbapi = self._cursor = None  # its driver connection and one cursor
        self._thread: threading.Thread | None = None

    # -- reads (start-up and periodic) ---------------------------------------
    def load_leases(self, now: float) -> list[LeaseRow]:
        """Every lease still worth remembering (bound, released or declined)."""
        with self.db.transaction() as s:
            rows = s.execute(select(Lease)).scalars().all()
            return [
                LeaseRow(r.ip, r.mac, r.subnet, r.state, r.hostname, _to_epoch(r.expires_at))
                for r in rows
            ]

    def load_reservations(self) -> dict[str, str]:
        """mac -> reserved ip, from Resource rows with ``reserved_ip`` set."""
        with self.db.transaction() as s:
            q = select(Resource.mac, Resource.reserved_ip).where(Resource.reserved_ip.is_not(None))
            return {mac.lower(): ip for mac, ip in s.execute(q)}

    # -- group commit ------------------------------------------------------------
    def write(self, rows: Sequence[LeaseRow]) -> bool:
        """Commit ``rows`` in one transaction; False (logged) if that failed.

        The caller sends the ACKs of these rows only when this returns True.
        """
        stamp = self._stamp
        now = stamp(time.time())
        params = [(r.ip, r.mac, r.subnet, r.state, r.hostname, stamp(r.expires), now) for r in rows]
        with self._write_lock:
            try:
                if self._conn is None:
                    self._conn = self._writer.raw_connection()
                    self._dbapi = self._conn.driver_connection
                    self._cursor = self._dbapi.cursor()
                self._cursor.executemany(self._sql, params)
                self._dbapi.commit()
            except Exception:
                self.failures += 1
                self.log.exception(
                    "lease commit of %d rows failed; their ACKs are not sent", len(params)
                )
                self._discard()
                return False
        self.batches += 1
        self.rows_written += len(params)
        return True

    def _discard(self) -> None:
        """After a failed commit: roll back and drop the connection (the next write reconnects)."""
        conn, self._conn, self._dbapi, self._cursor = self._conn, None, None, None
        if conn is None:
            return
        try:
            conn.driver_connection.rollback()
        except Exception as exc:  # a dead connection cannot roll back; it is dropped anyway
            self.log.debug("rollback after a failed lease commit failed: %s", exc)
        try:
            conn.invalidate()
        except Exception as exc:
            self.log.debug("dropping the lease writer's connection failed: %s", exc)

    # -- maintenance thread: WAL checkpoints and reservations --------------------
    def start(self, on_reservations: Callable[[dict[str, str]], None] | None = None) -> None:
        if on_reservations is not None:
            self.on_reservations = on_reservations
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dhcp-leases", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._write_lock:
            if self._conn is not None:
                self._cursor.close()
                self._conn.close()
                self._conn = self._dbapi = self._cursor = None
        if self._sqlite:
            self._writer.dispose()

    def _run(self) -> None:
        next_refresh = time.monotonic() + RESERVATION_REFRESH
        while not self._stop.wait(CHECKPOINT_INTERVAL):
            if self._sqlite:
                self._checkpoint()
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + RESERVATION_REFRESH
                self._refresh()

    def _checkpoint(self) -> None:
        try:
            with self.db.engine.connect() as conn:
                conn.execute(text("PRAGMA wal_checkpoint(PASSIVE)"))
        except Exception as exc:  # the next round tries again
            self.log.debug("passive WAL checkpoint failed: %s", exc)

    def _refresh(self) -> None:
        if self.on_reservations is None:
            return
        try:
            self.on_reservations(self.load_reservations())
        except Exception:
            self.log.exception("re-reading reservations failed (keeping the old ones)")
