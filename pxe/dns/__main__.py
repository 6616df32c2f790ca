"""Run the DNS service alone (interop tests): ``python -m pxe.dns CONFIG [NAME=IP ...]``.

Owns nothing but wiring for standalone runs: it loads a provisiond TOML file,
serves the zone from the ``NAME=IP`` pairs given (a static directory instead
of the database), prints ``READY`` once listening and the statistics as JSON
on SIGTERM/SIGINT. The daemon proper is wired in ``provisiond/app.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from provisiond import config as config_mod
from provisiond import logs
from pxe.dns.directory import StaticDirectory
from pxe.dns.server import DnsService
from pxe.service import run_until_signal


def main(argv: list[str]) -> int:
    cfg = config_mod.load(Path(argv[0]))
    logs.setup(cfg.log_level)
    entries = dict(pair.split("=", 1) for pair in argv[1:])
    service = DnsService(cfg, StaticDirectory(entries))
    run_until_signal(service, lambda: service.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
