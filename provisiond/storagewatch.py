"""The storage watch: active SAN-booted appliances keep their targets, or are told they lost them.

Owns the periodic check (every ``iscsi.reconcile_interval`` seconds) of this
instance's ``active`` sanboot appliances:

- a target that vanished from the exporter behind provisiond's back (an
  operator's ``tgtadm --op delete``, a tgtd restarted without its targets)
  or that now differs (LUN path, ACL, CHAP user) is exported again from the
  appliance's parameters: event ``export.restored``;
- if that fails (the clone's backing file is gone, the exporter cannot be
  reached or is not ours), the appliance and its machine go ``failed`` with
  the reason: event ``storage.fault``;
- a machine that keeps fetching its SAN script after it became active
  (``iscsi.max_script_fetches`` times) is in a boot loop: ``failed`` with
  that reason. A reboot that came back is no loop: once its initiator is
  logged in again and ``iscsi.boot_settle`` seconds passed without a fetch,
  the count starts over (a SAN-booted OS holds its disk's session).

Only restores, never removes: removing stale exports is start-up
reconcile's job (:class:`provisiond.storages.StorageService`), and a
starting appliance's target belongs to its deploy job, which exports under
the same lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import or_, select

from provisiond import appliances, bootchain, chapsecret, events, logs
from provisiond.context import Context
from provisiond.lifecycle import ApplianceState as AS
from provisiond.model import Appliance
from provisiond.modes import ApplianceMode as M
from provisiond.secretbox import SecretBoxError
from provisiond.storages import StorageService
from pxe.service import LoopThread
from storage.backends.base import StorageError
from storage.exporters import ExportSpec
from storage.runner import CommandFailed

log = logs.get("storage")


@dataclass(frozen=True)
class Watched:
    app_id: int
    name: str
    resource_id: int
    storage: str
    spec: ExportSpec


class StorageWatch:
    name = "storage-watch"

    def __init__(self, ctx: Context, storage: StorageService) -> None:
        self.ctx, self.storage = ctx, storage
        self._wake = threading.Event()
        self._loop = LoopThread("storage-watch", self._step, log)

    def start(self) -> None:
        faults = bootchain.active_faults()
        if faults:
            log.warning("TEST FAULT injection is on (%s): SAN boot scripts will be wrong on "
                        "purpose; unset %s", sorted(faults), bootchain.FAULT_ENV)  # fmt: skip
        self._loop.start()

    def stop(self) -> None:
        self._wake.set()
        self._loop.stop()

    def _step(self) -> None:
        self._wake.wait(self.ctx.config.iscsi.reconcile_interval)
        if self._loop.stopping:
            return
        self.tick()

    # -- one pass ---------------------------------------------------------
    def watched(self) -> list[Watched]:
        me, state_dir = self.ctx.config.instance, self.ctx.config.state_dir
        out = []
        with self.ctx.db.reader() as s:
            rows = s.scalars(
                select(Appliance).where(
                    Appliance.mode == M.SANBOOT,
                    Appliance.state == AS.ACTIVE,
                    or_(Appliance.owner.is_(None), Appliance.owner == me),
                )
            )
            for app in rows:
                p = app.params or {}
                if app.volume is None or not p.get("target_iqn"):
                    continue
                try:
                    secret = chapsecret.secret_of(state_dir, p)
                except SecretBoxError as exc:
                    log.error("appliance %s: its CHAP secret cannot be opened (%s)", app.name, exc)
                    continue
                spec = ExportSpec(p["target_iqn"], app.volume.path, p["initiator_iqn"],
                                  p.get("chap_user"), secret,
                                  int(p["lun"]) if "lun" in p else None)  # fmt: skip
                out.append(
                    Watched(app.id, app.name, app.resource_id, app.volume.storage.name, spec)
                )
        return out

    def tick(self) -> dict[str, list[str]]:
        """One check; returns {"restored": [...], "failed": [...]} appliance names."""
        done: dict[str, list[str]] = {"restored": [], "failed": []}
        rows = self.watched()
        by_storage: dict[str, list[Watched]] = {}
        for row in rows:
            by_storage.setdefault(row.storage, []).append(row)
        with self.storage.lock:
            for storage, group in by_storage.items():
                self._check(storage, group, done)
        self._boot_loops(rows, done)
        if done["failed"]:
            self.ctx.inventory.refresh()
        return done

    def _check(self, storage: str, rows: list[Watched], done: dict[str, list[str]]) -> None:
        remote = bool(self.storage.manager.settings(storage).host)
        exporter = self.storage.exporter_for(storage)
        if exporter is None:
            return  # a storage host that is down: its poller reconciles when it is back
        try:
            have = {e.target_iqn: e for e in exporter.list_exports()}
        except (StorageError, CommandFailed) as exc:
            if remote:  # a host that stopped answering: down with the reason, polled back
                self.storage.host_failed(storage, exc)
                return
            have = self._revive(exc)
            exporter = self.storage.exporter
        for row in rows:
            if have is None or exporter is None:
                self._fault(row, "cannot be served: the iSCSI exporter is unreachable", done)
                continue
            want = row.spec.with_lun(exporter.default_lun)
            cur = have.get(want.target_iqn)
            if cur is not None and cur.key() == want.key():
                continue
            what = "vanished from" if cur is None else "was changed on"
            try:
                exporter.export(want)
            except (StorageError, CommandFailed) as exc:
                self._fault(row, f"{what} the exporter and could not be restored: {exc}", done)
                continue
            detail = f"target {want.target_iqn} {what} the exporter; exported again"
            self._event("export.restored", row, detail)
            done["restored"].append(row.name)

    def _revive(self, exc: Exception) -> dict[str, ExportSpec] | None:
        log.warning("storage watch: exporter not readable (%s); trying to bring it back", exc)
        try:
            self.storage.revive()
            return {e.target_iqn: e for e in self.storage.exporter.list_exports()}
        except (StorageError, CommandFailed) as again:
            log.error("storage watch: exporter still unusable: %s", again)
            return None

    def _boot_loops(self, rows: list[Watched], done: dict[str, list[str]]) -> None:
        limit, settle = self.ctx.config.iscsi.max_script_fetches, self.ctx.config.iscsi.boot_settle
        fetches = self.ctx.san_fetches
        for row in rows:
            if row.name in done["failed"]:
                continue
            n, last = fetches.count(row.resource_id), fetches.last(row.resource_id)
            if n and last is not None and time.monotonic() - last >= settle and self._in(row):
                fetches.reset(row.resource_id)  # a reboot that came back: its OS holds the disk
                continue
            if n >= limit:
                reason = (
                    f"boot loop: the machine fetched its SAN script {n} times since it became "
                    "active (its OS does not boot from the target any more)"
                )
                self._fail(row, reason, done)

    def _in(self, row: Watched) -> bool:
        """Is the machine's initiator logged in to its target now?"""
        exporter = self.storage.exporter_for(row.storage)
        if exporter is None:
            return False
        try:
            sessions = exporter.sessions(row.spec.target_iqn)
        except (StorageError, CommandFailed):
            return False
        return any(x.initiator_iqn == row.spec.initiator_iqn for x in sessions)

    def _fault(self, row: Watched, why: str, done: dict[str, list[str]]) -> None:
        reason = f"storage fault: target {row.spec.target_iqn} of {row.name} {why}"
        self._event("storage.fault", row, reason)
        self._fail(row, reason, done)

    def _fail(self, row: Watched, reason: str, done: dict[str, list[str]]) -> None:
        log.error("appliance %s: %s", row.name, reason)
        with self.ctx.db.transaction() as s:
            app = s.get(Appliance, row.app_id)
            if app is not None and app.state == AS.ACTIVE:
                appliances.fail(s, app, reason)
                done["failed"].append(row.name)
        self.ctx.san_fetches.reset(row.resource_id)

    def _event(self, action: str, row: Watched, detail: str) -> None:
        log.warning("appliance %s: %s", row.name, detail)
        with self.ctx.db.transaction() as s:
            events.record(s, "storage", action, row.name, detail)
