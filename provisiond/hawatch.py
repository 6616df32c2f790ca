"""The HA watcher: the daemon thread that carries out N-to-1 failover.

Owns, every ``[ha] interval`` seconds: reading the HA appliances and their
pools' spares, polling the power status of their machines (bounded
concurrency, each call bounded by ``[ha] power_timeout``), asking
:func:`provisiond.ha.decide`, and doing what it says:

1. **fence** the dead machine: power it off through its driver (and read
   the status back: it must say off), **and** remove the appliance's iSCSI
   export, so the dead machine can never write to the volume again. A fence
   that fails stops the failover: no takeover without a fence (no split
   brain); ``ha_state`` says ``fence-failed`` and why;
2. **move** the appliance to the spare (:func:`provisiond.appliances.move`);
3. **boot** it there: queue ``appliance.start`` (a sanboot appliance
   re-exports the same clone to the spare's initiator, and the spare's
   idle agent reboots into it);
4. **record** ``ha_state`` / ``ha_reason`` / ``ha_failover_at``, audit
   events, and run the notification hook (``notify_command`` and/or
   ``notify_url``).

Heartbeats of the appliances' operating systems arrive at
``POST /ha/v1/heartbeat`` (:mod:`web.hareport`, :func:`provisiond.hapools.heartbeat`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import threading
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import or_, select, update

from provisiond import appliances, events, logs
from provisiond.context import Context
from provisiond.ha import (
    Action,
    Candidate,
    Decision,
    HaState,
    Needs,
    Observation,
    Policy,
    decide,
    pick_spare,
)
from provisiond.lifecycle import ApplianceState as AS
from provisiond.lifecycle import ResourceState as RS
from provisiond.model import Appliance, Resource, utcnow
from provisiond.modes import ApplianceMode as M
from provisiond.power import (
    PowerAction,
    PowerError,
    PowerState,
    driver_for,
    load_builtin,
    settings_of,
)
from pxe.service import LoopThread
from storage.fetch import redact_url

log = logs.get("ha")
POWER_WORKERS = 8


@dataclass(frozen=True)
class Notice:
    """One HA event for the notification hook."""

    event: str  # failover | fence-failed | waiting | recovered | failover-failed
    appliance: str
    state: str
    reason: str
    from_resource: str = ""
    to_resource: str = ""

    def env(self) -> dict[str, str]:
        return {
            "HA_EVENT": self.event,
            "HA_APPLIANCE": self.appliance,
            "HA_STATE": self.state,
            "HA_REASON": self.reason,
            "HA_FROM": self.from_resource,
            "HA_TO": self.to_resource,
        }


class Notifier:
    """Runs ``notify_command`` (argv, HA_* variables) and POSTs ``notify_url`` (JSON)."""

    def __init__(self, command: str, url: str, timeout: float = 10.0) -> None:
        self.argv = shlex.split(command) if command else []
        self.url, self.timeout = url, timeout

    def __call__(self, notice: Notice) -> None:
        if self.argv:
            try:
                run = subprocess.run(
                    self.argv, env={**os.environ, **notice.env()}, capture_output=True,
                    timeout=self.timeout, stdin=subprocess.DEVNULL,
                )  # fmt: skip
                if run.returncode != 0:
                    log.warning("ha notify_command exited %d: %s", run.returncode,
                                run.stderr.decode(errors="replace")[-300:])  # fmt: skip
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.warning("ha notify_command %s failed: %s", self.argv[0], exc)
        if self.url:
            body = json.dumps(
                {k.removeprefix("HA_").lower(): v for k, v in notice.env().items()}
            ).encode()
            req = urllib.request.Request(
                self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read(1024)
            except OSError as exc:
                log.warning("ha notify_url %s failed: %s", redact_url(self.url), exc)


@dataclass(frozen=True)
class _Watched:
    """One HA appliance read from the database for one sweep."""

    app_id: int
    name: str
    pool: str
    mode: str
    state: str
    ha_state: str
    resource_id: int
    resource: str
    needs: Needs
    heartbeat_at: dt.datetime | None
    failover_at: dt.datetime | None
    target_iqn: str


class HaWatcher:
    """The failover loop (see the module docstring)."""

    name = "ha"

    def __init__(
        self,
        ctx: Context,
        exporter: Callable[[], object | None] = lambda: None,
        open_secret: Callable[[str], str] | None = None,
        notify: Callable[[Notice], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        cfg = ctx.config.ha
        self.ctx, self._exporter, self.clock = ctx, exporter, clock
        self.policy = Policy(timeout=cfg.timeout, hold_down=cfg.hold_down)
        self._open_secret = open_secret
        self.notify = notify or Notifier(cfg.notify_command, cfg.notify_url)
        self._off_since: dict[tuple[int, int], dt.datetime] = {}  # (app, resource) -> first off
        self._pool = ThreadPoolExecutor(max_workers=POWER_WORKERS, thread_name_prefix="ha-power")
        self._wake = threading.Event()
        self._loop = LoopThread("ha", self._step, log)
        load_builtin()  # the power driver modules register themselves

    # -- service ------------------------------------------------------------

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._wake.set()
        self._loop.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _step(self) -> None:
        self._wake.wait(self.ctx.config.ha.interval)
        if not self._loop.stopping:
            self.tick()

    # -- one sweep ------------------------------------------------------------

    def tick(self) -> dict[str, Decision]:
        """One sweep over every HA appliance; returns the decisions (for tests)."""
        now = self.clock()
        watched = self._read()
        out = self._finish_failovers(w for w in watched if w.ha_state == HaState.FAILING_OVER)
        busy = (HaState.FAILING_OVER, HaState.FENCING)
        live = [w for w in watched if w.state == AS.ACTIVE and w.ha_state not in busy]
        powers = dict(zip([w.app_id for w in live], self._powers(live), strict=True))
        in_flight = {w.app_id for w in watched if w.ha_state in busy}
        promised: set[int] = set()
        for w in live:
            power, error = powers[w.app_id]
            key = (w.app_id, w.resource_id)
            if power == PowerState.OFF:
                self._off_since.setdefault(key, now)
            else:
                self._off_since.pop(key, None)
            obs = Observation(
                appliance=w.name, pool=w.pool, power=power, power_error=error,
                off_since=self._off_since.get(key), heartbeat_at=w.heartbeat_at,
                failover_at=w.failover_at, in_flight=w.app_id in in_flight,
            )  # fmt: skip
            spare = pick_spare(w.needs, self._candidates(w), promised)
            d = decide(obs, now, self.policy, spare)
            out[w.name] = d
            if d.action == Action.FAILOVER:
                promised.add(d.spare.resource_id)
                self._failover(w, d)
            else:
                reason = d.reason
                if d.state == HaState.WATCHING and w.failover_at is not None:
                    reason += f"; last failover {w.failover_at:%Y-%m-%d %H:%M:%S} onto {w.resource}"
                self._record(w, d.state, reason, notify_on={HaState.WAITING})
        return out

    def _read(self) -> list[_Watched]:
        with self.ctx.db.reader() as s:
            rows = s.scalars(select(Appliance).where(Appliance.ha.is_(True))).all()
            return [
                _Watched(
                    app_id=a.id,
                    name=a.name,
                    pool=a.ha_pool or "",
                    mode=a.mode,
                    state=a.state,
                    ha_state=a.ha_state or HaState.WATCHING,
                    resource_id=a.resource_id,
                    resource=a.resource.display_name,
                    needs=Needs.of(a.resource.inventory),
                    heartbeat_at=a.ha_heartbeat_at,
                    failover_at=a.ha_failover_at,
                    target_iqn=str((a.params or {}).get("target_iqn") or ""),
                )
                for a in rows
            ]

    def _candidates(self, w: _Watched) -> list[Candidate]:
        if not w.pool:
            return []
        with self.ctx.db.reader() as s:
            busy = select(Appliance.resource_id)
            rows = s.scalars(
                select(Resource).where(
                    Resource.ha_pool == w.pool,
                    Resource.state == RS.IDLE,
                    Resource.id != w.resource_id,
                    Resource.id.not_in(busy),
                )
            ).all()
            return [Candidate(r.id, r.display_name, Needs.of(r.inventory)) for r in rows]

    # -- power ------------------------------------------------------------------

    def _driver(self, resource_id: int):
        with self.ctx.db.reader() as s:
            res = s.get(Resource, resource_id)
            settings = settings_of(res, self._open)
        if settings is None:
            return None
        from dataclasses import replace

        return driver_for(replace(settings, timeout=float(self.ctx.config.ha.power_timeout)))

    def _open(self, sealed: str) -> str:
        if self._open_secret is None:
            from provisiond.secretbox import for_state_dir

            self._open_secret = for_state_dir(self.ctx.config.state_dir).open
        return self._open_secret(sealed)

    def _status(self, resource_id: int) -> tuple[PowerState | None, str]:
        try:
            drv = self._driver(resource_id)
            if drv is None:
                return None, ""
            return drv.status(), ""
        except PowerError as exc:
            return PowerState.UNKNOWN, str(exc)
        except Exception as exc:  # a driver bug must not stop the watcher
            log.exception("power status of resource %d", resource_id)
            return PowerState.UNKNOWN, f"power driver error: {exc}"

    def _powers(self, live: list[_Watched]) -> list[tuple[PowerState | None, str]]:
        return list(self._pool.map(self._status, [w.resource_id for w in live]))

    # -- failover -----------------------------------------------------------------

    def _fence(self, w: _Watched) -> str:
        """Power the machine off and cut it from the volume; what was done, or PowerError."""
        done = []
        drv = self._driver(w.resource_id)
        if drv is not None:
            drv.act(PowerAction.OFF)
            state = drv.status()
            if state != PowerState.OFF:
                raise PowerError(f"{w.resource} still reports power {state} after power off")
            done.append(f"powered off {w.resource}")
        elif w.mode != M.SANBOOT:
            raise PowerError(
                f"{w.resource} has no power driver, and a {w.mode} appliance runs from its own "
                f"disk: nothing can fence it (`provisiond resource set-power {w.resource} ...`)"
            )
        if w.mode == M.SANBOOT and w.target_iqn:
            exporter = self._exporter()
            if exporter is None:
                raise PowerError(f"no iSCSI exporter runs: cannot remove {w.target_iqn}")
            try:
                exporter.unexport(w.target_iqn)
            except Exception as exc:
                raise PowerError(f"removing the export {w.target_iqn} failed: {exc}") from exc
            done.append(f"removed {w.resource}'s access to {w.target_iqn}")
        return ", ".join(done)

    def _failover(self, w: _Watched, d: Decision) -> None:
        spare = d.spare
        log.warning("appliance %s on %s is dead (%s)", w.name, w.resource, d.reason)
        if not self._claim(w, d.reason):
            log.info("appliance %s: another daemon fails it over", w.name)
            return
        try:
            fenced = self._fence(w)
        except PowerError as exc:
            reason = f"fencing {w.resource} failed: {exc}; no takeover (no split brain)"
            log.error("appliance %s: %s", w.name, reason)
            self._record(w, HaState.FENCE_FAILED, reason, notify_on={HaState.FENCE_FAILED})
            return
        why = f"HA failover of {w.name}: {d.reason.split(': failing over')[0]}"
        try:
            with self.ctx.db.transaction() as s:
                app = s.get(Appliance, w.app_id)
                target = s.get(Resource, spare.resource_id)
                appliances.move(s, app, target, f"fenced ({fenced}); {why}")
                app.ha_failover_at = self.clock()
                app.ha_heartbeat_at = None
                app.ha_state = str(HaState.FAILING_OVER)
                app.ha_reason = f"{d.reason}; fenced: {fenced}; {spare.name} is booting"
                appliances.start(s, app, actor="ha")
                events.record(s, "ha", "ha.failover", w.name,
                              f"{w.resource} -> {spare.name}: {app.ha_reason}")  # fmt: skip
                reason = app.ha_reason
        except Exception as exc:
            reason = f"moving to {spare.name} failed after the fence: {exc}"
            log.exception("appliance %s: %s", w.name, reason)
            self._record(w, HaState.FAILED, reason, notify_on={HaState.FAILED})
            return
        self.ctx.inventory.refresh()
        self.ctx.ring()
        log.warning("appliance %s: %s", w.name, reason)
        self.notify(Notice("failover", w.name, HaState.FAILING_OVER, reason, w.resource,
                           spare.name))  # fmt: skip

    def _claim(self, w: _Watched, reason: str) -> bool:
        """Take the failover for this daemon (one transaction; daemons sharing a database
        race here and exactly one wins): ha_state -> fencing."""
        with self.ctx.db.transaction() as s:
            won = s.execute(
                update(Appliance)
                .where(
                    Appliance.id == w.app_id,
                    Appliance.resource_id == w.resource_id,
                    Appliance.state == AS.ACTIVE,
                    or_(
                        Appliance.ha_state.is_(None),
                        Appliance.ha_state.not_in((HaState.FENCING, HaState.FAILING_OVER)),
                    ),
                )
                .values(
                    ha_state=str(HaState.FENCING),
                    ha_reason=f"fencing {w.resource}: {reason}",
                    updated_at=Appliance.updated_at,
                )
            ).rowcount
        return bool(won)

    def _finish_failovers(self, flying) -> dict[str, Decision]:
        """Failovers whose spare came up (watching) or failed; what each one is now."""
        out = {}
        for w in flying:
            out[w.name] = Decision(Action.NONE, HaState.FAILING_OVER, "the spare is booting")
            if w.state == AS.ACTIVE:
                out[w.name] = Decision(Action.NONE, HaState.WATCHING, "failed over")
                took = (self.clock() - w.failover_at).total_seconds() if w.failover_at else 0
                reason = (
                    f"failed over to {w.resource}; active {took:.1f} s after the failover began"
                )
                self._record(w, HaState.WATCHING, reason, event="ha.recovered")
                self.notify(Notice("recovered", w.name, HaState.WATCHING, reason, "", w.resource))
            elif w.state in (AS.FAILED, AS.STOPPED):
                with self.ctx.db.reader() as s:
                    why = s.get(Appliance, w.app_id).state_reason
                reason = f"the start on {w.resource} failed: {why}"
                self._record(w, HaState.FAILED, reason, notify_on={HaState.FAILED})
                out[w.name] = Decision(Action.NONE, HaState.FAILED, reason)
        return out

    def _record(
        self,
        w: _Watched,
        state: HaState,
        reason: str,
        notify_on: set[HaState] = frozenset(),
        event: str = "ha.state",
    ) -> None:
        """Store ha_state/ha_reason; an event (and a notice) only when the state changes."""
        changed = w.ha_state != state
        with self.ctx.db.transaction() as s:
            s.execute(
                update(Appliance)
                .where(Appliance.id == w.app_id)
                .values(ha_state=str(state), ha_reason=reason, updated_at=Appliance.updated_at)
            )
            if changed:
                events.record(s, "ha", event, w.name, f"{w.ha_state} -> {state}: {reason}")
        if changed:
            (log.warning if state != HaState.WATCHING else log.info)(
                "appliance %s: HA %s (%s)", w.name, state, reason
            )
            if state in notify_on:
                self.notify(Notice(str(state), w.name, str(state), reason, w.resource))
