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
from provisiond.service import LoopThread

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
        with self._db.sessions() as s:
            return tuple(
                s.execute(select(func.count(), func.max(col))).one()
                for col in (
                    Resource.updated_at,
                    Appliance.updated_at,
                    Kernel.updated_at,
                    Lease.updated_at,
                )
            )

    def request_refresh(self) -> None:
        """Ask the refresher for a reload soon (coalesced: at most one per wake-up).

        For request paths that may come in storms (boot scripts, agent
        registrations): they must not each reload the whole inventory.
        """
        self.wake.set()

    def refresh_if_changed(self) -> bool:
        fp = self._fingerprint_now()
        if fp == self._fingerprint:
            return False
        self.refresh(fp)
        return True

    def refresh(self, fingerprint: tuple[Any, ...] | None = None) -> None:
        with self._lock:
            fp = fingerprint or self._fingerprint_now()
            self._snap = self._load()
            self._fingerprint = fp

    def _load(self) -> Snapshot:
        with self._db.sessions() as s:
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
        if requested:
            self._inv.refresh()
            # a storm of requests (boot scripts, registrations) costs at most
            # one full reload per MIN_GAP, not one per wake-up back to back
            self._loop.sleep(MIN_GAP)
        else:
            self._inv.refresh_if_changed()

    def start(self) -> None:
        self._inv.refresh()
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        self._inv.wake.set()
