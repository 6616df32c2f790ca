"""Run the DHCP service alone (interop tests, benchmarks): ``python -m pxe.dhcp CONFIG``.

Owns nothing but wiring for standalone runs: it loads a provisiond TOML
file, migrates its database, answers every boot request with the idle agent
(a policy that never ignores anyone), prints ``READY`` once listening and
the statistics as JSON on SIGTERM/SIGINT. The daemon proper is wired in
``provisiond/app.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from provisiond import config as config_mod
from provisiond import logs
from provisiond.db import Database
from pxe.boot import BootAction, BootSpec, Machine
from pxe.dhcp.server import DhcpService
from pxe.service import run_until_signal


class BootEveryone:
    def boot_spec(self, machine: Machine) -> BootSpec | None:
        return BootSpec(BootAction.AGENT, label=f"agent for {machine.mac}")


def main(argv: list[str]) -> int:
    cfg = config_mod.load(Path(argv[0]))
    logs.setup(cfg.log_level)
    db = Database(cfg.database_url)
    db.migrate()
    service = DhcpService(cfg, BootEveryone(), db)
    run_until_signal(service, lambda: dict(service.stats, lease_batches=service.store.batches))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
