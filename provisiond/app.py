"""The composition root: the only place that wires concrete implementations.

Owns building the daemon from a :class:`provisiond.config.Config` — database,
inventory, boot policy, Flask app and every enabled service — and running it
until SIGTERM/SIGINT. Start-up order: take the instance lock (before anything
touches the database: a second ``serve`` on the same state exits here and
changes nothing), migrate the database, write this instance's lease, fail
what is orphaned (this instance's leftovers and work of instances whose
lease expired; :mod:`provisiond.recovery`), install boot assets, then start
the services (lease keeper first, then inventory, so the hot paths never
see an empty world; then the change feed, :mod:`provisiond.changes`, which
brings commits of the CLI and other instances in at once). Services stop in
reverse order; the whole stop is bounded (< 5 s); the lease ends and the lock is released last.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

from provisiond import assets, images, instance, logs, priority, pxesettings, recovery, sdnotify
from provisiond.agentd import AgentServer
from provisiond.boots import BootRegistry
from provisiond.capture import CaptureJob
from provisiond.changes import ChangeFeed
from provisiond.config import Config
from provisiond.context import Context
from provisiond.db import Database
from provisiond.hawatch import HaWatcher
from provisiond.httpd import HttpService, HttpsService
from provisiond.inventory import Inventory, InventoryRefresher
from provisiond.jobrunner import ByMode, JobRunner
from provisiond.localdeploy import LocalStart, LocalStop
from provisiond.modes import ApplianceMode as M
from provisiond.policy import DatabasePolicy
from provisiond.powerctl import PowerPoller
from provisiond.release import EraseJob
from provisiond.sanboot import SanbootStart, SanbootStop
from provisiond.scheduler import Scheduler
from provisiond.security import check_tls_pair, private_state
from provisiond.storages import StorageManager, StorageService
from provisiond.storagewatch import StorageWatch
from provisiond.templatedeploy import TemplateStart, TemplateStop
from pxe.http.ipxe import IpxeRenderer
from pxe.service import Service

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
        boots=BootRegistry(window=config.agent.boot_window),
    )


def _protocol_services(ctx: Context) -> Iterator[Service]:
    cfg = ctx.config
    if cfg.services.dhcp and cfg.subnets:
        from provisiond.leases import SqlLeaseStore
        from pxe.dhcp.server import DhcpService

        store = SqlLeaseStore(ctx.db, logs.get("dhcp"))
        yield DhcpService(pxesettings.dhcp(cfg), ctx.policy, store, sightings=ctx.boots,
                          observer=ctx.os_dhcp.observe)  # fmt: skip
    if cfg.services.tftp:
        from pxe.tftp.server import TftpService

        yield TftpService(pxesettings.tftp(cfg))
    if cfg.services.dns:
        from pxe.dns.server import DnsService

        yield DnsService(pxesettings.dns(cfg), ctx.inventory)


def _https(cfg: Config, app) -> HttpsService:
    try:
        check_tls_pair(cfg.tls_cert_path, cfg.tls_key_path)
    except ValueError as exc:
        raise RuntimeError(f"https: {exc}")
    return HttpsService(app, str(cfg.address), cfg.http.https_port,
                        str(cfg.tls_cert_path), str(cfg.tls_key_path))  # fmt: skip


def _change_feed(ctx: Context) -> ChangeFeed:
    """Changes by the CLI and other instances: the inventory checks, agent polls wake."""
    feed = ChangeFeed(ctx.config.database_url, ctx.config.sqlite_path)

    resources_seen: list = [None]

    def changed(tables: frozenset[str] | None) -> None:
        ctx.inventory.note_change(tables)
        if tables is None or "job" in tables:  # a command may be queued for an agent here
            ctx.ring()
        if tables is not None:
            if "resource" in tables:
                ctx.tokens.clear()
            return
        fp = ctx.inventory.resource_fingerprint()  # SQLite: which table, it does not say
        if fp != resources_seen[0]:
            resources_seen[0] = fp
            ctx.tokens.clear()

    def committed_here(tables: frozenset[str]) -> None:
        if "resource" in tables:  # a token revoked by this daemon is refused at once
            ctx.tokens.clear()

    feed.subscribe(changed)
    ctx.db.on_commit(committed_here)
    return feed


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctx = build_context(config)
        self.lock: instance.InstanceLock | None = None
        self.services: list[Service] = []
        self._started: list[Service] = []

    def prepare(self) -> None:
        """Lock, migrate, lease, recover. Raises AlreadyRunning before any database access."""
        self.lock = instance.InstanceLock.acquire(self.config)
        private_state(self.config.state_dir, self.config.sqlite_path)
        self.ctx.db.migrate(self.config.state_dir)
        with self.ctx.db.transaction() as s:
            instance.register(s, self.config)
            failed = recovery.recover(s, self.config.instance)
        if failed:
            log.warning("%d objects were caught mid-work and are now failed", len(failed))
            for reason in sorted({f.reason for f in failed}):
                names = ", ".join(f"{f.kind} {f.name}" for f in failed if f.reason == reason)
                log.warning("%s: %s", reason, names)
        assets.install_ipxe(self.config.boot_assets_dir)

    def start(self) -> None:
        from web import create_app

        try:
            self.prepare()
        except BaseException:
            self._unlock()
            raise
        ctx = self.ctx
        self.services = [
            instance.LeaseKeeper(self.config, ctx.db, self.lock),
            InventoryRefresher(ctx.inventory),
            _change_feed(ctx),
        ]
        if self.config.services.http:
            from web.agent import create_agent_app

            app = create_app(ctx)
            self.services.append(HttpService(app, str(self.config.address), self.config.http_port))
            if self.config.http.tls:
                self.services.append(_https(self.config, app))
            self.services.append(
                AgentServer(ctx, create_agent_app, str(self.config.address), self.config.agent_port)
            )
        self.services.extend(_protocol_services(ctx))
        manager = StorageManager(self.config)
        storage = StorageService(self.config, ctx.db, manager)
        appliance_jobs = ByMode(
            ctx.db,
            {
                M.SANBOOT: SanbootStart(ctx, manager, storage),
                M.LOCAL: LocalStart(ctx),
                M.TEMPLATE: TemplateStart(ctx),
            },
        )
        stop_jobs = ByMode(
            ctx.db,
            {
                M.SANBOOT: SanbootStop(ctx, storage),
                M.LOCAL: LocalStop(ctx),
                M.TEMPLATE: TemplateStop(ctx),
            },
        )
        other_jobs = {"image.capture": CaptureJob(ctx, manager), "resource.erase": EraseJob(ctx)}
        other_jobs["image.capture"].backfill.sweep()  # captured images whose sha256 is pending
        other_jobs[images.IMPORT] = images.ImportJob(ctx.db, manager)
        self.services += [
            storage,
            StorageWatch(ctx, storage),
            JobRunner(
                ctx.db,
                {"appliance.start": appliance_jobs, "appliance.stop": stop_jobs, **other_jobs},
                owner=self.config.instance,
            ),
            Scheduler(self.config, ctx.db, ctx.inventory, ctx.liveness),
            PowerPoller(self.config, ctx.db),
        ]
        if self.config.ha.enabled:
            self.services.append(HaWatcher(ctx, exporter=lambda: storage.exporter))
        for svc in self.services:
            try:
                svc.start()
            except Exception:
                log.error("%s failed to start; stopping what already runs", svc.name)
                self.stop()
                raise
            self._started.append(svc)
        priority.settle_gc()  # no long collector pauses while thousands of agents call
        log.info("started: %s", ", ".join(s.name for s in self._started))

    def stop(self) -> None:
        while self._started:
            svc = self._started.pop()
            t0 = time.monotonic()
            try:
                svc.stop()
            except Exception:
                log.exception("%s did not stop cleanly", svc.name)
            log.debug("stopped %s in %.2f s", svc.name, time.monotonic() - t0)
        self.ctx.db.dispose()
        self._unlock()

    def _unlock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


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
    except instance.AlreadyRunning as exc:
        log.error("%s", exc)
        return 1
    except Exception as exc:
        log.error("start-up failed: %s", exc)
        return 1
    sdnotify.notify("READY=1")  # Type=notify (provisiond.service): every service listens
    while not stop.wait(1.0):
        pass
    sdnotify.notify("STOPPING=1")
    daemon.stop()
    log.info("stopped")
    return 0
