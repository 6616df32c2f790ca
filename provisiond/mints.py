"""Per-boot agent tokens, group-committed: the mints of a boot storm share transactions.

Owns :class:`Minter`. Every boot script that carries an agent token
(:mod:`web.boot`) records the token's hash on its machine's resource row,
created on first sight. With one write transaction per script, a boot
storm queued the web server's threads for SQLite's one writer: bench/agents
at 5,000 machines booting within 10 s found about 40 of waitress's 48
threads waiting in ``Database.transaction`` (BENCHMARKS.md, "Where it
stops").

Here a caller queues its mint and waits. The first caller that finds nobody
committing becomes the committer: it writes every queued mint (at most
``max_batch``, its own first) in one transaction, wakes their callers, and
hands the committer's part to the oldest caller still waiting, if any
(leader and followers: no thread of its own, nothing to start or stop, and
no caller commits more than one batch). A batch that fails is written again
one mint per transaction, so a bad mint fails alone and its caller gets
the error.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from provisiond import resources
from provisiond.db import Database


@dataclass(eq=False)
class _Mint:
    mac: str
    token_hash: str
    pinning: str
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # this caller commits the next batch
    finished: bool = False
    error: BaseException | None = None


class Minter:
    def __init__(self, db: Database, max_batch: int = 256) -> None:
        self.db, self.max_batch = db, max_batch
        self._lock = threading.Lock()
        self._queue: deque[_Mint] = deque()
        self._committing = False  # invariant: a non-empty queue has a committer
        self.batches = self.mints = 0  # stats (tests, the bench)

    def mint(self, mac: str, token_hash: str, pinning: str) -> None:
        """Record ``token_hash`` as ``mac``'s agent token (see resources.new_boot); committed."""
        item = _Mint(mac, token_hash, pinning)
        with self._lock:
            self._queue.append(item)
            if not self._committing:
                self._committing = item.lead = True
        if not item.lead:
            item.wake.wait()  # finished by a committer, or made the next committer
        if not item.finished:
            self._commit_batch()
        if item.error is not None:
            raise item.error

    def _commit_batch(self) -> None:
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        try:
            self._write(batch)
        except BaseException as exc:  # not written: nobody of this batch may think it was
            for m in batch:
                m.error = m.error or exc
            raise
        finally:
            with self._lock:
                self.batches += 1
                self.mints += len(batch)
                if self._queue:  # the oldest waiting caller commits what came meanwhile
                    self._queue[0].lead = True
                    self._queue[0].wake.set()
                else:
                    self._committing = False
            for m in batch:
                m.finished = True
                m.wake.set()

    def _write(self, batch: list[_Mint]) -> None:
        try:
            self._transaction(batch)
            return
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
        for m in batch:  # one at a time: only the bad one fails
            try:
                self._transaction([m])
            except Exception as exc:
                m.error = exc

    def _transaction(self, mints: list[_Mint]) -> None:
        with self.db.transaction() as s:
            for m in mints:
                resources.new_boot(s, resources.ensure(s, m.mac), m.token_hash, m.pinning)
