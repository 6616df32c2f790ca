"""Database access: engine construction, sessions and schema migrations.

Owns the one place that knows about the database URL. SQLite (the embedded
default) runs in WAL mode with a busy timeout, and this process's units of
work take turns on one lock (see :class:`Database`); PostgreSQL works through the
same code with a URL change. A SQLite file is created 0600. The schema is managed by Alembic
(``provisiond/migrations``); :meth:`Database.migrate` upgrades to head.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from provisiond import changes
from provisiond.security import private_file

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 10_000


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - driver callback
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            private_file(Path(path))  # SQLite's -wal/-shm files inherit its 0600
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


class Database:
    """An engine plus a session factory; passed to whoever needs the inventory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.reader = sessionmaker(self.engine, expire_on_commit=False)
        self._committed: list[changes.Subscriber] = []
        changes.install(self.reader, url, self._committed)  # PostgreSQL: NOTIFY the others
        # SQLite has one writer at a time; its busy handler makes waiting writers
        # sleep in 1..100 ms steps, so under concurrent writes (a boot storm: boot
        # scripts, registrations) throughput collapses and threads pile up on the
        # connection pool. Units of work of this process take turns on a lock
        # instead (re-entrant; bounded by the busy timeout, after which SQLite's own
        # locking decides as before). Other processes (the CLI) still meet the
        # busy timeout. bench/agents measured the difference (BENCHMARKS.md).
        self._turn = threading.RLock() if url.startswith("sqlite") else None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A unit of work that writes: commits on success, rolls back on error.

        Reads that change nothing use :attr:`reader` (a plain session factory that never
        commits), so a write and a read are told apart by name, not by one letter."""
        got = self._turn is not None and self._turn.acquire(timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            with self.reader() as s:
                try:
                    yield s
                    s.commit()
                except BaseException:
                    s.rollback()
                    raise
        finally:
            if got:
                self._turn.release()

    def on_commit(self, fn: changes.Subscriber) -> None:
        """Call ``fn(tables)`` after each commit of this process that wrote rows."""
        self._committed.append(fn)

    def migrate(self, state_dir: Path | None = None) -> None:
        """Upgrade to head; ``state_dir`` holds the server key data migrations seal with."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["engine"] = self.engine
        cfg.attributes["state_dir"] = state_dir
        command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.engine.dispose()
