"""The change feed (SQLite's data_version) and the boot check of the inventory, on real SQLite.

A second :class:`Database` on the same file stands in for the CLI (another
process's connection): its commits must reach the feed's subscribers, and a
kernel it adds must be in the inventory the moment a boot script asks.
"""

from __future__ import annotations

import threading
import time

import pytest

from provisiond import changes
from provisiond.changes import ChangeFeed
from provisiond.db import Database
from provisiond.inventory import Inventory
from provisiond.model import Kernel, Resource


@pytest.fixture
def dbs(tmp_path):
    url = f"sqlite:///{tmp_path / 'provisiond.db'}"
    daemon, cli = Database(url), Database(url)
    daemon.migrate()
    yield daemon, cli, tmp_path / "provisiond.db"
    daemon.dispose()
    cli.dispose()


@pytest.mark.parametrize(
    "text, tables",
    [
        ("", frozenset()),
        ("kernel", frozenset({"kernel"})),
        ("job,resource", frozenset({"job", "resource"})),
        ("job,,resource,", frozenset({"job", "resource"})),
    ],
)
def test_payload_round_trip(text, tables):
    assert changes.parse_payload(text) == tables
    assert changes.parse_payload(changes.payload(set(tables))) == tables


def test_changed_tables_names_what_a_session_flushes(dbs):
    daemon, _, _ = dbs
    with daemon.transaction() as s:
        assert changes.changed_tables(s) == set()
        s.add(Kernel(name="k", kernel_path="k"))
        s.add(Resource(mac="52:54:00:00:00:01"))
        assert changes.changed_tables(s) == {"kernel", "resource"}


def test_feed_delivers_a_commit_of_another_connection(dbs):
    daemon, cli, path = dbs
    feed = ChangeFeed(daemon.url, path)
    got = threading.Event()
    feed.subscribe(lambda tables: got.set())
    feed.start()
    try:
        time.sleep(changes.POLL_S * 2)
        assert not got.is_set(), "nothing committed yet, nothing delivered"
        with cli.transaction() as s:
            s.add(Kernel(name="k", kernel_path="k"))
        assert got.wait(5), "a commit by another connection was not delivered"
    finally:
        feed.stop()


def test_a_subscriber_that_raises_does_not_stop_the_others(dbs):
    daemon, cli, path = dbs
    feed = ChangeFeed(daemon.url, path)
    got = threading.Event()
    feed.subscribe(lambda tables: 1 / 0)
    feed.subscribe(lambda tables: got.set())
    feed.start()
    try:
        with cli.transaction() as s:
            s.add(Kernel(name="k", kernel_path="k"))
        assert got.wait(5)
    finally:
        feed.stop()


def test_boot_check_sees_a_kernel_added_by_another_process_at_once(dbs):
    daemon, cli, _ = dbs
    inv = Inventory(daemon)
    inv.refresh()
    assert inv.snapshot.default_kernel is None
    assert inv.ensure_boot_current() is False  # unchanged: no reload
    with cli.transaction() as s:
        s.add(Kernel(name="k", kernel_path="k/vmlinuz", is_default=True))
    assert inv.ensure_boot_current() is True
    assert inv.snapshot.default_kernel is not None
    assert inv.snapshot.default_kernel.name == "k"
    assert inv.ensure_boot_current() is False


def test_boot_check_ignores_resource_churn(dbs):
    daemon, cli, _ = dbs
    inv = Inventory(daemon)
    inv.refresh()
    with cli.transaction() as s:
        s.add(Resource(mac="52:54:00:00:00:02"))
    # a registration is not a boot decision's input: the coalesced refresher loads it
    assert inv.ensure_boot_current() is False
    assert inv.refresh_if_changed() is True
    assert "52:54:00:00:00:02" in inv.snapshot.by_mac


def test_local_commit_subscribers_hear_committed_tables_only(dbs):
    daemon, _, _ = dbs
    heard: list[frozenset[str]] = []
    daemon.on_commit(heard.append)
    with daemon.transaction() as s:
        s.add(Resource(mac="52:54:00:00:00:03"))
    assert heard == [frozenset({"resource"})]
    with pytest.raises(RuntimeError), daemon.transaction() as s:
        s.add(Kernel(name="k", kernel_path="k"))
        s.flush()
        raise RuntimeError("rolled back")
    with daemon.transaction() as s:  # a unit of work that wrote nothing
        s.get(Resource, 1)
    assert heard == [frozenset({"resource"})]


def test_token_cache_drops_a_lookup_that_raced_with_a_revocation():
    from provisiond.tokencache import TokenCache

    cache = TokenCache(limit=2)
    gen = cache.generation
    cache.put("a", 1, gen)
    assert cache.get("a") == 1
    started = cache.generation  # a lookup begins ...
    cache.clear()  # ... a commit revokes tokens meanwhile ...
    cache.put("b", 2, started)  # ... its answer is not kept
    assert cache.get("a") is None and cache.get("b") is None
    gen = cache.generation
    for key in ("c", "d", "e"):  # bounded: full -> start over
        cache.put(key, key, gen)
    assert len(cache) <= 2 and cache.get("e") == "e"
