"""Power control of resources: set the settings, act, poll, and boot a machine without agent.

Owns what the daemon, CLI and API do with :mod:`provisiond.power` drivers:

- :func:`set_power` / :func:`clear_power`: validate and store a resource's
  driver settings; the password is sealed with the server key
  (:mod:`provisiond.secretbox`, one box cached per state directory) and
  never returned, logged or put into an event.
- :func:`act`: one action (on, off, cycle, status) on one resource; the
  outcome (state, or the driver's error) is written to the resource row and
  actions are recorded as events.
- :func:`sweep` and :class:`PowerPoller`: every ``[power] interval`` seconds the
  power state of every resource with a driver is read, ``[power] concurrency``
  BMCs at a time, each call bounded by ``[power] timeout``, and the results
  are written in one transaction.
- :func:`boot`: what a deploy does when the machine has no agent to reboot it:
  switch it on when off, cycle it when on (WoL: send the packet). Returns
  None when the resource has no driver, so the caller falls back as before.

Driver calls happen outside database sessions: a slow BMC never holds a
transaction open.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select

from provisiond import events, logs, power, present
from provisiond.config import Config
from provisiond.db import Database
from provisiond.errors import Conflict, Invalid, NotFound
from provisiond.model import Resource, utcnow
from provisiond.power import PowerAction, PowerError, PowerSettings, PowerState
from provisiond.secretbox import SecretBox, for_state_dir
from pxe.service import LoopThread

log = logs.get("power")

_boxes: dict[Path, SecretBox] = {}
_boxes_lock = threading.Lock()

#: drivers that need a BMC address; wol's address is an optional broadcast address
NEEDS_ADDRESS = {"ipmi", "redfish"}
OPTION_KEYS = {
    "wol": {"port", "interface"},
    "ipmi": {"port", "cipher", "privilege", "retries"},
    "redfish": {"system", "auth", "verify_tls", "ca_file"},
    "qemu": None,  # the QEMU driver's own options (the test bed); not checked here
}


def box(config: Config) -> SecretBox:
    """The server's SecretBox for ``config.state_dir`` (made once per process and directory)."""
    with _boxes_lock:
        b = _boxes.get(config.state_dir)
        if b is None:
            b = _boxes[config.state_dir] = for_state_dir(config.state_dir)
        return b


def settings(config: Config, res: Resource) -> PowerSettings | None:
    """The resource's power settings with its password opened, bounded by ``[power] timeout``."""
    s = power.settings_of(res, box(config).open)
    if s is None:
        return None
    options = dict(s.options)
    if s.driver == "wol" and config.interface and "interface" not in options:
        options["interface"] = config.interface  # the provisioning network: its own subnet
    return replace(s, timeout=float(config.power.timeout), options=options)


def describe(res: Resource) -> dict[str, Any]:
    """What may be shown of a resource's power settings: never the password."""
    return {
        "driver": res.power_driver,
        "address": res.power_address,
        "user": res.power_user,
        "password_set": bool(res.power_secret),
        "options": dict(res.power_options or {}),
        "state": res.power_state,
        "checked_at": present.iso(res.power_checked_at),
        "error": res.power_error,
    }


# --- settings -----------------------------------------------------------------


def set_power(
    session,
    config: Config,
    res: Resource,
    driver: str,
    address: str = "",
    user: str = "",
    password: str | None = None,
    options: dict[str, Any] | None = None,
    actor: str = "daemon",
) -> Resource:
    """Validate and store power settings; ``password=None`` keeps the stored one."""
    power.load_builtin()
    driver = (driver or "").strip()
    if driver not in power.DRIVERS:
        known = ", ".join(sorted(power.DRIVERS))
        raise Invalid(f"power driver {driver!r} is unknown; use one of {known}", field="driver")
    address, user = (address or "").strip(), (user or "").strip()
    if driver in NEEDS_ADDRESS and not address:
        raise Invalid(f"the {driver} driver needs the BMC address (--address)", field="address")
    if len(user) > 128:
        raise Invalid("the BMC user name is longer than 128 characters", field="user")
    if password is not None and ("\n" in password or "\0" in password):
        raise Invalid("the password holds a line break or NUL; give it alone", field="password")
    options = dict(options or {})
    allowed = OPTION_KEYS.get(driver)
    unknown = sorted(set(options) - allowed) if allowed is not None else []
    if unknown:
        raise Invalid(
            f"unknown {driver} option(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}",
            field="options",
        )
    if driver == "wol" and not res.mac:
        raise Invalid("wake-on-LAN needs the resource's MAC address")
    secret = res.power_secret
    if password is not None:
        secret = box(config).seal(password) if password else None
    # the factory validates the address form (and the options it reads)
    try:
        power.driver_for(PowerSettings(driver=driver, address=address, user=user,
                                       options=options, mac=res.mac))  # fmt: skip
    except (PowerError, ValueError) as exc:
        raise Invalid(str(exc), field="address") from None
    res.power_driver, res.power_address, res.power_user = driver, address or None, user or None
    res.power_secret, res.power_options = secret, options or None
    res.power_state, res.power_error, res.power_checked_at = None, None, None
    where = f" at {address}" if address else ""
    events.record(session, actor, "resource.set_power", res.display_name,
                  f"driver {driver}{where}, user {user or '-'}")  # fmt: skip
    return res


def clear_power(session, res: Resource, actor: str = "daemon") -> Resource:
    res.power_driver = res.power_address = res.power_user = res.power_secret = None
    res.power_options = res.power_state = res.power_error = res.power_checked_at = None
    events.record(session, actor, "resource.clear_power", res.display_name, "")
    return res


# --- one action ---------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    resource: str
    action: str
    state: PowerState
    detail: str = ""


def _load(config: Config, db: Database, resource_id: int) -> tuple[str, PowerSettings]:
    with db.reader() as s:
        res = s.get(Resource, resource_id)
        if res is None:
            raise NotFound(f"resource {resource_id} not found")
        name = res.display_name
        st = settings(config, res)
    if st is None:
        raise Conflict(
            f"resource {name} has no power driver; set one with "
            f"`provisiond resource set-power {name} --driver ipmi|redfish|wol ...`"
        )
    return name, st


def _record(db: Database, resource_id: int, state: PowerState | None, error: str | None) -> None:
    with db.transaction() as s:
        res = s.get(Resource, resource_id)
        if res is None:
            return
        if state is not None:
            res.power_state = state.value
        res.power_error = logs.redact(error) if error else None
        res.power_checked_at = utcnow()


def act(config: Config, db: Database, resource_id: int, action: PowerAction | str,
        actor: str = "daemon") -> Outcome:  # fmt: skip
    """Do ``action`` on the resource through its driver; PowerError when the BMC fails."""
    try:
        action = PowerAction(action)
    except ValueError:
        raise Invalid(f"power action {action!r}: use on, off, cycle or status") from None
    name, st = _load(config, db, resource_id)
    drv = power.driver_for(st)
    try:
        if action == PowerAction.STATUS:
            state = drv.status()
        else:
            drv.act(action)
            state = _after(action)
    except PowerError as exc:
        _record(db, resource_id, None, str(exc))
        if action != PowerAction.STATUS:
            with db.transaction() as s:
                events.record(s, actor, f"resource.power_{action}", name, f"failed: {exc}")
        log.warning("power %s of %s failed: %s", action, name, exc)
        raise
    _record(db, resource_id, state, None)
    if action != PowerAction.STATUS:
        with db.transaction() as s:
            events.record(s, actor, f"resource.power_{action}", name, f"via {st.driver}")
        log.info("power %s of %s via %s", action, name, st.driver)
    return Outcome(name, action.value, state, f"via {st.driver}")


def _after(action: PowerAction) -> PowerState:
    return PowerState.OFF if action == PowerAction.OFF else PowerState.ON


def boot(config: Config, db: Database, resource_id: int, actor: str = "daemon") -> str | None:
    """Make a machine without agent boot (network first): on when off, cycle when on.

    None when the resource has no power driver (the caller falls back to asking
    the agent or the operator). Raises PowerError when the BMC fails.
    """
    with db.reader() as s:
        res = s.get(Resource, resource_id)
        if res is None or not res.power_driver:
            return None
    name, st = _load(config, db, resource_id)
    state = power.driver_for(st).status()
    action = PowerAction.CYCLE if state == PowerState.ON else PowerAction.ON
    act(config, db, resource_id, action, actor)
    how = "power-cycled" if action == PowerAction.CYCLE else "switched on"
    if st.driver == "wol":
        how = "sent a Wake-on-LAN packet to"
    return f"{how} {name} via {st.driver}"


# --- polling ------------------------------------------------------------------


@dataclass
class Sweep:
    count: int = 0
    states: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.states.items()))
        return (f"{self.count} resources in {self.seconds:.2f} s: {parts or 'none'}"
                f"{f', {self.errors} failed' if self.errors else ''}")  # fmt: skip


def _poll_one(st: PowerSettings) -> tuple[PowerState | None, str | None]:
    try:
        return power.driver_for(st).status(), None
    except PowerError as exc:
        return None, str(exc)
    except Exception as exc:  # a driver bug must not end the sweep
        return None, f"{st.driver}: unexpected error {type(exc).__name__}: {exc}"


def sweep(config: Config, db: Database, pool: ThreadPoolExecutor | None = None) -> Sweep:
    """Read the power state of every resource with a driver (this instance's or no one's)."""
    t0 = time.monotonic()
    with db.reader() as s:
        rows = s.scalars(
            select(Resource).where(
                Resource.power_driver.is_not(None),
                or_(Resource.owner.is_(None), Resource.owner == config.instance),
            )
        ).all()
        todo: list[tuple[int, PowerSettings | None, str | None]] = []
        for r in rows:
            try:
                todo.append((r.id, settings(config, r), None))
            except Exception as exc:  # a password sealed with another key
                todo.append((r.id, None, str(exc)))
    own = pool is None
    pool = pool or ThreadPoolExecutor(config.power.concurrency, thread_name_prefix="power")
    try:
        futures = [(rid, pool.submit(_poll_one, st) if st else None, err) for rid, st, err in todo]
        results = [(rid, *(f.result() if f else (None, err))) for rid, f, err in futures]
    finally:
        if own:
            pool.shutdown(wait=False)
    out = Sweep(count=len(results))
    now = utcnow()
    with db.transaction() as s:
        for rid, state, err in results:
            res = s.get(Resource, rid)
            if res is None:
                continue
            if state is not None:
                res.power_state = state.value
                out.states[state.value] = out.states.get(state.value, 0) + 1
            else:
                out.errors += 1
            res.power_error = logs.redact(err) if err else None
            res.power_checked_at = now
    out.seconds = time.monotonic() - t0
    return out


class PowerPoller:
    """The daemon service that sweeps every ``[power] interval`` seconds (0 = off)."""

    name = "power"

    def __init__(self, config: Config, db: Database) -> None:
        self._config, self._db = config, db
        self._pool = ThreadPoolExecutor(config.power.concurrency, thread_name_prefix="power")
        self._loop = LoopThread("power", self._step, log)
        self._next = 0.0
        self.last: Sweep | None = None

    def _step(self) -> None:
        self._loop.sleep(max(0.0, min(1.0, self._next - time.monotonic())))
        if self._loop.stopping or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self._config.power.interval
        self.last = sweep(self._config, self._db, self._pool)
        if self.last.count:
            log.info("power sweep: %s", self.last.summary())

    def start(self) -> None:
        if self._config.power.interval > 0:
            self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)


def boot_or_advise(config: Config, db: Database, resource_id: int, purpose: str,
                   actor: str = "daemon") -> str:  # fmt: skip
    """:func:`boot` for a deploy's job log: what was done, or what the operator must do."""
    try:
        done = boot(config, db, resource_id, actor)
    except PowerError as exc:
        return (
            f"no agent is running and the power driver failed ({exc}): "
            f"power-cycle the machine by hand to {purpose}"
        )
    if done is None:
        return f"no agent is running: power-cycle the machine to {purpose}"
    return f"no agent is running: {done} to {purpose}"


def agent_heard(config: Config, res: Resource) -> bool:
    """Whether the resource's agent sent a heartbeat within ``[agent] heartbeat_timeout``."""
    beat = res.last_heartbeat
    if beat is None or res.agent_token_hash is None:
        return False
    return (utcnow() - beat).total_seconds() <= config.agent.heartbeat_timeout
