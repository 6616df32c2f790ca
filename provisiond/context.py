"""The services a request handler may use, bundled once by the composition root.

Owns :class:`Context`: configuration, database, in-memory inventory, boot
policy, iPXE renderer, the boots the DHCP service saw (who may receive a
per-boot secret), agent liveness (:mod:`provisiond.liveness`), the per-boot
token mints (:mod:`provisiond.mints`) and the
command bell: :meth:`Context.ring` tells every registered waker (the agent
channel registers one) that an agent command may have been queued or
finished in this process. ``web`` receives a Context and never builds any
of these itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from provisiond.bootchain import OsDhcp, SanFetches
from provisiond.boots import BootRegistry
from provisiond.config import Config
from provisiond.db import Database
from provisiond.inventory import Inventory
from provisiond.liveness import Liveness
from provisiond.mints import Minter
from provisiond.tokencache import TokenCache
from pxe.boot import BootPolicy
from pxe.http.ipxe import IpxeRenderer


@dataclass
class Context:
    config: Config
    db: Database
    inventory: Inventory
    policy: BootPolicy
    renderer: IpxeRenderer
    boots: BootRegistry = field(default_factory=BootRegistry)
    liveness: Liveness = field(default_factory=Liveness)
    tokens: TokenCache = field(default_factory=TokenCache)  # agent tokens looked up
    san_fetches: SanFetches = field(default_factory=SanFetches)  # SAN scripts served per machine
    local_fetches: SanFetches = field(default_factory=SanFetches)  # local-boot scripts, the same
    os_dhcp: OsDhcp = field(default_factory=OsDhcp)  # booted OSes' DHCP (local deploys watch)
    mints: Minter = field(init=False)  # per-boot agent tokens, group-committed
    _wakers: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.mints = Minter(self.db)

    def on_ring(self, waker: Callable[[], None]) -> Callable[[], None]:
        """Call ``waker()`` (thread-safe, non-blocking) on every ring; returns an undo."""
        with self._lock:
            self._wakers.append(waker)
        return lambda: self._remove(waker)

    def _remove(self, waker: Callable[[], None]) -> None:
        with self._lock:
            if waker in self._wakers:
                self._wakers.remove(waker)

    def ring(self) -> None:
        with self._lock:
            wakers = list(self._wakers)
        for waker in wakers:
            waker()
