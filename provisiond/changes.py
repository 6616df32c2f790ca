"""Changes made by other processes reach a running daemon at once.

Owns the change feed between processes that share one database (the CLI,
other provisiond instances, this daemon's own request threads):

* **PostgreSQL: ``LISTEN/NOTIFY``.** :func:`install` hooks every ORM session
  of a :class:`provisiond.db.Database`: a flush that adds, changes or
  deletes rows sends ``NOTIFY provisiond, '<table>,<table>'`` inside the
  same transaction, so PostgreSQL delivers it when (and only if) the
  transaction commits. Group-committed heartbeats and DHCP leases are Core
  statements and send nothing: liveness is not an inventory change.
  :class:`ChangeFeed` holds one connection of its own that ``LISTEN``\\ s and
  hands each batch of table names to its subscribers.
* **SQLite: a polled revision counter.** SQLite keeps one itself:
  ``PRAGMA data_version`` on a connection changes whenever another
  connection (another process, or this one's pool) has committed. The feed
  polls it every ``POLL_S`` on a connection of its own — a read of a page
  header, no table scan and no write — and calls its subscribers with
  ``None`` (some table changed; which one SQLite does not say).

Subscribers (:mod:`provisiond.app` wires them) check the inventory's
fingerprint and reload it when it moved, and ring the agent channel when a
job may have been queued, so a command queued by the CLI or another instance
wakes the machine's long poll without waiting for the channel's sweep.
A feed that loses its connection logs it and reconnects; until then the
inventory refresher's own periodic check still runs.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from provisiond import logs
from pxe.service import LoopThread

log = logs.get("changes")
CHANNEL = "provisiond"
POLL_S = 0.2  # SQLite: data_version poll
RETRY_S = 2.0  # a lost LISTEN connection is retried this often
MAX_PAYLOAD = 7000  # NOTIFY payloads must stay below 8,000 bytes

Subscriber = Callable[[frozenset[str] | None], None]


def changed_tables(session: Session) -> set[str]:
    """Tables of the rows a session is about to flush (new, changed or deleted)."""
    tables = set()
    for obj in (*session.new, *session.dirty, *session.deleted):
        table = getattr(type(obj), "__tablename__", None)
        if table:
            tables.add(table)
    return tables


def payload(tables: set[str]) -> str:
    return ",".join(sorted(tables))[:MAX_PAYLOAD]


def parse_payload(text_: str) -> frozenset[str]:
    return frozenset(t for t in text_.split(",") if t)


def _notify_after_flush(session: Session, _flush_context) -> None:
    tables = changed_tables(session)
    if tables:  # identical notifications in one transaction are delivered once
        session.connection().execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": payload(tables)},
        )


def install(sessions, url: str, local: list[Subscriber] | None = None) -> None:
    """Make ``sessions`` (a sessionmaker) announce their commits.

    On PostgreSQL to every listener (NOTIFY); in this process, to the
    ``local`` subscribers, called after each commit that wrote rows with the
    tables it wrote (synchronously, in the committing thread).
    """
    if url.startswith("postgresql"):
        event.listen(sessions, "after_flush", _notify_after_flush)
    if local is None:
        return

    def remember(session: Session, _flush_context) -> None:
        tables = changed_tables(session)
        if tables:
            session.info.setdefault("changed_tables", set()).update(tables)

    def committed(session: Session) -> None:
        tables = session.info.pop("changed_tables", None)
        if tables:
            for fn in list(local):
                try:
                    fn(frozenset(tables))
                except Exception:
                    log.exception("a commit subscriber failed (continuing)")

    def rolled_back(session: Session) -> None:
        session.info.pop("changed_tables", None)

    event.listen(sessions, "after_flush", remember)
    event.listen(sessions, "after_commit", committed)
    event.listen(sessions, "after_rollback", rolled_back)


class ChangeFeed:
    """Service: calls its subscribers when another process may have changed the database."""

    name = "changes"

    def __init__(self, url: str, sqlite_path: Path | None = None) -> None:
        self.url = url
        self._subs: list[Subscriber] = []
        self._lock = threading.Lock()
        self._pg = url.startswith("postgresql")
        self._sqlite_path = sqlite_path
        self._conn = None
        self._version: int | None = None
        self.delivered = 0  # batches handed to subscribers (tests, stats)
        self._loop = LoopThread("changes", self._step, log)

    def subscribe(self, fn: Subscriber) -> None:
        with self._lock:
            self._subs.append(fn)

    def _deliver(self, tables: frozenset[str] | None) -> None:
        with self._lock:
            subs = list(self._subs)
        self.delivered += 1
        for fn in subs:
            try:
                fn(tables)
            except Exception:
                log.exception("a change subscriber failed (continuing)")

    # --- PostgreSQL -----------------------------------------------------------
    def _pg_connect(self):
        engine = create_engine(self.url, poolclass=NullPool)
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text(f"LISTEN {CHANNEL}"))
        return conn

    def _pg_step(self) -> None:
        if self._conn is None:
            try:
                self._conn = self._pg_connect()
            except Exception as exc:
                log.error("cannot LISTEN for changes on the database (%s); retrying", exc)
                self._loop.sleep(RETRY_S)
                return
            self._deliver(None)  # whatever happened while not listening
        driver = self._conn.connection.driver_connection
        try:
            tables: set[str] = set()
            for note in driver.notifies(timeout=0.5):
                tables |= parse_payload(note.payload)
                break  # then drain what is already there without waiting
            if tables:
                for note in driver.notifies(timeout=0.0):
                    tables |= parse_payload(note.payload)
        except Exception as exc:
            if self._loop.stopping:
                return
            log.error("the LISTEN connection was lost (%s); reconnecting", exc)
            self._close()
            return
        if tables:
            self._deliver(frozenset(tables))

    # --- SQLite ---------------------------------------------------------------
    def _sqlite_version(self) -> int:
        if self._conn is None:
            self._conn = sqlite3.connect(
                f"file:{self._sqlite_path}?mode=ro", uri=True, check_same_thread=False
            )
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def _sqlite_step(self) -> None:
        self._loop.sleep(POLL_S)
        if self._loop.stopping:
            return
        try:
            version = self._sqlite_version()
        except sqlite3.Error as exc:
            log.error("cannot read the database's data_version (%s); retrying", exc)
            self._close()
            self._loop.sleep(RETRY_S)
            return
        if self._version is not None and version != self._version:
            self._deliver(None)
        self._version = version

    def _step(self) -> None:
        if self._pg:
            self._pg_step()
        else:
            self._sqlite_step()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def start(self) -> None:
        if self._pg:
            try:
                self._conn = self._pg_connect()
            except Exception as exc:  # the loop retries; the daemon still starts
                log.error("cannot LISTEN for changes on the database (%s); retrying", exc)
        elif self._sqlite_path is not None:
            try:
                self._version = self._sqlite_version()
            except sqlite3.Error as exc:
                log.error("cannot read the database's data_version (%s); retrying", exc)
        else:
            log.info("no change feed for an in-memory database")
            return
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        self._close()
