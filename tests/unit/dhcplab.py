"""Helpers of the DHCP unit tests: golden files, subnets, a recording boot policy and a Handler."""

from __future__ import annotations

import ipaddress
import os
from collections import Counter
from pathlib import Path

from provisiond import pxesettings
from provisiond.config import Config, SubnetConfig
from pxe.boot import BootAction, BootSpec
from pxe.dhcp.codec import decode
from pxe.dhcp.handler import Handler
from pxe.dhcp.pool import pools_for

GOLDEN = Path(__file__).parent / "golden" / "dhcp"


def check_golden(name: str, text: str) -> None:
    """Compare with golden/dhcp/<name>.txt; UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text()


IP = ipaddress.IPv4Address


T = 1_000_000.0


def subnet(cidr: str, mode: str = "full", **kw) -> SubnetConfig:
    net = ipaddress.IPv4Network(cidr)
    if mode == "full":
        kw.setdefault("range_start", net.network_address + 100)
        kw.setdefault("range_end", net.network_address + 199)
    return SubnetConfig(cidr=net, mode=mode, **kw)


SUBNETS = (
    subnet("10.9.0.0/24", router=IP("10.9.0.1"), dns=(IP("10.9.0.1"),), domain="lab.test"),
    subnet("10.20.0.0/24", router=IP("10.20.0.254"), lease_time=600),  # behind a relay
    subnet("10.30.0.0/24", mode="proxy"),  # another DHCP server gives addresses
)


class Policy:
    def __init__(self, ignore: set[str] = frozenset()):
        self.ignore, self.seen = ignore, []

    def boot_spec(self, machine):
        self.seen.append(machine)
        return None if machine.mac in self.ignore else BootSpec(BootAction.AGENT)


def make(ignore=frozenset(), subnets=SUBNETS, address="10.9.0.1"):
    cfg = Config(interface="br0", address=IP(address), subnets=subnets)
    stats: Counter = Counter()
    policy = Policy(ignore)
    h = Handler(
        pxesettings.dhcp(cfg), policy, pools_for(subnets, address), lambda key: stats.update([key])
    )
    return h, stats, policy


def run(h, raw: bytes, now: float = T, source=None):
    return h.handle(decode(raw), now, source)
