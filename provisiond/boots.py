"""Boots the DHCP service saw, in memory: who may receive a per-boot secret.

Owns :class:`BootRegistry`, the core's implementation of
``pxe.dhcp.sightings.BootSightings``. A DHCP exchange of a network-boot
client (PXE ROM, iPXE, UEFI HTTP) starts a new *boot* of that MAC with the
address provisiond gave it (full mode) or the address of its proxyDHCP
request. Per-boot secrets go only to that address, within ``window``
seconds of the exchange:

* the agent token is minted at most once per boot (:meth:`claim_token`),
  the way Ironic hands out its agent token once and never again; a second
  request in the same boot, from anywhere, gets no token, so a live agent's
  token is never replaced by someone else's request;
* a SAN script with its CHAP secret goes only to :meth:`boot_of` the
  resource's address.

Proxy mode without a port-4011 request (iPXE told not to wait for
proxyDHCP) leaves the address unknown; the first script request inside the
window binds it (trust on first use, inside one boot). Memory is bounded:
the oldest sightings are dropped beyond ``cap`` MACs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Boot:
    mac: str
    ip: str | None  # None: proxy offer, bound by the first script request
    at: float  # clock() of the DHCP exchange
    number: int  # increases with every sighting (any MAC)
    via: str
    token_issued: bool = False


class BootRegistry:
    def __init__(
        self, window: float = 300.0, cap: int = 65536, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window, self.cap, self.clock = window, cap, clock
        self._boots: OrderedDict[str, Boot] = OrderedDict()
        self._lock = threading.Lock()
        self._n = 0

    # -- the port (called by the DHCP service) ------------------------------
    def booted(self, mac: str, ip: str | None, via: str) -> None:
        if ip == "0.0.0.0":
            ip = None
        with self._lock:
            self._n += 1
            self._boots.pop(mac, None)
            self._boots[mac] = Boot(mac, ip, self.clock(), self._n, via)
            while len(self._boots) > self.cap:
                self._boots.popitem(last=False)

    # -- questions of the HTTP side ------------------------------------------
    def seen(self, mac: str) -> bool:
        """True when ``mac`` booted through our DHCP within the window."""
        with self._lock:
            boot = self._boots.get(mac)
            return boot is not None and self._fresh(boot)

    def boot_of(self, mac: str, source: str | None) -> Boot | None:
        """This boot of ``mac`` if ``source`` is its address (binds a proxy boot)."""
        with self._lock:
            return self._match(mac, source)

    def claim_token(self, mac: str, source: str | None) -> Boot | None:
        """The boot, if an agent token may be minted for it now; at most once per boot."""
        with self._lock:
            boot = self._match(mac, source)
            if boot is None or boot.token_issued:
                return None
            self._boots[mac] = replace(boot, token_issued=True)
            return boot

    def why_not(self, mac: str, source: str | None) -> str:
        """Why :meth:`claim_token` / :meth:`boot_of` said no, for the refusal text."""
        with self._lock:
            boot = self._boots.get(mac)
            if boot is None:
                return "provisiond's DHCP has not seen this MAC boot"
            if not self._fresh(boot):
                return f"its last DHCP boot is older than {self.window:.0f} s"
            if boot.ip is not None and boot.ip != source:
                return f"this boot belongs to {boot.ip}, the request came from {source}"
            return "the agent token of this boot was already issued"

    def _fresh(self, boot: Boot) -> bool:
        return self.clock() - boot.at <= self.window

    def _match(self, mac: str, source: str | None) -> Boot | None:
        boot = self._boots.get(mac)
        if boot is None or not source or not self._fresh(boot):
            return None
        if boot.ip is None:  # proxy offer: the first request in the window binds it
            boot = replace(boot, ip=source)
            self._boots[mac] = boot
        return boot if boot.ip == source else None
