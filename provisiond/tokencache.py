"""Agent tokens already looked up, so a heartbeat costs no database read.

Owns :class:`TokenCache`: token digest -> (resource id, state), filled by
the agent channel after a successful lookup and emptied whenever a
``resource`` row may have changed:

* at once, by this process's own commits that wrote resource rows (a new
  boot's token, a state change, a deletion: :meth:`provisiond.db.Database.on_commit`);
* by other processes' commits through the change feed
  (:mod:`provisiond.changes`): on PostgreSQL the NOTIFY names the
  ``resource`` table (milliseconds); on SQLite the feed's data_version poll
  (every 0.2 s) is followed by a check of the resource table's fingerprint
  (row count and newest ``updated_at``; heartbeat group commits keep
  ``updated_at``, so they do not empty the cache).

So a token revoked by this daemon is refused by the very next request, and
one revoked by the CLI or another instance within the feed's delay. A
lookup that raced with an emptying is not stored (a generation counter).
Only valid tokens are stored (no one can fill the cache with guesses), at
most ``limit`` of them.

Measured with bench/agents (BENCHMARKS.md): before, each heartbeat and
poll went from the event loop to a thread pool for one SQLite read and
back; two thread hand-offs on a loaded 2-core machine are what its tail
latency was made of.
"""

from __future__ import annotations

import threading
from typing import Any


class TokenCache:
    def __init__(self, limit: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._map: dict[str, Any] = {}
        self.generation = 0
        self.limit = limit
        self.hits = self.misses = 0

    def get(self, digest: str) -> Any | None:
        found = self._map.get(digest)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, digest: str, value: Any, generation: int) -> None:
        """Store a lookup that began at ``generation``; dropped if the cache was emptied since."""
        with self._lock:
            if generation != self.generation:
                return
            if len(self._map) >= self.limit:
                self._map = {}
            self._map[digest] = value

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._map = {}

    def __len__(self) -> int:
        return len(self._map)
