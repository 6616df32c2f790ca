"""The composition root: the only place that wires concrete implementations.

Owns building the daemon from a :class:`provisiond.config.Config` — database,
inventory, boot policy, Flask app and every enabled service — and running it
until SIGTERM/SIGINT. Start-up order: migrate the database, fail what a
previous run left in a transient state, install boot assets, then start the
services (inventory first, so the hot paths never see an empty world).
Services stop in reverse order; the whole stop is bounded (< 5 s).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

from provisiond import assets, logs, resources
from provisiond.capture import CaptureJob
from provisiond.config import Config
from provisiond.context import Context
from provisiond.db import Database
from provisiond.httpd import HttpService
from provisiond.inventory import Inventory, InventoryRefresher
from provisiond.jobrunner import ByMode, JobRunner
from provisiond.localdeploy import LocalStart, LocalStop
from provisiond.policy import DatabasePolicy
from provisiond.release import EraseJob
from provisiond.sanboot import SanbootStart, SanbootStop
from provisiond.scheduler import Scheduler
from provisiond.service import Service
from provisiond.storages import StorageManager, StorageService
from provisiond.templatedeploy import TemplateStart, TemplateStop
from pxe.http.ipxe import IpxeRenderer

log = logs.get("daemon")


def build_context(config: Config) -> Context:
    db = Database(config.database_url)
    inventory = Inventory(db)
    return Context(
        config=config,
        db=db,
        inventory=inventory,
        policy=DatabasePolicy(config, inventory),
        renderer=IpxeRenderer(config.templates_dir, config.http_base),
    )


def _protocol_services(ctx: Context) -> Iterator[Service]:
    cfg = ctx.config
    if cfg.services.dhcp and cfg.subnets:
        from pxe.dhcp.server import DhcpService

        yield DhcpService(cfg, ctx.policy, ctx.db)
    if cfg.services.tftp:
        from pxe.tftp.server import TftpService

        yield TftpService(cfg)
    if cfg.services.dns:
        from pxe.dns.server import DnsService

        yield DnsService(cfg, ctx.inventory)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctx = build_context(config)
        self.services: list[Service] = []
        self._started: list[Service] = []

    def prepare(self) -> None:
        self.ctx.db.migrate()
        with self.ctx.db.session() as s:
            failed = resources.recover_after_restart(s)
        if failed:
            log.warning("%d objects were caught mid-work by a restart and are now failed", failed)
        assets.install_ipxe(self.config.boot_assets_dir)

    def start(self) -> None:
        from web import create_app

        self.prepare()
        ctx = self.ctx
        self.services = [InventoryRefresher(ctx.inventory)]
        if self.config.services.http:
            self.services.append(
                HttpService(create_app(ctx), str(self.config.address), self.config.http_port)
            )
        self.services.extend(_protocol_services(ctx))
        manager = StorageManager(self.config)
        storage = StorageService(self.config, ctx.db, manager)
        appliance_jobs = ByMode(
            ctx.db,
            {
                "sanboot": SanbootStart(ctx, manager, storage),
                "local": LocalStart(ctx),
                "template": TemplateStart(ctx),
            },
        )
        stop_jobs = ByMode(
            ctx.db,
            {
                "sanboot": SanbootStop(ctx, storage),
                "local": LocalStop(ctx),
                "template": TemplateStop(ctx),
            },
        )
        other_jobs = {"image.capture": CaptureJob(ctx, manager), "resource.erase": EraseJob(ctx)}
        self.services += [
            storage,
            JobRunner(
                ctx.db,
                {"appliance.start": appliance_jobs, "appliance.stop": stop_jobs, **other_jobs},
            ),
            Scheduler(self.config, ctx.db, ctx.inventory),
        ]
        for svc in self.services:
            try:
                svc.start()
            except Exception:
                log.error("%s failed to start; stopping what already runs", svc.name)
                self.stop()
                raise
            self._started.append(svc)
        log.info("started: %s", ", ".join(s.name for s in self._started))

    def stop(self) -> None:
        while self._started:
            svc = self._started.pop()
            try:
                svc.stop()
            except Exception:
                log.exception("%s did not stop cleanly", svc.name)
        self.ctx.db.dispose()


def serve(config: Config) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the exit code."""
    stop = threading.Event()

    def _signal(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    daemon = Daemon(config)
    try:
        daemon.start()
    except Exception as exc:
        log.error("start-up failed: %s", exc)
        return 1
    while not stop.wait(1.0):
        pass
    daemon.stop()
    log.info("stopped")
    return 0
