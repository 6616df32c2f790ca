"""Run the DHCP service alone on an in-memory lease store: ``python -m pxe.dhcp``.

Owns nothing but wiring: settings from the command line, a policy that
boots everyone into the idle agent (:class:`BootEveryone`), a
:class:`pxe.dhcp.leases.MemoryLeaseStore` (leases are lost at exit). Prints
``READY`` once listening and the statistics as JSON on SIGTERM/SIGINT. With
the daemon's TOML file and its database, run
``python -m provisiond.standalone dhcp CONFIG``; the daemon proper is wired
in ``provisiond/app.py``.

    python -m pxe.dhcp --interface br0 --address 10.0.0.1 \\
        --subnet 10.0.0.0/24 --range 10.0.0.100-10.0.0.150 [--proxy] [--port 67]
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from pxe.boot import BootAction, BootSpec, Machine
from pxe.dhcp.leases import MemoryLeaseStore
from pxe.dhcp.server import DhcpService
from pxe.log import standalone_logging
from pxe.service import run_until_signal
from pxe.settings import DhcpSettings, SubnetSettings


class BootEveryone:
    """A boot policy that never ignores anyone: every machine gets the idle agent."""

    def boot_spec(self, machine: Machine) -> BootSpec | None:
        return BootSpec(BootAction.AGENT, label=f"agent for {machine.mac}")


def settings_from_args(argv: list[str]) -> DhcpSettings:
    ap = argparse.ArgumentParser(prog="python -m pxe.dhcp", description=__doc__.split("\n")[0])
    ap.add_argument("--interface", required=True, help="NIC to serve on (SO_BINDTODEVICE)")
    ap.add_argument("--address", required=True, type=ipaddress.IPv4Address,
                    help="this server's address on that NIC")  # fmt: skip
    ap.add_argument("--subnet", required=True, type=ipaddress.IPv4Network, help="CIDR served")
    ap.add_argument("--range", dest="range_", default="", help="FIRST-LAST (full mode)")
    ap.add_argument("--router", type=ipaddress.IPv4Address, default=None)
    ap.add_argument("--proxy", action="store_true", help="proxyDHCP: boot data, no addresses")
    ap.add_argument("--port", type=int, default=67)
    ap.add_argument("--proxy-port", type=int, default=4011)
    ap.add_argument("--http-port", type=int, default=8080, help="where iPXE fetches its script")
    a = ap.parse_args(argv)
    first = last = None
    if a.range_:
        lo, _, hi = a.range_.partition("-")
        first, last = ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi)
    elif not a.proxy:
        ap.error("--range FIRST-LAST is needed in full mode (or give --proxy)")
    subnet = SubnetSettings(a.subnet, "proxy" if a.proxy else "full", first, last, a.router)
    return DhcpSettings(interface=a.interface, address=a.address,
                        http_base=f"http://{a.address}:{a.http_port}", subnets=(subnet,),
                        port=a.port, proxy_port=a.proxy_port)  # fmt: skip


def main(argv: list[str]) -> int:
    settings = settings_from_args(argv)
    standalone_logging()
    store = MemoryLeaseStore()
    service = DhcpService(settings, BootEveryone(), store)
    run_until_signal(service, lambda: dict(service.stats, lease_batches=store.batches))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
