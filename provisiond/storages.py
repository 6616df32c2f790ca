"""Storages in the daemon: configured backends, the iSCSI exporter, reconcile.

Owns turning ``[[storage]]`` configuration into working
:mod:`storage.backends` objects and one :mod:`storage.exporters` exporter,
and the :class:`StorageService` that, at daemon start-up, checks that every
configured backend can work on this host (saying exactly why not), makes
sure the iSCSI target daemon runs (tgtd is started detached and deliberately
outlives provisiond: SAN-booted machines keep their disks across a daemon
restart), and reconciles exports with the database — what should be
exported is, stale exports are removed.

A ``[[storage]]`` with ``host`` lives on a storage host driven over SSH
(:mod:`storage.ssh`): its LVM commands run there and its LIO exports are made
there by the shipped helper (:mod:`storage.exporters.lio_remote`). Each host
is connected and reconciled on its own (:meth:`StorageService.connect_host`).
A host that cannot be reached is marked ``down`` with the reason (its
appliances cannot start) and polled until it answers; then it is reconciled.

The configuration is the one source of storages: :func:`declared` is what the
API, the CLI and the UI list, and :func:`read_only` is their answer to a
create, change or remove (edit ``[[storage]]`` and restart instead).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisiond import chapsecret, logs
from provisiond.config import Config, StorageConfig
from provisiond.db import Database
from provisiond.errors import Conflict, Invalid, NotFound
from provisiond.lifecycle import ApplianceState as AS
from provisiond.model import Appliance, Storage, Volume
from provisiond.modes import ApplianceMode as M
from provisiond.secretbox import SecretBoxError
from storage.backends import Backend, make_backend
from storage.backends.base import StorageError
from storage.backends.file import FileBackend
from storage.backends.lvm import LvmBackend
from storage.exporters import (
    Exporter,
    ExportSpec,
    TgtDaemon,
    TgtExporter,
    choose_exporter,
    reconcile,
)
from storage.exporters.lio_remote import RemoteLioExporter
from storage.runner import Runner
from storage.sparse import Progress
from storage.ssh import HostDown, SshRunner, SshTarget

log = logs.get("storage")
CLONE_PREFIX = "app-"  # provisiond/sanboot.py names an appliance's clone app-<name>


class StorageManager:
    def __init__(self, config: Config, runner: Runner | None = None) -> None:
        self.config = config
        self.runner = runner or Runner()
        self._by_name = {s.name: s for s in config.storages}
        self._ssh: dict[str, SshRunner] = {}
        self._lock = threading.Lock()
        #: called with (storage name, reason) when a storage host's kept SSH connection stops
        #: answering (storage.ssh liveness); the StorageService marks it down and polls it
        self.on_host_down: Callable[[str, str], None] | None = None

    def settings(self, name: str | None) -> StorageConfig:
        if not self._by_name:
            raise Invalid(
                "no [[storage]] is configured; add one (name, backend, path) to the config file",
                field="storage",
            )
        if name is None:
            return next(iter(self._by_name.values()))
        try:
            return self._by_name[name]
        except KeyError:
            raise NotFound(
                f"storage '{name}' is not configured (known: {', '.join(self._by_name)})",
                field="storage",
            )

    def backend(self, name: str | None, progress: Progress | None = None) -> Backend:
        st = self.settings(name)
        if st.backend == "file":
            return FileBackend(st.path, progress=progress)
        return make_backend(
            st.backend, directory=st.path, vg=st.path, thin_pool=st.thin_pool or None,
            runner=self.runner_for(st.name),
        )  # fmt: skip

    def runner_for(self, name: str | None) -> Runner:
        """This machine's Runner, or the storage host's SshRunner (one connection per host)."""
        st = self.settings(name)
        if not st.host:
            return self.runner
        with self._lock:
            if st.name not in self._ssh:
                key = Path(st.key) if st.key else self.config.ssh_key_path
                self._ssh[st.name] = SshRunner(
                    SshTarget(host=st.host, port=st.port, user=st.user, key_path=key,
                              host_key=st.host_key,
                              pins_path=self.config.state_dir / "storage-hostkeys.json",
                              alive_interval=st.alive_interval, alive_timeout=st.alive_timeout),
                    on_down=lambda reason, name=st.name: self._host_down(name, reason),
                )  # fmt: skip
            return self._ssh[st.name]

    def _host_down(self, name: str, reason: str) -> None:
        if self.on_host_down is not None:
            self.on_host_down(name, reason)

    def revive(self, name: str) -> None:
        """Connect to ``name``'s storage host now, past its fail-fast interval (HostDown if not)."""
        runner = self.runner_for(name)
        if isinstance(runner, SshRunner):
            runner.revive()

    def close(self) -> None:
        """Close the SSH connections to storage hosts."""
        with self._lock:
            for runner in self._ssh.values():
                runner.close()

    def host_exporter(self, name: str) -> Exporter:
        """The exporter on a storage host: LIO through the helper ("auto", "lio") or tgtadm."""
        st = self.settings(name)
        runner = self.runner_for(name)
        if st.exporter == "tgt":
            return TgtExporter(runner, control_port=self.config.iscsi.tgt_control_port)
        return RemoteLioExporter(runner, st.host, self.config.iscsi.port)

    def exporter(self) -> Exporter:
        setting = next((s.exporter for s in self.config.storages if s.exporter != "auto"), "auto")
        return choose_exporter(
            setting,
            portal_ip=str(self.config.address),
            port=self.config.iscsi.port,
            runner=self.runner,
            tgt_control_port=self.config.iscsi.tgt_control_port,
        )

    def prepare(self) -> None:
        """Create the directories of file and reflink storages (``provisiond init``)."""
        for st in self.config.storages:
            if st.backend in ("file", "reflink"):
                Path(st.path).mkdir(parents=True, exist_ok=True, mode=0o700)
                Path(st.path).chmod(0o700)

    def sync_rows(self, session: Session) -> None:
        """Make a Storage row for each configured storage (names are the link)."""
        for st in self.config.storages:
            row = session.scalars(select(Storage).where(Storage.name == st.name)).first()
            if row is None:
                row = Storage(name=st.name, backend=st.backend, path=st.path, exporter=st.exporter)
                session.add(row)
            else:
                row.backend, row.path, row.exporter = st.backend, st.path, st.exporter
            row.host = st.host or None


def wanted_exports(
    session: Session, state_dir: Path, storages: set[str] | None = None
) -> list[ExportSpec]:
    """Exports the database says must exist: sanboot appliances starting or active.

    ``storages``: only those whose volume lives on one of them (a storage host's exports).
    CHAP secrets are opened with the server key in ``state_dir`` (:mod:`provisiond.chapsecret`).
    """
    out = []
    for app in session.scalars(
        select(Appliance).where(
            Appliance.mode == M.SANBOOT, Appliance.state.in_((AS.STARTING, AS.ACTIVE))
        )
    ):
        p = app.params or {}
        if app.volume is None or not p.get("target_iqn"):
            continue
        if storages is not None and app.volume.storage.name not in storages:
            continue
        try:
            secret = chapsecret.secret_of(state_dir, p)
        except SecretBoxError as exc:
            log.error("appliance %s: its CHAP secret cannot be opened (%s); start it again",
                      app.name, exc)  # fmt: skip
            continue
        out.append(
            ExportSpec(
                target_iqn=p["target_iqn"],
                path=app.volume.path,
                initiator_iqn=p["initiator_iqn"],
                chap_user=p.get("chap_user"),
                chap_secret=secret,
                lun=int(p["lun"]) if "lun" in p else None,
            )
        )
    return out


class StorageService:
    name = "storage"

    def __init__(self, config: Config, db: Database, manager: StorageManager) -> None:
        self.config, self.db, self.manager = config, db, manager
        self.exporter: Exporter | None = None
        self.lock = threading.Lock()  # export changes: deploy jobs and the storage watch
        self.host_exporters: dict[str, Exporter] = {}  # storage name -> exporter on its host
        self.poll_interval = 5.0  # seconds between connection attempts to a down host
        self._stop = threading.Event()
        self._pollers: dict[str, threading.Thread] = {}
        manager.on_host_down = self._host_down

    def revive(self) -> None:
        """This machine's exporter stopped answering: start (our) tgtd again and check it."""
        exporter = self.exporter or self.manager.exporter()
        if isinstance(exporter, TgtExporter):
            self._ensure_tgtd()
        exporter.check()
        self.exporter = exporter

    @property
    def local_storages(self) -> list[StorageConfig]:
        return [st for st in self.config.storages if not st.host]

    def exporter_for(self, storage: str) -> Exporter | None:
        """The exporter serving ``storage``'s volumes (its host's, or this machine's)."""
        if self.manager.settings(storage).host:
            return self.host_exporters.get(storage)
        return self.exporter

    def portal_for(self, storage: str) -> str:
        """The iSCSI portal address machines log in to for ``storage``'s volumes."""
        return self.manager.settings(storage).host or str(self.config.address)

    def host_down_reason(self, storage: str) -> str | None:
        """Why ``storage``'s host is down (None: up, or not a storage host)."""
        with self.db.transaction() as s:
            row = s.scalars(select(Storage).where(Storage.name == storage)).first()
            if row is None or row.host_state != "down":
                return None
            return row.host_reason or "unreachable"

    def connect_host(self, name: str) -> bool:
        """Connect, check and reconcile one storage host; mark it up or down. True = up."""
        st = self.manager.settings(name)
        try:
            self.manager.revive(name)  # a host that was down: try now, not fail fast
            backend = self.manager.backend(name)
            if isinstance(backend, LvmBackend) and (st.devices or st.thin_pool_size):
                for line in backend.ensure_vg(st.devices, st.thin_pool_size):
                    log.info("storage %s on %s: %s", name, st.host, line)
            backend.check()
            exporter = self.manager.host_exporter(name)
            exporter.check()
            with self.db.transaction() as s:
                wanted = wanted_exports(s, self.config.state_dir, self.same_host(name))
            if isinstance(exporter, RemoteLioExporter):
                added, removed = exporter.reconcile_all(wanted)
            else:
                added, removed = reconcile(exporter, wanted)
            self._remove_orphan_clones(name, backend)
        except StorageError as exc:
            self.host_exporters.pop(name, None)
            self._mark(name, "down", str(exc))
            log.warning("storage host %s (%s) is down: %s", name, st.host, exc)
            return False
        self.host_exporters[name] = exporter
        self._mark(name, "up", None)
        log.info("storage host %s (%s): up; reconciled exports (added %s, removed stale %s)",
                 name, st.host, added, removed)  # fmt: skip
        return True

    def same_host(self, name: str) -> set[str]:
        """Names of the storages on ``name``'s host (they share its targets, maybe its VG)."""
        host = self.manager.settings(name).host
        return {st.name for st in self.config.storages if st.host == host}

    def _remove_orphan_clones(self, name: str, backend: Backend) -> list[str]:
        """Delete appliance clones (``app-*`` with an origin) no volume row knows.

        They are left when the daemon died between cloning and recording the
        clone. Masters and volumes provisiond did not name are never touched.
        """
        with self.db.transaction() as s:
            known = set(
                s.scalars(
                    select(Volume.name).join(Storage).where(Storage.name.in_(self.same_host(name)))
                ).all()
            )
        orphans = [
            v.name
            for v in backend.list()
            if v.name.startswith(CLONE_PREFIX) and v.origin and v.name not in known
        ]
        for vol in orphans:
            backend.delete(vol)
            log.warning("storage %s: removed orphaned clone %s (no appliance owns it)", name, vol)
        return orphans

    def host_failed(self, name: str, exc: Exception) -> None:
        """A job found ``name``'s host unreachable: mark it down and poll until it is back."""
        if isinstance(exc, HostDown):
            self.host_exporters.pop(name, None)
            self._mark(name, "down", str(exc))
            self._poll(name)

    def _host_down(self, name: str, reason: str) -> None:
        """``name``'s host stopped answering on its kept connection: down, then poll it."""
        host = self.manager.settings(name).host
        down = HostDown(f"storage host {host} is down: {reason}")
        for other in sorted(self.same_host(name)):  # one host, one connection's fate
            self.host_failed(other, down)

    def _mark(self, name: str, state: str, reason: str | None) -> None:
        with self.db.transaction() as s:
            row = s.scalars(select(Storage).where(Storage.name == name)).first()
            if row is not None:
                row.host_state, row.host_reason = state, reason

    def _poll(self, name: str) -> None:
        t = self._pollers.get(name)
        if t is not None and t.is_alive():
            return

        def loop() -> None:
            while not self._stop.wait(self.poll_interval):
                if self.connect_host(name):
                    return

        t = threading.Thread(target=loop, name=f"storage-host-{name}", daemon=True)
        self._pollers[name] = t
        t.start()

    def start(self) -> None:
        for st in self.local_storages:
            self.manager.backend(st.name).check()  # raises with the exact reason
            log.info("storage %s: %s at %s ok", st.name, st.backend, st.path)
        with self.db.transaction() as s:
            self.manager.sync_rows(s)
        for st in self.config.storages:
            if st.host and not self.connect_host(st.name):
                self._poll(st.name)
        if not self.local_storages:
            return
        exporter = self.manager.exporter()
        if isinstance(exporter, TgtExporter):
            self._ensure_tgtd()
        exporter.check()
        self.exporter = exporter
        with self.db.transaction() as s:
            local = {st.name for st in self.local_storages}
            wanted = [
                w for w in wanted_exports(s, self.config.state_dir) if _storage_of(s, w) in local
            ]
        added, removed = reconcile(exporter, wanted)
        if added or removed:
            log.info("reconciled exports: added %s, removed stale %s", added, removed)

    def _ensure_tgtd(self) -> None:
        cfg = self.config
        daemon = TgtDaemon(
            str(cfg.address),
            cfg.iscsi.port,
            control_port=cfg.iscsi.tgt_control_port,
            runner=self.manager.runner,
            log_path=str(cfg.state_dir / "tgtd.log"),
        )
        if daemon.running():  # ours from an earlier run, or a stranger: refuse the latter
            ident = daemon.verify()
            log.info("tgtd already serves %s (control port %d, pid %s)", daemon.portal,
                     cfg.iscsi.tgt_control_port, ident.pid or "unknown")  # fmt: skip
            return
        daemon.start()  # returns once the started process owns the control port
        log.info("started tgtd on %s (control port %d, pid %d)", daemon.portal,
                 cfg.iscsi.tgt_control_port, daemon.proc.pid if daemon.proc else 0)  # fmt: skip

    def stop(self) -> None:
        """Exports stay: machines booted from them must not lose their disks."""
        self._stop.set()
        self.manager.close()


def _storage_of(session: Session, spec: ExportSpec) -> str | None:
    """Name of the storage whose volume backs ``spec`` (by the appliance's target IQN)."""
    for app in session.scalars(select(Appliance).where(Appliance.mode == M.SANBOOT)):
        if (app.params or {}).get("target_iqn") == spec.target_iqn and app.volume is not None:
            return app.volume.storage.name
    return None


# --- one source of truth: ``[[storage]]`` in the configuration ----------------------
#
# The backends (StorageManager) are built from the configuration only; the
# Storage rows mirror it (StorageManager.sync_rows at start-up and ``init``)
# and add what the daemon learns (a storage host's state). So the API, the
# CLI and the UI list the declared storages, and refuse to create, change or
# remove one: that is an edit of the configuration file and a restart.


@dataclass(frozen=True)
class Declared:
    """A storage as the API, CLI and UI show it: its declaration and its row.

    ``config`` is None for a row no ``[[storage]]`` declares any more (no
    backend serves it; its volumes stay recorded); ``row`` is None for a
    declared storage the daemon has not started with yet.
    """

    name: str
    config: StorageConfig | None
    row: Storage | None


def declared(config: Config, session: Session) -> list[Declared]:
    """The configured storages in file order, then rows no declaration backs."""
    rows = {r.name: r for r in session.scalars(select(Storage).order_by(Storage.id))}
    out = [Declared(st.name, st, rows.pop(st.name, None)) for st in config.storages]
    return out + [Declared(name, None, row) for name, row in rows.items()]


def find_declared(config: Config, session: Session, ref: str) -> Declared:
    """One storage by name (or its row's id); NotFound naming the list command."""
    for d in declared(config, session):
        if d.name == ref or (d.row is not None and ref.isdigit() and d.row.id == int(ref)):
            return d
    raise NotFound(f"storage '{ref}' not found; see `provisiond storage list`", field="storage")


def read_only(storage: Declared | None = None) -> Conflict:
    """The refusal of a storage write through the API: the configuration is the source."""
    if storage is None:
        return Conflict(
            "storages are declared in provisiond.toml: add a [[storage]] table there "
            "(name, backend, path) and restart provisiond",
            field="name",
        )
    if storage.config is None:
        return Conflict(
            f"storage {storage.name} is not declared in provisiond.toml any more, so no backend "
            "serves it; declare it again in a [[storage]] table to use its volumes"
        )
    return Conflict(
        f"storage {storage.name} is declared in provisiond.toml; edit [[storage]] there "
        "and restart provisiond"
    )
