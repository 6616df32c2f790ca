"""This daemon among others on one database: its start-up lock and its lease.

Owns the two guarantees a starting ``provisiond serve`` needs before it may
call any work orphaned:

* **One instance per state** (:class:`InstanceLock`), taken before anything
  touches the database. Always an exclusive ``flock`` on
  ``state_dir/provisiond.lock`` (the holder's pid is written into it), plus
  the same on ``<file>.lock`` when a SQLite database lives outside
  ``state_dir``. On PostgreSQL also a *session* advisory lock keyed by the
  instance id, held on a connection of its own for the daemon's lifetime, so
  two daemons that share the database under the same ``instance`` cannot
  both run. A held lock raises :class:`AlreadyRunning` naming the holder.
* **A lease** (the ``instance`` row: id, pid, host, started_at,
  heartbeat_at, expires_at), written at start-up by :func:`register` and
  renewed every ``lease.heartbeat_interval`` seconds by :class:`LeaseKeeper`.
  It expires after ``lease.expiry`` missed heartbeats; a clean stop expires
  it at once. :func:`alive` is what recovery (and multi-rack scheduling)
  asks: whose lease holds now.

The lock ends with the process (the kernel drops the flock, PostgreSQL drops
the session lock with its connection), so ``kill -9`` leaves nothing to
clean up by hand.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import socket
import time
from pathlib import Path

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from provisiond import logs
from provisiond.config import Config
from provisiond.db import Database
from provisiond.model import Instance, utcnow
from pxe.service import LoopThread

log = logs.get("instance")
LOCK_FILE = "provisiond.lock"


class AlreadyRunning(RuntimeError):
    """Another live process holds this state; the message names it and the fix."""


# --- the lock -----------------------------------------------------------------


def _lock_files(config: Config) -> list[Path]:
    files = [config.state_dir / LOCK_FILE]
    url = config.database_url
    if url.startswith("sqlite"):
        db = Path(url.split("///", 1)[-1])
        if str(db) not in ("", ":memory:") and db.resolve().parent != config.state_dir.resolve():
            files.append(db.with_name(db.name + ".lock"))
    return files


def _flock(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot open the lock file {path} ({exc.strerror}); "
            "state_dir must be writable by the user that runs provisiond",
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(
            f"provisiond is already running with this state (pid {holder}): {path} is locked; "
            "stop that daemon first (systemctl stop provisiond), or give this one its own "
            "state_dir"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def advisory_key(instance: str) -> int:
    """The PostgreSQL advisory lock key (signed 64 bit) of an instance id."""
    digest = hashlib.sha256(f"provisiond-instance:{instance}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _holder(conn: Connection, instance: str) -> str:
    """ "pid N on HOST" from the holder's instance row, when it has written one."""
    try:
        row = conn.execute(
            text("SELECT pid, host FROM instance WHERE id = :id"), {"id": instance}
        ).first()
    except Exception:  # no instance table yet: the holder is still migrating
        return "pid unknown"
    return f"pid {row.pid} on {row.host}" if row else "pid unknown"


class InstanceLock:
    """Held from :meth:`acquire` to :meth:`release`; nothing else may run this state."""

    def __init__(self, config: Config) -> None:
        self.config, self._fds = config, []
        self._conn: Connection | None = None

    @classmethod
    def acquire(cls, config: Config) -> InstanceLock:
        lock = cls(config)
        try:
            for path in _lock_files(config):
                lock._fds.append(_flock(path))
            if config.database_url.startswith("postgresql"):
                lock._conn = lock._pg_lock()
        except BaseException:
            lock.release()
            raise
        return lock

    def _pg_lock(self) -> Connection:
        instance = self.config.instance
        engine = create_engine(self.config.database_url, poolclass=NullPool)
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        got = conn.execute(
            text("SELECT pg_try_advisory_lock(:k)"), {"k": advisory_key(instance)}
        ).scalar()
        if not got:
            holder = _holder(conn, instance)
            conn.close()
            raise AlreadyRunning(
                f"provisiond is already running with this state (instance '{instance}', "
                f"{holder}): another process holds the lock of instance '{instance}' on this "
                "database; stop it, or give this daemon another `instance` in its configuration"
            )
        return conn

    def check(self) -> bool:
        """True while the PostgreSQL session (and so its advisory lock) is alive."""
        if self._conn is None:
            return True
        try:
            self._conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
        while self._fds:
            os.close(self._fds.pop())  # closing the descriptor drops the flock


# --- the lease ----------------------------------------------------------------


def register(session: Session, config: Config, now: dt.datetime | None = None) -> Instance:
    """Write this instance's row: who holds the lock, and a fresh lease."""
    now = now or utcnow()
    row = session.get(Instance, config.instance) or Instance(id=config.instance)
    row.pid, row.host, row.started_at = os.getpid(), socket.gethostname(), now
    row.heartbeat_at = now
    row.expires_at = now + dt.timedelta(seconds=config.lease.seconds)
    session.add(row)
    session.flush()
    return row


def renew(session: Session, config: Config) -> None:
    row = session.get(Instance, config.instance)
    if row is None or row.pid != os.getpid():
        raise RuntimeError(f"instance '{config.instance}' row is missing or taken over")
    now = utcnow()
    row.heartbeat_at, row.expires_at = now, now + dt.timedelta(seconds=config.lease.seconds)


def expire(session: Session, config: Config) -> None:
    """A clean stop: the lease ends now (its leftovers are anyone's to fail)."""
    row = session.get(Instance, config.instance)
    if row is not None and row.pid == os.getpid():
        row.expires_at = utcnow()


def alive(session: Session, now: dt.datetime | None = None) -> set[str]:
    """The ids of instances whose lease holds at ``now``."""
    now = now or utcnow()
    return set(session.scalars(select(Instance.id).where(Instance.expires_at > now)))


class LeaseKeeper:
    """A Service: renews this instance's lease every ``lease.heartbeat_interval`` s."""

    name = "lease"

    def __init__(self, config: Config, db: Database, lock: InstanceLock) -> None:
        self.config, self.db, self.lock = config, db, lock
        self._loop = LoopThread("lease", self._step, log)
        self._tick = 0.5  # s between looks at the clock (stop() ends the wait at once)
        self._next = 0.0

    def _step(self) -> None:
        self._loop.sleep(self._tick)
        if self._loop.stopping or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.config.lease.heartbeat_interval
        if not self.lock.check():
            log.error(
                "the database session that holds the lock of instance '%s' is gone; "
                "restart provisiond so it takes the lock again",
                self.config.instance,
            )
        with self.db.transaction() as s:
            renew(s, self.config)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        try:
            with self.db.transaction() as s:
                expire(s, self.config)
        except Exception:
            log.exception("could not end the lease of instance '%s'", self.config.instance)
