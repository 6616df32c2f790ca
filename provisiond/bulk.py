"""Bulk actions: one action on many resources at once (power, release, assign).

Owns the rules the API and UI share for "select several resources, then ...":
the action must be known and its arguments present, every named resource must
exist (an unknown one refuses the whole request: nothing is changed), at most
:data:`MAX` resources per request. Each resource is then handled in its own unit of
work, so one machine's failure (a BMC that does not answer, a resource that
already has an appliance) does not undo the others; the result lists every
resource with what happened to it. Power actions run ``[power] concurrency`` at
a time. Assigning one image to two or more machines in ``local`` mode marks
their start jobs as one fan-out group: they receive the image together over
multicast (:mod:`provisiond.fanout`).
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from provisiond import appliances, powerctl, release, resources
from provisiond.config import Config
from provisiond.db import Database
from provisiond.errors import Invalid, NotFound, ProvisiondError
from provisiond.lifecycle import IllegalTransition
from provisiond.model import Resource
from provisiond.power import PowerError

ACTIONS = ("on", "off", "cycle", "release", "assign")
MAX = 1000


@dataclass(frozen=True)
class Item:
    resource: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def resolve(db: Database, refs: list[str]) -> list[tuple[int, str]]:
    """(id, name) of every ref, in order, without duplicates; Invalid naming the unknown ones."""
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise Invalid("resources: give a non-empty list of resource names", field="resources")
    if len(refs) > MAX:
        raise Invalid(f"resources: at most {MAX} per request", field="resources")
    found, missing = [], []
    with db.reader() as s:
        for ref in dict.fromkeys(refs):
            try:
                r = resources.find(s, ref)
            except ProvisiondError:
                missing.append(ref)
                continue
            if r.id not in {i for i, _ in found}:
                found.append((r.id, r.display_name))
    if missing:
        raise Invalid(f"unknown resources: {', '.join(missing)}; nothing was changed",
                      field="resources")  # fmt: skip
    return found


def run(config: Config, db: Database, refs: list[str], action: str, *, erase: str | None = None,
        mode: str | None = None, image: str | None = None, kernel: str | None = None,
        actor: str = "cli") -> list[Item]:  # fmt: skip
    if action not in ACTIONS:
        raise Invalid(f"action {action!r}: use one of {', '.join(ACTIONS)}", field="action")
    if action == "assign" and not mode:
        raise Invalid("assign needs a mode (sanboot, local or template)", field="mode")
    if erase not in (None, "", "quick", "full"):
        raise Invalid("erase: quick or full", field="erase")
    targets = resolve(db, refs)
    if action in ("on", "off", "cycle"):
        workers = max(1, min(config.power.concurrency, len(targets)))
        with ThreadPoolExecutor(workers, thread_name_prefix="bulk") as pool:
            return list(pool.map(lambda t: _power(config, db, t, action, actor), targets))
    one = _release if action == "release" else _assign
    # one image to several local-mode machines: their deploys share one multicast (fanout.py)
    fanout = None
    if action == "assign" and mode == "local" and image and len(targets) >= 2:
        fanout = {"group": f"bulk-{uuid.uuid4().hex[:10]}", "size": len(targets)}
    return [one(db, t, actor, erase=erase or None, mode=mode, image=image, kernel=kernel,
                fanout=fanout) for t in targets]  # fmt: skip


def _power(config, db, target, action, actor) -> Item:
    rid, name = target
    try:
        out = powerctl.act(config, db, rid, action, actor)
    except (PowerError, ProvisiondError) as exc:
        return Item(name, False, str(exc))
    return Item(name, True, f"power {action} done {out.detail}")


def _get(session, rid: int) -> Resource:
    res = session.get(Resource, rid)
    if res is None:
        raise NotFound(f"resource {rid} was removed meanwhile")
    return res


def _release(db, target, actor, *, erase, **_) -> Item:
    rid, name = target
    try:
        with db.transaction() as s:
            job = release.release(s, _get(s, rid), erase, actor)
            job_id = job.id if job else None
    except (ProvisiondError, IllegalTransition) as exc:
        return Item(name, False, str(exc))
    return Item(name, True, f"erasing ({erase}), job {job_id}" if job_id else "idle")


def _assign(db, target, actor, *, mode, image, kernel, fanout=None, **_) -> Item:
    rid, name = target
    try:
        with db.transaction() as s:
            res = _get(s, rid)
            app = appliances.create(s, name=f"app-{name}", resource=res, mode=mode,
                                    image=image, kernel=kernel, actor=actor)  # fmt: skip
            job = appliances.start(s, app, actor)
            if fanout:
                job.params = {**(job.params or {}), "fanout": fanout}
            app_name, job_id = app.name, job.id
    except (ProvisiondError, IllegalTransition) as exc:
        return Item(name, False, str(exc))
    return Item(name, True, f"appliance {app_name} starting (job {job_id})")
