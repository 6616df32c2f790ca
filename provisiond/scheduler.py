"""The scheduler: periodic housekeeping inside the daemon.

Owns the clock-driven work: resources that miss heartbeats for
``agent.heartbeat_timeout`` seconds become ``offline``. Heartbeats are
group-committed (:mod:`provisiond.liveness`): the sweep flushes them first,
so it judges every row with what this process has seen. It also sweeps
racks whose lease expired (:func:`provisiond.racks.sweep_expired`): their
machines go offline and their transient work fails, within one tick of the
lease's end. Runs every ``interval`` seconds in one thread.
"""

from __future__ import annotations

import threading

from provisiond import logs, racks, resources
from provisiond.config import Config
from provisiond.db import Database
from provisiond.inventory import Inventory
from provisiond.liveness import Liveness
from pxe.service import LoopThread

log = logs.get("scheduler")


class Scheduler:
    name = "scheduler"

    def __init__(
        self, config: Config, db: Database, inventory: Inventory, liveness: Liveness
    ) -> None:
        self._config, self._db, self._inv, self._liveness = config, db, inventory, liveness
        self._interval = max(1.0, min(5.0, config.agent.heartbeat_timeout / 4))
        self._wake = threading.Event()
        self._loop = LoopThread("scheduler", self._step, log)

    def _step(self) -> None:
        self._wake.wait(self._interval)
        if self._loop.stopping:
            return
        self.tick()

    def tick(self) -> None:
        self._liveness.flush(self._db)
        with self._db.transaction() as s:
            stale = resources.mark_stale_offline(s, self._config.agent.heartbeat_timeout)
            names = [r.display_name for r in stale]
        for name in names:
            log.warning("%s missed heartbeats for %d s: offline", name,
                        self._config.agent.heartbeat_timeout)  # fmt: skip
        with self._db.transaction() as s:  # racks whose lease expired lose their machines
            gone = racks.sweep_expired(s, self._config.instance)
        for what in gone:
            log.warning("%s", what)
        if names or gone:
            self._inv.refresh()

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._wake.set()
        self._loop.stop()
