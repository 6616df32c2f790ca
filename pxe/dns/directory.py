"""Name directory: the DNS server's view of the inventory.

Owns the :class:`NameDirectory` protocol (what the DNS service asks) and
:class:`StaticDirectory`, a dict-backed implementation for unit tests and
fixed entries. The database-backed implementation lives in
:mod:`provisiond.inventory` and answers from memory (DNS never waits on the
database). Names are short
host names without the domain, lower case:
a resource's name, or ``r-<mac without colons>`` when it has none;
appliances by their name.
"""

from __future__ import annotations

from typing import Protocol


class NameDirectory(Protocol):
    def address_of(self, name: str) -> str | None:
        """IPv4 address (dotted quad) for a short host name, or None."""
        ...

    def name_of(self, address: str) -> str | None:
        """Short host name for an IPv4 address (for PTR), or None."""
        ...


class StaticDirectory:
    def __init__(self, entries: dict[str, str] | None = None) -> None:
        self._by_name = {k.lower(): v for k, v in (entries or {}).items()}
        self._by_ip = {v: k for k, v in self._by_name.items()}

    def address_of(self, name: str) -> str | None:
        return self._by_name.get(name.lower())

    def name_of(self, address: str) -> str | None:
        return self._by_ip.get(address)
