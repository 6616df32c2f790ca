"""The ``sanboot`` deployer: clone-on-deploy volumes exported over iSCSI.

Owns the two jobs of a sanboot appliance:

``appliance.start``
    clone the image's master volume (constant time on reflink/LVM; a kept
    clone of an earlier start is reused), export it as the appliance's own
    target — LUN backed by the clone, ACL for the resource's initiator IQN
    only, CHAP with a fresh 16-character secret — store what the boot
    policy needs in the appliance's parameters (the secret sealed,
    :mod:`provisiond.chapsecret`), ask the idle agent to
    reboot, and watch the boot chain (:mod:`provisiond.bootchain`): the
    exporter must list a session of the resource's initiator on that target
    (tgt's I_T nexus, LIO's ACL session) and the machine must then stop
    fetching its SAN script for ``iscsi.boot_settle`` seconds; only then are
    appliance and resource ``active``. Fetching the SAN boot script proves
    nothing (it is a plain HTTP GET), but fetching it again and again
    (``iscsi.max_script_fetches``) is a boot loop: the job fails with what
    was seen, as it does when ``iscsi.boot_timeout`` passes.
``appliance.stop``
    remove the export; the appliance is ``stopped`` and the resource
    ``releasing`` until it boots into the agent again.
"""

from __future__ import annotations

import time

from provisiond import appliances, bootchain, chapsecret, jobs, logs, powerctl
from provisiond.agentjob import appliance_of
from provisiond.config import Config
from provisiond.context import Context
from provisiond.jobrunner import JobFailed
from provisiond.lifecycle import ApplianceState as AS
from provisiond.model import Job, Volume
from provisiond.storages import StorageManager, StorageService
from storage.backends import StorageError
from storage.exporters import ExportSpec, IscsiSession, new_chap_secret

log = logs.get("sanboot")
LOGIN_POLL = 1.0  # seconds between reads of the target's session list


def iqns(config: Config, appliance: str, resource: str) -> tuple[str, str]:
    prefix = config.iscsi.iqn_prefix
    return f"{prefix}:{appliance}", f"{prefix}:{resource}".lower()


class SanbootStart:
    def __init__(self, ctx: Context, manager: StorageManager, storage: StorageService) -> None:
        self.ctx, self.manager, self.storage = ctx, manager, storage

    def _log(self, job_id: int, line: str) -> None:
        log.info("job %d: %s", job_id, line)
        with self.ctx.db.transaction() as s:
            jobs.append_log(s.get(Job, job_id), line)

    def run(self, job_id: int) -> str:
        db = self.ctx.db
        with db.transaction() as s:
            app = appliance_of(s, job_id)
            image = app.image
            if image is None or image.volume is None:
                raise JobFailed(f"appliance {app.name}: its image has no master volume")
            master, storage_name = image.volume, image.volume.storage.name
            master_id, storage_id = master.id, master.storage_id
            app_name, res_name = app.name, app.resource.display_name
            kept = app.volume.name if app.volume else None
        down = self.storage.host_down_reason(storage_name)
        if down is not None:
            raise JobFailed(f"storage host of {storage_name} is down: {down}")
        exporter = self.storage.exporter_for(storage_name)
        if exporter is None:
            raise JobFailed("no iSCSI exporter is running: configure a [[storage]] and restart")
        self._exporter = exporter
        try:
            return self._start(job_id, app_name, res_name, image, master, storage_name, master_id,
                               storage_id, kept, exporter)  # fmt: skip
        except JobFailed as exc:
            if exc.__cause__ is not None:
                self.storage.host_failed(storage_name, exc.__cause__)
            raise

    def _start(self, job_id, app_name, res_name, image, master, storage_name, master_id,
               storage_id, kept, exporter) -> str:  # fmt: skip
        db, cfg = self.ctx.db, self.ctx.config
        backend = self.manager.backend(storage_name)
        clone_name = kept or f"app-{app_name}"
        t0 = time.monotonic()
        try:
            vol = backend.get(clone_name) if kept else None
            if vol is None:
                vol = backend.clone(master.name, clone_name)
                self._log(job_id, f"cloned {master.name} -> {clone_name} "
                          f"in {time.monotonic() - t0:.3f} s")  # fmt: skip
            else:
                self._log(job_id, f"reusing kept volume {clone_name}")
        except StorageError as exc:
            raise JobFailed(f"clone of image {image.name} failed: {exc}") from exc
        target, initiator = iqns(cfg, app_name, res_name)
        with db.reader() as s:
            self.ctx.san_fetches.reset(s.get(Job, job_id).resource_id)  # a new boot attempt
        spec = ExportSpec(
            target_iqn=target,
            path=vol.path,
            initiator_iqn=initiator,
            chap_user=app_name[:64],
            chap_secret=new_chap_secret(),
        ).with_lun(exporter.default_lun)
        try:
            with self.storage.lock:  # the storage watch restores exports under the same lock
                exporter.unexport(target)
                exporter.export(spec)
        except StorageError as exc:
            raise JobFailed(f"export of {clone_name} as {target} failed: {exc}") from exc
        self._log(job_id, f"exported {clone_name} as {target} lun {spec.lun} for {initiator}")
        with db.transaction() as s:
            app = appliance_of(s, job_id)
            if app.volume is None:
                row = Volume(storage_id=storage_id, name=clone_name, path=vol.path,
                             size=vol.size, origin_id=master_id)  # fmt: skip
                s.add(row)
                s.flush()
                app.volume_id = row.id
            app.params = {
                **(app.params or {}),
                "target_iqn": target,
                "initiator_iqn": initiator,
                "lun": spec.lun,
                "portal": self.storage.portal_for(storage_name),
                "chap_user": spec.chap_user,
                chapsecret.KEY: chapsecret.seal(cfg.state_dir, spec.chap_secret),
            }
            res = app.resource
            agent_alive = res.hostkey is not None and res.agent_token_hash is not None
            if agent_alive:
                jobs.enqueue_command(s, res, "reboot", actor="sanboot")
            res_id = res.id
        self.ctx.inventory.refresh()
        self.ctx.ring()
        if agent_alive:
            self._log(job_id, "asked the agent to reboot into the SAN target")
        else:
            self._log(
                job_id,
                powerctl.boot_or_advise(
                    self.ctx.config, self.ctx.db, res_id, "boot the SAN target", "sanboot"
                ),
            )
        return self._wait_login(job_id, target, initiator)

    def _wait_login(self, job_id: int, target: str, initiator: str) -> str:
        """Watch the boot (bounded by boot_timeout) until :func:`bootchain.judge` decides."""
        cfg = self.ctx.config.iscsi
        fetches = self.ctx.san_fetches
        with self.ctx.db.reader() as s:
            res_id = s.get(Job, job_id).resource_id
        t0 = time.monotonic()
        login_at, login_ever, where = None, False, ""
        while True:
            with self.ctx.db.reader() as s:
                app = appliance_of(s, job_id)
                if app is None or app.state == AS.FAILED:
                    raise JobFailed("appliance failed or was removed while starting")
            now = time.monotonic()
            last = fetches.last(res_id)
            if login_at is not None and last is not None and last > login_at:
                self._log(job_id, "the machine fetched its SAN script again after logging in: "
                                  "that boot failed")  # fmt: skip
                login_at = None
            login = self._login(target, initiator)
            if login is not None and login_at is None:
                login_at, login_ever = now, True
                where = ", ".join(login.addresses) or "an unknown address"
                self._log(job_id, f"iSCSI login of {initiator} from {where}; waiting "
                                  f"{cfg.boot_settle} s for the boot to settle")  # fmt: skip
            verdict = bootchain.judge(
                bootchain.Seen(fetches.count(res_id), last, login_at, now, t0, login_ever),
                initiator=initiator, target=target, max_fetches=cfg.max_script_fetches,
                settle=cfg.boot_settle, timeout=cfg.boot_timeout,
            )  # fmt: skip
            if verdict.state == "failed":
                raise JobFailed(verdict.reason)
            if verdict.state == "active":
                evidence = (
                    f"iSCSI login of {initiator} from {where}; booted (no SAN script "
                    f"fetch for {cfg.boot_settle} s after it)"
                )
                with self.ctx.db.transaction() as s:
                    appliances.booted(s, res_id, evidence)
                fetches.reset(res_id)  # from now on, fetches count against the running OS
                self.ctx.inventory.refresh()
                return f"active: {initiator} logged in to {target} from {where} and booted"
            time.sleep(LOGIN_POLL)

    def _login(self, target: str, initiator: str) -> IscsiSession | None:
        try:
            sessions = self._exporter.sessions(target)
        except StorageError as exc:
            log.warning("sessions of %s not readable: %s", target, exc)
            return None
        return next((x for x in sessions if x.initiator_iqn == initiator), None)

    def fail(self, job_id: int, reason: str) -> None:
        appliances.fail_job(self.ctx.db, job_id, reason)
        self.ctx.inventory.refresh()


class SanbootStop:
    def __init__(self, ctx: Context, storage: StorageService) -> None:
        self.ctx, self.storage = ctx, storage

    def run(self, job_id: int) -> str:
        with self.ctx.db.transaction() as s:
            app = appliance_of(s, job_id)
            target = (app.params or {}).get("target_iqn")
            storage_name = app.volume.storage.name if app.volume else None
        exporter = (
            self.storage.exporter_for(storage_name) if storage_name else self.storage.exporter
        )
        if target and exporter is not None:
            try:
                exporter.unexport(target)
            except StorageError as exc:
                raise JobFailed(f"unexport of {target} failed: {exc}")
        with self.ctx.db.transaction() as s:
            appliances.stopped(s, appliance_of(s, job_id),
                               "export removed")  # fmt: skip
        self.ctx.inventory.refresh()
        return f"stopped: {target or 'nothing'} unexported"

    def fail(self, job_id: int, reason: str) -> None:
        appliances.fail_job(self.ctx.db, job_id, reason)
