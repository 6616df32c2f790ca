"""Who may use the DNS service for what, and how often (no sockets).

Owns the two client policies of the serve loop:

- :class:`ClientFilter`: forwarding (recursion) only for clients in the
  configured networks: the ``[[subnet]]`` CIDRs, ``[dns] allow`` and
  loopback. Everyone else gets authoritative answers for our zone only and
  REFUSED for the rest (BIND's ``allow-recursion`` next to an
  ``allow-query`` of any), so the service is no open forwarder.
- :class:`ResponseRateLimiter`: response-rate limiting of UDP replies per
  client prefix (/24 for IPv4, /56 for IPv6: BIND's RRL defaults), a token
  bucket of ``per_second`` responses with one second of burst. Over the
  limit, every ``slip``-th response goes out truncated (TC=1, no data, so a
  real client retries over TCP, which is never limited) and the rest are
  dropped; a spoofed victim gets at most ``per_second`` small replies a
  second. The table keeps at most ``max_clients`` prefixes, least recently
  seen evicted first, so memory stays bounded whatever addresses arrive.
"""

from __future__ import annotations

import enum
import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


class ClientFilter:
    """Membership of a client address in the networks allowed to recurse."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(dict.fromkeys([*LOOPBACK, *networks]))

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks if net.version == ip.version)


class Action(enum.Enum):
    SEND = "send"
    SLIP = "slip"  # send a truncated reply instead
    DROP = "drop"


@dataclass(frozen=True)
class RateLimit:
    per_second: int = 50  # responses per second per client prefix; 0 = no limit
    slip: int = 2  # every Nth limited response goes out truncated; 0 = drop all
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56
    max_clients: int = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    limited: int = 0


class ResponseRateLimiter:
    """Token bucket per client prefix; :meth:`check` says what to do with one reply."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self._clock = limit, clock
        self._buckets: OrderedDict[tuple[int, int], _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, address: str) -> Action:
        rate = self.limit.per_second
        if rate <= 0:
            return Action.SEND
        key, now = self._prefix(address), self._clock()
        with self._lock:
            bucket = self._bucket(key, now)
            bucket.tokens = min(rate, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return Action.SEND
            bucket.limited += 1
        slip = self.limit.slip
        return Action.SLIP if slip and bucket.limited % slip == 0 else Action.DROP

    def _bucket(self, key: tuple[int, int], now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.limit.per_second), now)
            while len(self._buckets) > self.limit.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def _prefix(self, address: str) -> tuple[int, int]:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return (0, 0)  # not an address (cannot happen on a socket): one shared bucket
        bits = self.limit.ipv4_prefix if ip.version == 4 else self.limit.ipv6_prefix
        return ip.version, int(ip) >> (ip.max_prefixlen - bits)
