"""Run one protocol service alone from the daemon's TOML file (interop tests, benchmarks).

    python -m provisiond.standalone dhcp CONFIG            # SQL lease store, migrated database
    python -m provisiond.standalone dns CONFIG [NAME=IP ...]  # zone from the pairs given

Owns nothing but wiring, as ``python -m pxe.dhcp`` did before ``pxe`` stopped
reading the daemon's configuration: load the TOML file, build the service's
settings (:mod:`provisiond.pxesettings`), answer every boot with the idle
agent, print ``READY`` once listening and the statistics as JSON on
SIGTERM/SIGINT. The daemon proper is wired in :mod:`provisiond.app`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from provisiond import config as config_mod
from provisiond import logs, pxesettings
from provisiond.db import Database
from provisiond.leases import SqlLeaseStore
from pxe.dhcp.__main__ import BootEveryone
from pxe.dhcp.server import DhcpService
from pxe.dns.directory import StaticDirectory
from pxe.dns.server import DnsService
from pxe.service import run_until_signal

USAGE = "usage: python -m provisiond.standalone dhcp CONFIG | dns CONFIG [NAME=IP ...]"


def dhcp(argv: list[str]) -> int:
    cfg = config_mod.load(Path(argv[0]))
    logs.setup(cfg.log_level)
    db = Database(cfg.database_url)
    db.migrate(cfg.state_dir)
    store = SqlLeaseStore(db, logs.get("dhcp"))
    service = DhcpService(pxesettings.dhcp(cfg), BootEveryone(), store)
    run_until_signal(service, lambda: dict(service.stats, lease_batches=store.batches))
    return 0


def dns(argv: list[str]) -> int:
    cfg = config_mod.load(Path(argv[0]))
    logs.setup(cfg.log_level)
    entries = dict(pair.split("=", 1) for pair in argv[1:])
    service = DnsService(pxesettings.dns(cfg), StaticDirectory(entries))
    run_until_signal(service, lambda: service.stats)
    return 0


def main(argv: list[str]) -> int:
    runs = {"dhcp": dhcp, "dns": dns}
    if len(argv) < 2 or argv[0] not in runs:
        print(USAGE, file=sys.stderr)
        return 2
    return runs[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
