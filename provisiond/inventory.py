"""The in-memory inventory: what the hot paths read instead of the database.

Owns :class:`Inventory`, an immutable :class:`Snapshot` of resources,
appliances, leases and the default kernel, swapped atomically when the
database changes. DHCP, TFTP and DNS never wait on the database: the boot
policy and the DNS directory answer from the current snapshot. A background
refresher (:class:`InventoryRefresher`, a Service) polls a cheap fingerprint
(row counts and newest ``updated_at`` per table) every ``interval`` seconds
and reloads only when it changed. In-process writers either call
:meth:`Inventory.refresh` (visible at once; for rare changes such as an
appliance starting) or :meth:`Inventory.request_refresh` (coalesced by the
refresher; for paths that come in storms, such as boot scripts and agent
registrations), so a boot storm costs at most one reload per wake-up.
Changes by other processes (CLI, other instances) arrive through
:mod:`provisiond.changes`: :meth:`Inventory.note_change` wakes the refresher
for a fingerprint check at once, instead of at its next periodic check. What
decides a boot script (the default kernel, appliances) is checked on the
request itself by :meth:`Inventory.ensure_boot_current`: a ``kernel add``
committed by the CLI is in the very next boot script, whichever instance
serves it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sqlalchemy import func, select

from provisiond import logs
from provisiond.db import Database
from provisiond.model import Appliance, Kernel, Lease, Resource
from pxe.service import LoopThread

log = logs.get("inventory")
MIN_GAP = 0.5  # seconds between requested reloads


@dataclass(frozen=True)
class KernelView:
    name: str
    kernel_path: str
    initrd_path: str
    cmdline: str


@dataclass(frozen=True)
class ApplianceView:
    id: int
    name: str
    mode: str
    state: str
    params: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ResourceView:
    id: int
    mac: str
    name: str  # display name: the resource's name or r-<mac>
    state: str
    ip: str | None
    appliance: ApplianceView | None = None


@dataclass(frozen=True)
class Snapshot:
    by_mac: MappingProxyType
    addresses: MappingProxyType  # short name -> ip
    names: MappingProxyType  # ip -> short name
    default_kernel: KernelView | None

    @classmethod
    def empty(cls) -> Snapshot:
        e = MappingProxyType({})
        return cls(e, e, e, None)


class Inventory:
    """Thread-safe holder of the current snapshot; also a NameDirectory."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._snap = Snapshot.empty()
        self._lock = threading.Lock()
        self._fingerprint: tuple[Any, ...] | None = None
        self.wake = threading.Event()  # set by request_refresh(); the refresher reloads
        self._forced = False  # a request_refresh() since the refresher's last wake-up

    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    def resource(self, mac: str) -> ResourceView | None:
        return self._snap.by_mac.get(mac)

    # NameDirectory -------------------------------------------------------
    def address_of(self, name: str) -> str | None:
        return self._snap.addresses.get(name.lower())

    def name_of(self, address: str) -> str | None:
        return self._snap.names.get(address)

    # loading ---------------------------------------------------------------
    def _fingerprint_now(self) -> tuple[Any, ...]:
        with self._db.reader() as s:
            return tuple(
                tuple(s.execute(select(func.count(), func.max(col))).one())
                for col in (
                    Resource.updated_at,
                    Appliance.updated_at,
                    Kernel.updated_at,
                    Lease.updated_at,
                )
            )

    def resource_fingerprint(self) -> tuple[Any, ...]:
        """Row count and newest ``updated_at`` of resources (heartbeats keep the latter)."""
        with self._db.reader() as s:
            return tuple(s.execute(select(func.count(), func.max(Resource.updated_at))).one())

    def _boot_fingerprint_now(self) -> tuple[Any, ...]:
        """The part of the fingerprint that decides boot scripts: appliances, kernels."""
        with self._db.reader() as s:
            return tuple(
                tuple(s.execute(select(func.count(), func.max(col))).one())
                for col in (Appliance.updated_at, Kernel.updated_at)
            )

    def ensure_boot_current(self) -> bool:
        """Reload now when appliances or kernels changed since the snapshot; True if it did.

        Two small aggregate reads per call; for boot scripts, so a change
        committed just before (by the CLI or another instance) is never missed.
        """
        fp = self._fingerprint
        if fp is not None and self._boot_fingerprint_now() == fp[1:3]:
            return False
        with self._lock:  # requests that raced here reload once, not each
            now = self._fingerprint
            if now is not fp and now is not None and self._boot_fingerprint_now() == now[1:3]:
                return True  # another thread reloaded with this change meanwhile
            self._reload()
        return True

    def note_change(self, tables: frozenset[str] | None = None) -> None:
        """Another process may have changed the database: check the fingerprint soon."""
        self.wake.set()

    def take_forced(self) -> bool:
        forced, self._forced = self._forced, False
        return forced

    def request_refresh(self) -> None:
        """Ask the refresher for a reload soon (coalesced: at most one per wake-up).

        For request paths that may come in storms (boot scripts, agent
        registrations): they must not each reload the whole inventory.
        """
        self._forced = True
        self.wake.set()

    def refresh_if_changed(self) -> bool:
        fp = self._fingerprint_now()
        if fp == self._fingerprint:
            return False
        self.refresh(fp)
        return True

    def refresh(self, fingerprint: tuple[Any, ...] | None = None) -> None:
        with self._lock:
            self._reload(fingerprint)

    def _reload(self, fingerprint: tuple[Any, ...] | None = None) -> None:
        fp = fingerprint or self._fingerprint_now()  # before the load: a later change reloads
        self._snap = self._load()
        self._fingerprint = fp

    def _load(self) -> Snapshot:
        with self._db.reader() as s:
            apps: dict[int, ApplianceView] = {}
            for a in s.scalars(select(Appliance)):
                apps[a.resource_id] = ApplianceView(
                    a.id, a.name, a.mode, a.state, MappingProxyType(dict(a.params or {}))
                )
            by_mac: dict[str, ResourceView] = {}
            addresses: dict[str, str] = {}
            for row in s.execute(
                select(Resource.id, Resource.mac, Resource.name, Resource.state, Resource.ip)
            ):
                name = row.name or "r-" + row.mac.replace(":", "")
                app = apps.get(row.id)
                by_mac[row.mac] = ResourceView(row.id, row.mac, name, row.state, row.ip, app)
                if row.ip:
                    addresses[name.lower()] = row.ip
                    if app is not None:
                        addresses.setdefault(app.name.lower(), row.ip)
            for lease in s.scalars(select(Lease).where(Lease.state == "bound")):
                short = "r-" + lease.mac.replace(":", "")
                view = by_mac.get(lease.mac)
                name = view.name if view else short
                if view is None or not view.ip:
                    addresses.setdefault(name.lower(), lease.ip)
            k = s.scalars(select(Kernel).where(Kernel.is_default.is_(True))).first()
            kernel = KernelView(k.name, k.kernel_path, k.initrd_path, k.cmdline) if k else None
        names = {ip: name for name, ip in addresses.items()}
        return Snapshot(
            MappingProxyType(by_mac),
            MappingProxyType(addresses),
            MappingProxyType(names),
            kernel,
        )


class InventoryRefresher:
    """Service: keep the snapshot in step with the database (other processes write too)."""

    name = "inventory"

    def __init__(self, inventory: Inventory, interval: float = 1.0) -> None:
        self._inv, self._interval = inventory, interval
        self._loop = LoopThread("inventory", self._step, log)

    def _step(self) -> None:
        requested = self._inv.wake.wait(self._interval)
        self._inv.wake.clear()
        if self._loop.stopping:
            return
        if requested and self._inv.take_forced():
            self._inv.refresh()
            # a storm of requests (boot scripts, registrations) costs at most
            # one full reload per MIN_GAP, not one per wake-up back to back
            self._loop.sleep(MIN_GAP)
        elif self._inv.refresh_if_changed() and requested:
            self._loop.sleep(MIN_GAP)  # a storm of notified changes: the same bound

    def start(self) -> None:
        self._inv.refresh()
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop(wake=self._inv.wake.set)  # a step waits on wake for up to the interval
