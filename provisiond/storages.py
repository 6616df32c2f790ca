"""Storages in the daemon: configured backends, the iSCSI exporter, reconcile.

Owns turning ``[[storage]]`` configuration into working
:mod:`storage.backends` objects and one :mod:`storage.exporters` exporter,
and the :class:`StorageService` that, at daemon start-up, checks that every
configured backend can work on this host (saying exactly why not), makes
sure the iSCSI target daemon runs (tgtd is started detached and deliberately
outlives provisiond: SAN-booted machines keep their disks across a daemon
restart), and reconciles exports with the database — what should be
exported is, stale exports are removed.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisiond import logs
from provisiond.config import Config, StorageConfig
from provisiond.db import Database
from provisiond.errors import Invalid, NotFound
from provisiond.model import Appliance, Storage
from storage.backends import Backend, make_backend
from storage.backends.file import FileBackend
from storage.exporters import (
    Exporter,
    ExportSpec,
    TgtDaemon,
    TgtExporter,
    choose_exporter,
    reconcile,
)
from storage.runner import Runner
from storage.sparse import Progress

log = logs.get("storage")


class StorageManager:
    def __init__(self, config: Config, runner: Runner | None = None) -> None:
        self.config = config
        self.runner = runner or Runner()
        self._by_name = {s.name: s for s in config.storages}

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
            runner=self.runner,
        )  # fmt: skip

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
                session.add(
                    Storage(name=st.name, backend=st.backend, path=st.path, exporter=st.exporter)
                )
            else:
                row.backend, row.path, row.exporter = st.backend, st.path, st.exporter


def wanted_exports(session: Session) -> list[ExportSpec]:
    """Exports the database says must exist: sanboot appliances starting or active."""
    out = []
    for app in session.scalars(
        select(Appliance).where(
            Appliance.mode == "sanboot", Appliance.state.in_(("starting", "active"))
        )
    ):
        p = app.params or {}
        if app.volume is None or not p.get("target_iqn"):
            continue
        out.append(
            ExportSpec(
                target_iqn=p["target_iqn"],
                path=app.volume.path,
                initiator_iqn=p["initiator_iqn"],
                chap_user=p.get("chap_user"),
                chap_secret=p.get("chap_secret"),
                lun=int(p["lun"]) if "lun" in p else None,
            )
        )
    return out


class StorageService:
    name = "storage"

    def __init__(self, config: Config, db: Database, manager: StorageManager) -> None:
        self.config, self.db, self.manager = config, db, manager
        self.exporter: Exporter | None = None

    def start(self) -> None:
        for st in self.config.storages:
            self.manager.backend(st.name).check()  # raises with the exact reason
            log.info("storage %s: %s at %s ok", st.name, st.backend, st.path)
        with self.db.session() as s:
            self.manager.sync_rows(s)
        if not self.config.storages:
            return
        exporter = self.manager.exporter()
        if isinstance(exporter, TgtExporter):
            self._ensure_tgtd()
        exporter.check()
        self.exporter = exporter
        with self.db.session() as s:
            added, removed = reconcile(exporter, wanted_exports(s))
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
