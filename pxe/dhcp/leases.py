"""The lease store port: what the DHCP server needs to make leases durable.

Owns the :class:`LeaseStore` protocol and :class:`MemoryLeaseStore`, an
in-memory implementation (standalone runs, tests: nothing survives a
restart). The database-backed store with group commit is
:class:`provisiond.leases.SqlLeaseStore`; the composition root passes it in.

The server's contract: at start it loads the leases and reservations; after
answering a batch of requests it calls :meth:`LeaseStore.write` once with the
batch's rows and sends the batch's ACKs only if that returned True (a lease
is durable before its ACK leaves). ``start(on_reservations)`` may call back
later with a new reservation map (mac -> ip).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from pxe.dhcp.pool import LeaseRow

OnReservations = Callable[[dict[str, str]], None]


class LeaseStore(Protocol):
    batches: int  # successful write() calls
    rows_written: int
    failures: int

    def load_leases(self, now: float) -> list[LeaseRow]: ...

    def load_reservations(self) -> dict[str, str]: ...

    def write(self, rows: Sequence[LeaseRow]) -> bool: ...

    def start(self, on_reservations: OnReservations | None = None) -> None: ...

    def stop(self, timeout: float = 1.5) -> None: ...


class MemoryLeaseStore:
    """Leases in a dict (by address), reservations given at construction."""

    def __init__(self, reservations: dict[str, str] | None = None) -> None:
        self.reservations = {m.lower(): ip for m, ip in (reservations or {}).items()}
        self.leases: dict[str, LeaseRow] = {}
        self.batches = self.rows_written = self.failures = 0
        self._lock = threading.Lock()
        self.on_reservations: OnReservations | None = None

    def load_leases(self, now: float) -> list[LeaseRow]:
        with self._lock:
            return list(self.leases.values())

    def load_reservations(self) -> dict[str, str]:
        return dict(self.reservations)

    def write(self, rows: Sequence[LeaseRow]) -> bool:
        with self._lock:
            for r in rows:
                self.leases[r.ip] = r
            self.batches += 1
            self.rows_written += len(rows)
        return True

    def reserve(self, reservations: dict[str, str]) -> None:
        """New reservations, told to the running server (as the SQL store's refresh does)."""
        self.reservations = {m.lower(): ip for m, ip in reservations.items()}
        if self.on_reservations is not None:
            self.on_reservations(self.load_reservations())

    def start(self, on_reservations: OnReservations | None = None) -> None:
        self.on_reservations = on_reservations

    def stop(self, timeout: float = 1.5) -> None:
        self.on_reservations = None
