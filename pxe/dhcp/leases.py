"""Durable leases with group commit: the only DHCP code that talks to the database.

Owns loading the lease table and the reservations (``Resource.reserved_ip``)
into the in-memory pools at start, and a writer thread that commits lease
rows in batches: everything submitted while the previous batch was being
committed goes into the next transaction, and each submission's ``then``
callback (which sends the ACK) runs only after its batch has committed. The
serve loop therefore never waits on a transaction, and an ACKed lease is on
disk before the client hears of it (SQLite WAL survives ``kill -9``).

SQLite checkpoints: by default the connection whose commit pushes the WAL
past 1,000 pages copies the WAL into the database file (with an fsync) in
that commit — measured as 5-450 ms stalls of every queued ACK
(bench/dhcp/latency.py). The writer therefore commits on a connection of its
own with ``wal_autocheckpoint=0``, and a checkpointer thread runs
``PRAGMA wal_checkpoint(PASSIVE)`` once a second on another connection (the
sqlite3 module releases the GIL meanwhile). Durability is unchanged: each
commit is in the WAL before its ACK leaves.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable

from sqlalchemy import event, select, text

from provisiond.db import Database, make_engine
from provisiond.model import Lease, Resource
from pxe.dhcp.pool import LeaseRow

RESERVATION_REFRESH = 5.0  # seconds between re-reads of Resource.reserved_ip
CHECKPOINT_INTERVAL = 1.0  # seconds between passive WAL checkpoints (SQLite)


def _to_dt(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(tzinfo=None)


def _to_epoch(value: dt.datetime) -> float:
    return value.replace(tzinfo=dt.UTC).timestamp()


def _upsert(db: Database):
    table = Lease.__table__
    if db.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table)
    cols = ("mac", "subnet", "state", "hostname", "expires_at", "updated_at")
    return stmt.on_conflict_do_update(
        index_elements=["ip"], set_={c: stmt.excluded[c] for c in cols}
    )


def _no_autocheckpoint(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


class LeaseStore:
    """Loads leases and reservations; commits lease rows in groups."""

    def __init__(
        self,
        db: Database,
        log: logging.Logger,
        on_reservations: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        self.db, self.log = db, log
        self.on_reservations = on_reservations
        self.batches = self.rows_written = self.failures = 0
        self._pending: list[tuple[tuple[LeaseRow, ...], Callable[[], None] | None]] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._stmt = _upsert(db)
        self._sqlite = db.engine.dialect.name == "sqlite"
        self._writer = db.engine
        if self._sqlite:
            self._writer = make_engine(db.url)
            event.listen(self._writer, "connect", _no_autocheckpoint)
        self._checkpointer: threading.Thread | None = None

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
    def submit(self, rows: Iterable[LeaseRow], then: Callable[[], None] | None = None) -> None:
        with self._cv:
            self._pending.append((tuple(rows), then))
            self._cv.notify()

    def start(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="dhcp-leases", daemon=True)
        self._thread.start()
        if self._sqlite:
            self._checkpointer = threading.Thread(
                target=self._checkpoints, name="dhcp-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _checkpoints(self) -> None:
        while True:
            with self._cv:
                if self._stop:
                    return
            time.sleep(CHECKPOINT_INTERVAL)
            try:
                with self.db.engine.connect() as conn:
                    conn.execute(text("PRAGMA wal_checkpoint(PASSIVE)"))
            except Exception as exc:  # the next round tries again
                self.log.debug("passive WAL checkpoint failed: %s", exc)

    def stop(self, timeout: float = 1.5) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sqlite:
            self._writer.dispose()

    def _run(self) -> None:
        next_refresh = time.monotonic() + RESERVATION_REFRESH
        while True:
            with self._cv:
                if not self._pending and not self._stop:
                    self._cv.wait(max(0.0, next_refresh - time.monotonic()))
                batch, self._pending = self._pending, []
                stopping = self._stop
            if batch:
                self._commit(batch)
            if stopping:
                return
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + RESERVATION_REFRESH
                self._refresh()

    def _commit(self, batch) -> None:
        stamp = _to_dt(time.time())
        params = [
            {
                "ip": r.ip,
                "mac": r.mac,
                "subnet": r.subnet,
                "state": r.state,
                "hostname": r.hostname,
                "expires_at": _to_dt(r.expires),
                "updated_at": stamp,
            }
            for rows, _ in batch
            for r in rows
        ]
        try:
            if params:
                with self._writer.begin() as conn:
                    conn.execute(self._stmt, params)
        except Exception:
            self.failures += 1
            self.log.exception(
                "lease commit of %d rows failed; their ACKs are not sent", len(params)
            )
            return
        self.batches += 1
        self.rows_written += len(params)
        for _, then in batch:
            if then is not None:
                try:
                    then()
                except OSError as exc:
                    self.log.warning("sending a reply after commit failed: %s", exc)

    def _refresh(self) -> None:
        if self.on_reservations is None:
            return
        try:
            self.on_reservations(self.load_reservations())
        except Exception:
            self.log.exception("re-reading reservations failed (keeping the old ones)")
