"""provisiond.mints: per-boot token mints group-committed, on a real SQLite database.

The committer's part is forced to wait on the database's writer turn (held by
the test, as another unit of work would hold it) while the other callers
queue: they must then be written in one batch, each find its own token on
its own row, and a bad mint must fail alone.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from provisiond.db import Database
from provisiond.mints import Minter
from provisiond.model import Resource


@pytest.fixture
def db(tmp_path):
    d = Database(f"sqlite:///{tmp_path}/db.sqlite")
    d.migrate(tmp_path)
    yield d
    d.dispose()


def tokens(db: Database) -> dict[str, str | None]:
    with db.reader() as s:
        return dict(s.execute(select(Resource.mac, Resource.agent_token_hash)).all())


def mac(i: int) -> str:
    return f"52:54:00:aa:{i >> 8:02x}:{i & 0xFF:02x}"


def storm(minter: Minter, db: Database, macs: list[str]) -> dict[str, BaseException | None]:
    """Every mac mints at once while the writer turn is held; returns each caller's error."""
    errors: dict[str, BaseException | None] = {}

    def one(m: str) -> None:
        try:
            minter.mint(m, f"hash-{m}", "boot")
            errors[m] = None
        except Exception as exc:
            errors[m] = exc

    db._turn.acquire()  # another unit of work writes: the committer waits for its turn
    threads = [threading.Thread(target=one, args=(m,)) for m in macs]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(minter._queue) < len(macs) - 1:  # all but the committer's own, taken
            assert time.monotonic() < deadline, len(minter._queue)
            time.sleep(0.01)
    finally:
        db._turn.release()
    for t in threads:
        t.join(20)
        assert not t.is_alive()
    return errors


def test_one_mint_alone_is_one_transaction(db):
    minter = Minter(db)
    minter.mint("52:54:00:aa:00:01", "h1", "boot")
    assert tokens(db) == {"52:54:00:aa:00:01": "h1"}
    assert (minter.batches, minter.mints) == (1, 1)


def test_a_storm_of_mints_is_written_in_two_transactions(db):
    minter = Minter(db)
    macs = [mac(i) for i in range(64)]
    errors = storm(minter, db, macs)
    assert errors == dict.fromkeys(macs)
    assert tokens(db) == {m: f"hash-{m}" for m in macs}
    # the first caller's own batch, then everything that queued behind it
    assert (minter.batches, minter.mints) == (2, 64)


def test_batches_are_bounded(db):
    minter = Minter(db, max_batch=10)
    macs = [mac(i) for i in range(41)]
    assert storm(minter, db, macs) == dict.fromkeys(macs)
    assert len(tokens(db)) == 41
    assert (minter.batches, minter.mints) == (1 + 4, 41)  # 1, then 10 + 10 + 10 + 10


def test_a_bad_mint_fails_alone(db):
    minter = Minter(db)
    good = [mac(i) for i in range(10)]
    errors = storm(minter, db, [*good[:5], "not-a-mac", *good[5:]])
    assert isinstance(errors.pop("not-a-mac"), ValueError)
    assert errors == dict.fromkeys(good)
    assert tokens(db) == {m: f"hash-{m}" for m in good}


def test_a_new_boot_replaces_the_token_of_a_known_machine(db):
    minter = Minter(db)
    minter.mint("52:54:00:aa:00:01", "first", "boot")
    minter.mint("52:54:00:aa:00:01", "second", "boot")
    assert tokens(db) == {"52:54:00:aa:00:01": "second"}
