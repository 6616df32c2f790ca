"""Appliances: resource + kernel + image + mode + parameters (+ HA flag).

Owns creating, starting, stopping and removing appliances and their state
changes. ``start`` and ``stop`` only queue a durable job (``appliance.start``
/ ``appliance.stop``); the daemon's job runner executes it with the deployer
of the appliance's mode (``provisiond/sanboot.py``, ...). A mode without a
deployer in this build is refused with a message that says so rather than
pretending.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisiond import events, lifecycle, lookup, resources
from provisiond.errors import Conflict, Invalid
from provisiond.lifecycle import ApplianceState as AS
from provisiond.lifecycle import JobState as JS
from provisiond.lifecycle import ResourceState as RS
from provisiond.model import Appliance, Image, Job, Kernel, Resource, Volume
from provisiond.modes import ApplianceMode as M

MODES = tuple(m.value for m in M)
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


#: modes whose deployer this build has (the daemon's job runner executes them)
DEPLOYABLE_MODES = frozenset(M)
#: resource states from which a machine may be given to an appliance
ASSIGNABLE = frozenset({RS.NEW, RS.IDLE, RS.OFFLINE, RS.FAILED})


#: parameters the boot policy renders into an iPXE script (template installs)
SCRIPT_PARAMS = ("kernel", "initrds", "cmdline")


def check_params(params: dict[str, Any]) -> None:
    """Input-time guard: what the policy renders into a script is script-safe."""
    from provisiond.kernels import check_script_fields

    script = {f"params.{k}": v for k, v in params.items() if k in SCRIPT_PARAMS}
    check_script_fields(script, "appliance")


def create(
    session: Session,
    *,
    name: str,
    resource: Resource,
    mode: str,
    image: str | None = None,
    kernel: str | None = None,
    params: dict[str, Any] | None = None,
    ha: bool = False,
    ha_pool: str | None = None,
    actor: str = "cli",
) -> Appliance:
    if not _NAME.match(name):
        raise Invalid(
            f"appliance name {name!r}: use lower-case letters, digits and '-' (a DNS label)",
            field="name",
        )
    if mode not in MODES:
        raise Invalid(f"mode {mode!r}: must be one of {', '.join(MODES)}", field="mode")
    if session.scalars(select(Appliance.id).where(Appliance.name == name)).first():
        raise Conflict(f"appliance '{name}' already exists; pick another name", field="name")
    other = session.scalars(select(Appliance).where(Appliance.resource_id == resource.id)).first()
    if other is not None:
        raise Conflict(
            f"resource {resource.display_name} already belongs to appliance '{other.name}'; "
            f"remove it first (`provisiond appliance rm {other.name}`)",
            field="resource",
        )
    check_params(params or {})
    img = lookup.find(session, Image, image) if image else None
    if mode in (M.SANBOOT, M.LOCAL) and img is None:
        raise Invalid(f"mode {mode} needs --image", field="image")
    krn = lookup.find(session, Kernel, kernel) if kernel else None
    pool = check_pool(ha_pool) if ha_pool else None
    if ha and pool is None:
        raise Invalid("--ha needs --ha-pool: the HA pool whose idle resources are its spares",
                      field="ha_pool")  # fmt: skip
    app = Appliance(
        name=name,
        resource_id=resource.id,
        image_id=img.id if img else None,
        kernel_id=krn.id if krn else None,
        mode=mode,
        params=dict(params or {}),
        ha=ha,
        ha_pool=pool,
        ha_state="watching" if ha else None,
        state=AS.STOPPED,
    )
    session.add(app)
    session.flush()
    events.record(session, actor, "appliance.created", name, f"{mode} on {resource.display_name}")
    return app


def check_pool(pool: str) -> str:
    """An HA pool name is a DNS label, like appliance names."""
    if not _NAME.match(pool):
        raise Invalid(
            f"HA pool {pool!r}: use lower-case letters, digits and '-' (a DNS label)",
            field="ha_pool",
        )
    return pool


def move(session: Session, app: Appliance, spare: Resource, reason: str, actor="ha") -> Resource:
    """Give ``app`` to ``spare`` (an HA failover); returns the machine it leaves.

    The appliance goes to ``failed`` (its machine died) and then belongs to the
    spare; its volume, image and parameters stay, so the next ``start``
    deploys the same clone there. The machine it leaves stays ``failed`` with
    ``reason``: it is fenced and must not get the appliance back by itself.
    """
    if spare.id == app.resource_id:
        raise Conflict(f"appliance '{app.name}' already runs on {spare.display_name}")
    if spare.state not in ASSIGNABLE:
        raise Conflict(f"spare {spare.display_name} is {spare.state}, not idle")
    other = session.scalars(select(Appliance).where(Appliance.resource_id == spare.id)).first()
    if other is not None:
        raise Conflict(f"spare {spare.display_name} already belongs to appliance '{other.name}'")
    old = app.resource
    fail(session, app, reason)
    if old.state not in (RS.FAILED, RS.OFFLINE):
        resources.set_state(session, old, RS.FAILED, reason, actor=actor)
    else:
        old.state_reason = reason
    app.resource_id = spare.id
    session.flush()
    session.refresh(app)
    events.record(session, actor, "appliance.moved", app.name,
                  f"{old.display_name} -> {spare.display_name}: {reason}")  # fmt: skip
    return old


def set_state(session: Session, app: Appliance, target: AS, reason: str = "", actor="daemon"):
    lifecycle.check(app.state, target)
    before = app.state
    app.state, app.state_reason = str(target), reason
    events.record(
        session, actor, "appliance.state", app.name,
        f"{before} -> {target}" + (f": {reason}" if reason else ""),
    )  # fmt: skip


def start(session: Session, app: Appliance, actor: str = "cli") -> Job:
    """Queue the deploy: appliance -> starting, resource -> deploying, job queued."""
    if app.mode not in DEPLOYABLE_MODES:
        raise Invalid(
            f"appliance '{app.name}': mode '{app.mode}' cannot be deployed by this build yet "
            f"(deployable modes: {', '.join(sorted(DEPLOYABLE_MODES))})",
            field="mode",
        )
    res = app.resource
    if res.state not in ASSIGNABLE:
        raise Conflict(
            f"resource {res.display_name} is {res.state}; it must be idle (or new, offline, "
            "failed) to be deployed"
        )
    set_state(session, app, AS.STARTING, actor=actor)
    resources.set_state(session, res, RS.DEPLOYING, f"appliance {app.name}", actor=actor)
    return _job(session, "appliance.start", app)


def stop(session: Session, app: Appliance, actor: str = "cli") -> Job:
    if app.state not in (AS.ACTIVE, AS.FAILED, AS.STARTING):
        raise Conflict(f"appliance '{app.name}' is {app.state}; nothing to stop")
    set_state(session, app, AS.STOPPING, actor=actor)
    return _job(session, "appliance.stop", app)


def _job(session: Session, kind: str, app: Appliance) -> Job:
    job = Job(kind=kind, state=JS.QUEUED, appliance_id=app.id, resource_id=app.resource_id)
    session.add(job)
    session.flush()
    return job


def booted(session: Session, resource_id: int, evidence: str = "machine is booting") -> bool:
    """The machine is seen running its appliance: starting -> active (both).

    ``evidence`` says what was seen: for sanboot the initiator's iSCSI login
    (never the mere fetch of a boot script, which anyone could do); for a
    local deploy the booted OS's report-in or DHCP request
    (:func:`provisiond.bootchain.judge_disk`); for a template install its
    report-in.
    """
    app = session.scalars(select(Appliance).where(Appliance.resource_id == resource_id)).first()
    if app is None or app.state != AS.STARTING:
        return False
    set_state(session, app, AS.ACTIVE, evidence)
    if app.resource.state == RS.DEPLOYING:
        resources.set_state(session, app.resource, RS.ACTIVE, f"appliance {app.name}")
    return True


def fail(session: Session, app: Appliance, reason: str) -> None:
    """A deploy or stop failed: appliance and (if deploying) resource -> failed."""
    if app.state != AS.FAILED:
        set_state(session, app, AS.FAILED, reason)
    else:
        app.state_reason = reason
    res = app.resource
    if res.state in (RS.DEPLOYING, RS.ACTIVE, RS.RELEASING):
        resources.set_state(session, res, RS.FAILED, reason)


def stopped(session: Session, app: Appliance, reason: str) -> None:
    """stopping -> stopped; its machine is released (active) or failed (mid-deploy)."""
    set_state(session, app, AS.STOPPED, reason)
    res = app.resource
    if res.state in (RS.ACTIVE, RS.DEPLOYING):
        target = RS.RELEASING if res.state == RS.ACTIVE else RS.FAILED
        resources.set_state(session, res, target, f"appliance {app.name} stopped")


def fail_job(db, job_id: int, reason: str) -> None:
    """A deployer's ``fail`` hook: the job's appliance (and machine) -> failed."""
    with db.transaction() as s:
        app = lookup.appliance_of(s, job_id)
        if app is not None:
            fail(s, app, reason)


def remove(
    session: Session,
    app: Appliance,
    actor: str = "cli",
    delete_volume: Callable[[Volume], None] | None = None,
) -> None:
    """Remove a stopped appliance; its clone too unless ``delete_volume`` is None."""
    if app.state not in (AS.STOPPED, AS.FAILED):
        raise Conflict(
            f"appliance '{app.name}' is {app.state}; stop it first "
            f"(`provisiond appliance stop {app.name}`)"
        )
    vol = app.volume
    detail = app.mode
    if vol is not None and delete_volume is not None:
        delete_volume(vol)
        app.volume_id = None
        session.delete(vol)
        detail += f", deleted volume {vol.name}"
    elif vol is not None:
        detail += f", kept volume {vol.name}"
    for job in session.scalars(select(Job).where(Job.appliance_id == app.id)):
        job.appliance_id = None
    events.record(session, actor, "appliance.removed", app.name, detail)
    session.delete(app)
