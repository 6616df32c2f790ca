"""Racks: provisiond instances that share one PostgreSQL (issue 10, item 4).

Runs against a private PostgreSQL cluster (tests/pg.py, unix socket only).

* The change feed: a commit by one process (the CLI, another instance) is
  NOTIFYed to every listener, with the tables it touched; heartbeats
  (group-committed Core updates) send nothing.
"""

from __future__ import annotations

import queue

import pytest
from sqlalchemy import bindparam, update

from provisiond.changes import ChangeFeed
from provisiond.db import Database
from provisiond.model import Kernel, Resource, utcnow
from tests.pg import private_cluster

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def pg_url():
    with private_cluster("racks") as url:
        db = Database(url)
        db.migrate()
        db.dispose()
        yield url


def _next(q: queue.Queue, timeout: float = 10.0):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no change delivered within {timeout} s") from None


def test_a_commit_is_notified_to_every_listener_with_its_tables(pg_url):
    feeds, queues = [], []
    for _ in range(2):  # two daemons listening
        q: queue.Queue = queue.Queue()
        feed = ChangeFeed(pg_url)
        feed.subscribe(q.put)
        feed.start()
        feeds.append(feed)
        queues.append(q)
    cli = Database(pg_url)
    try:
        with cli.session() as s:
            s.add(Kernel(name="k1", kernel_path="k1/vmlinuz"))
            s.add(Resource(mac="52:54:00:2a:00:01"))
        for q in queues:
            assert _next(q) == frozenset({"kernel", "resource"})
        # a rolled-back transaction notifies nobody
        with pytest.raises(RuntimeError), cli.session() as s:
            s.add(Kernel(name="k2", kernel_path="k2/vmlinuz"))
            s.flush()
            raise RuntimeError("rolled back")
        # a heartbeat group commit (Core executemany) is not an inventory change
        table = Resource.__table__
        with cli.session() as s:
            s.connection().execute(
                update(table)
                .where(table.c.id == bindparam("rid"))
                .values(last_heartbeat=bindparam("beat")),
                [{"rid": 1, "beat": utcnow()}],
            )
        with cli.session() as s:
            s.add(Kernel(name="k3", kernel_path="k3/vmlinuz"))
        for q in queues:  # the next thing each listener hears is k3, nothing before it
            assert _next(q) == frozenset({"kernel"})
            assert q.empty()
    finally:
        cli.dispose()
        for feed in feeds:
            feed.stop()
