"""Appliances: resource + kernel + image + mode + parameters (+ HA flag).

Owns creating, starting, stopping and removing appliances. Start and stop
are handed to the :class:`Deployer` registered for the appliance's mode
(``sanboot``, ``local``, ``template``); the deployers arrive with their
storage and streaming layers and are registered by the composition root.
Until a mode has a deployer, ``start`` refuses with a message that says so
rather than pretending.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisiond import events, lifecycle
from provisiond.errors import Conflict, Invalid, NotFound
from provisiond.lifecycle import ApplianceState as AS
from provisiond.model import Appliance, Image, Kernel, Resource

MODES = ("sanboot", "local", "template")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class Deployer(Protocol):
    mode: str

    def start(self, session: Session, appliance: Appliance, actor: str) -> None: ...

    def stop(self, session: Session, appliance: Appliance, actor: str) -> None: ...


DEPLOYERS: dict[str, Deployer] = {}


def find(session: Session, ref: str) -> Appliance:
    cond = Appliance.name == ref
    if ref.isdigit():
        cond = cond | (Appliance.id == int(ref))
    app = session.scalars(select(Appliance).where(cond)).first()
    if app is None:
        raise NotFound(f"appliance '{ref}' not found; see `provisiond appliance list`")
    return app


def _by_name(session: Session, model, ref: str, what: str):
    cond = model.name == ref
    if ref.isdigit():
        cond = cond | (model.id == int(ref))
    obj = session.scalars(select(model).where(cond)).first()
    if obj is None:
        raise NotFound(f"{what} '{ref}' not found; see `provisiond {what} list`", field=what)
    return obj


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
    img = _by_name(session, Image, image, "image") if image else None
    if mode in ("sanboot", "local") and img is None:
        raise Invalid(f"mode {mode} needs --image", field="image")
    krn = _by_name(session, Kernel, kernel, "kernel") if kernel else None
    app = Appliance(
        name=name,
        resource_id=resource.id,
        image_id=img.id if img else None,
        kernel_id=krn.id if krn else None,
        mode=mode,
        params=dict(params or {}),
        ha=ha,
        state=AS.STOPPED,
    )
    session.add(app)
    session.flush()
    events.record(session, actor, "appliance.created", name, f"{mode} on {resource.display_name}")
    return app


def set_state(session: Session, app: Appliance, target: AS, reason: str = "", actor="daemon"):
    lifecycle.check(app.state, target)
    before = app.state
    app.state, app.state_reason = str(target), reason
    events.record(
        session, actor, "appliance.state", app.name,
        f"{before} -> {target}" + (f": {reason}" if reason else ""),
    )  # fmt: skip


def _deployer(app: Appliance) -> Deployer:
    dep = DEPLOYERS.get(app.mode)
    if dep is None:
        raise Invalid(
            f"appliance '{app.name}': mode '{app.mode}' cannot be deployed by this build yet "
            "(no deployer registered for it)",
            field="mode",
        )
    return dep


def start(session: Session, app: Appliance, actor: str = "cli") -> None:
    dep = _deployer(app)
    set_state(session, app, AS.STARTING, actor=actor)
    dep.start(session, app, actor)


def stop(session: Session, app: Appliance, actor: str = "cli") -> None:
    dep = _deployer(app)
    set_state(session, app, AS.STOPPING, actor=actor)
    dep.stop(session, app, actor)


def remove(session: Session, app: Appliance, actor: str = "cli") -> None:
    if app.state not in (AS.STOPPED, AS.FAILED):
        raise Conflict(
            f"appliance '{app.name}' is {app.state}; stop it first "
            f"(`provisiond appliance stop {app.name}`)"
        )
    events.record(session, actor, "appliance.removed", app.name, app.mode)
    session.delete(app)


def as_dict(app: Appliance) -> dict[str, Any]:
    return {
        "id": app.id,
        "name": app.name,
        "resource": app.resource.display_name if app.resource else None,
        "image": app.image.name if app.image else None,
        "kernel": app.kernel.name if app.kernel else None,
        "mode": app.mode,
        "state": app.state,
        "state_reason": app.state_reason,
        "ha": app.ha,
        "params": {k: v for k, v in (app.params or {}).items() if "secret" not in k},
    }
