"""Durable leases with group commit: the only DHCP code that talks to the database.

Owns loading the lease table and the reservations (``Resource.reserved_ip``)
into the in-memory pools at start, and :meth:`LeaseStore.write`, which
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


def _no_autocheckpoint(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


class LeaseStore:
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
        kind = Lease.__table__.c.expires_at.type.dialect_impl(dialect)
        self._stamp = kind.bind_processor(dialect) or (lambda v: v)
        self._conn = None  # the writer's DBAPI connection (a pool checkout), made on demand
        self._thread: threading.Thread | None = None

    # -- reads (start-up and periodic) ---------------------------------------
    def load_leases(self, now: float) -> list[LeaseRow]:
        """Every lease still worth remembering (bound, released or declined)."""
        with self.db.session() as s:
            rows = s.execute(select(Lease)).scalars().all()
            return [
                LeaseRow(r.ip, r.mac, r.subnet, r.state, r.hostname, _to_epoch(r.expires_at))
                for r in rows
            ]

    def load_reservations(self) -> dict[str, str]:
        """mac -> reserved ip, from Resource rows with ``reserved_ip`` set."""
        with self.db.session() as s:
            q = select(Resource.mac, Resource.reserved_ip).where(Resource.reserved_ip.is_not(None))
            return {mac.lower(): ip for mac, ip in s.execute(q)}

    # -- group commit ------------------------------------------------------------
    def write(self, rows: Sequence[LeaseRow]) -> bool:
        """Commit ``rows`` in one transaction; False (logged) if that failed.

        The caller sends the ACKs of these rows only when this returns True.
        """
        stamp = self._stamp
        now = stamp(_to_dt(time.time()))
        params = [
            (r.ip, r.mac, r.subnet, r.state, r.hostname, stamp(_to_dt(r.expires)), now)
            for r in rows
        ]
        with self._write_lock:
            try:
                if self._conn is None:
                    self._conn = self._writer.raw_connection()
                cur = self._conn.driver_connection.cursor()
                try:
                    cur.executemany(self._sql, params)
                finally:
                    cur.close()
                self._conn.driver_connection.commit()
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
        conn, self._conn = self._conn, None
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
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dhcp-leases", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._write_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
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
