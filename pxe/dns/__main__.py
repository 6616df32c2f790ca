"""Run the DNS service alone: ``python -m pxe.dns --address IP [--port N] [NAME=IP ...]``.

Owns nothing but wiring: settings from the command line, the zone from the
``NAME=IP`` pairs given (a static directory), ``READY`` once listening and
the statistics as JSON on SIGTERM/SIGINT. With the daemon's TOML file, run
``python -m provisiond.standalone dns CONFIG [NAME=IP ...]``; the daemon
proper is wired in ``provisiond/app.py``.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from pxe.dns.directory import StaticDirectory
from pxe.dns.server import DnsService
from pxe.log import standalone_logging
from pxe.service import run_until_signal
from pxe.settings import DnsSettings


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pxe.dns", description=__doc__.split("\n")[0])
    ap.add_argument("--address", required=True, type=ipaddress.IPv4Address)
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--domain", default="provisiond.lan")
    ap.add_argument("--upstream", default="", help="ip or ip:port to forward foreign names to")
    ap.add_argument("entries", nargs="*", metavar="NAME=IP")
    a = ap.parse_args(argv)
    standalone_logging()
    settings = DnsSettings(address=a.address, domain=a.domain, port=a.port, upstream=a.upstream)
    service = DnsService(settings, StaticDirectory(dict(e.split("=", 1) for e in a.entries)))
    run_until_signal(service, lambda: service.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
