"""The services a request handler may use, bundled once by the composition root.

Owns :class:`Context`: configuration, database, in-memory inventory, boot
policy, iPXE renderer, the boots the DHCP service saw (who may receive a
per-boot secret) and the command bell (wakes agent long polls when a
command is queued in this process). ``web`` receives a Context and never
builds any of these itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from provisiond.boot import BootPolicy
from provisiond.boots import BootRegistry
from provisiond.config import Config
from provisiond.db import Database
from provisiond.inventory import Inventory
from pxe.http.ipxe import IpxeRenderer


@dataclass
class Context:
    config: Config
    db: Database
    inventory: Inventory
    policy: BootPolicy
    renderer: IpxeRenderer
    boots: BootRegistry = field(default_factory=BootRegistry)
    bell: threading.Condition = field(default_factory=threading.Condition)

    def ring(self) -> None:
        with self.bell:
            self.bell.notify_all()
