"""REST views of the work: appliances (and their start/stop), jobs and events.

Owns ``/api/v1/{appliances,jobs,events}``. Creating, starting, stopping and
removing an appliance call :mod:`provisiond.appliances` (a mode without a
deployer is refused there, with that message); cancelling a job is allowed
while it is still queued, through :func:`provisiond.jobs.transition`.
"""

from __future__ import annotations

from flask import jsonify, request
from sqlalchemy import select

from provisiond import appliances, installs, jobs, lookup, present, resources
from provisiond.errors import Conflict, Invalid
from provisiond.lifecycle import ApplianceState as AS
from provisiond.lifecycle import JobState as JS
from provisiond.model import Appliance, Event, Job
from web.api import bp
from web.api.auth import actor
from web.api.common import body, ctx, int_arg, paginate, typed

APPLIANCE_FIELDS = {"name", "resource", "mode", "image", "kernel", "params", "ha", "ha_pool",
                    "start"}  # fmt: skip


@bp.get("/appliances")
def appliance_list():
    query = select(Appliance).order_by(Appliance.id)
    for key in ("state", "mode"):
        if request.args.get(key):
            query = query.where(getattr(Appliance, key) == request.args[key])
    if request.args.get("q"):
        query = query.where(Appliance.name.like(f"%{request.args['q']}%"))
    with ctx().db.reader() as s:
        return jsonify(paginate(s, query, present.appliance))


def create_appliance(data: dict, who: str) -> dict:
    """Create (and with ``start`` true, start) an appliance in one unit of work."""
    params = typed(data, "params", dict, {}) or {}
    with ctx().db.transaction() as s:
        res = resources.find(s, str(data["resource"]))
        app = appliances.create(
            s,
            name=str(data.get("name") or f"app-{res.display_name}"),
            resource=res,
            mode=str(data["mode"]),
            image=typed(data, "image", str),
            kernel=typed(data, "kernel", str),
            params=installs.protect_params(params, ctx().config.state_dir),
            ha=bool(typed(data, "ha", bool, False)),
            ha_pool=typed(data, "ha_pool", str),
            actor=who,
        )
        if typed(data, "start", bool, False):
            appliances.start(s, app, who)
        out = present.appliance(app)
    ctx().inventory.refresh()
    ctx().ring()
    return out


@bp.post("/appliances")
def appliance_create():
    data = body(APPLIANCE_FIELDS, {"resource", "mode"})
    return jsonify(create_appliance(data, actor())), 201


@bp.get("/appliances/<ref>")
def appliance_show(ref: str):
    with ctx().db.reader() as s:
        app = lookup.find(s, Appliance, ref)
        out = present.appliance(app)
        out["jobs"] = [
            present.job(j)
            for j in s.scalars(
                select(Job).where(Job.appliance_id == app.id).order_by(Job.id.desc()).limit(20)
            )
        ]
    return jsonify(out)


@bp.patch("/appliances/<ref>")
def appliance_update(ref: str):
    data = body({"params", "ha"})
    with ctx().db.transaction() as s:
        app = lookup.find(s, Appliance, ref)
        if app.state not in (AS.STOPPED, AS.FAILED):
            raise Conflict(f"appliance '{app.name}' is {app.state}; stop it before editing it")
        if "params" in data:
            params = typed(data, "params", dict) or {}
            appliances.check_params(params)
            app.params = installs.protect_params(params, ctx().config.state_dir)
        if "ha" in data:
            app.ha = bool(typed(data, "ha", bool))
        from provisiond import events

        events.record(s, actor(), "appliance.updated", app.name, ", ".join(sorted(data)))
        return jsonify(present.appliance(app))


@bp.delete("/appliances/<ref>")
def appliance_delete(ref: str):
    with ctx().db.transaction() as s:
        appliances.remove(s, lookup.find(s, Appliance, ref), actor())
    ctx().inventory.refresh()
    return "", 204


def _appliance_action(ref: str, action) -> tuple:
    with ctx().db.transaction() as s:
        app = lookup.find(s, Appliance, ref)
        action(s, app, actor())
        out = present.appliance(app)
    ctx().inventory.refresh()
    ctx().ring()
    return jsonify(out), 202


@bp.post("/appliances/<ref>/start")
def appliance_start(ref: str):
    return _appliance_action(ref, appliances.start)


@bp.post("/appliances/<ref>/stop")
def appliance_stop(ref: str):
    return _appliance_action(ref, appliances.stop)


# ---------------------------------------------------------------- jobs


def job_query():
    query = select(Job).order_by(Job.id.desc())
    for key in ("state", "kind"):
        if request.args.get(key):
            query = query.where(getattr(Job, key) == request.args[key])
    for key in ("resource_id", "appliance_id", "image_id"):
        if request.args.get(key):
            query = query.where(getattr(Job, key) == int_arg(key, 0, 0, 2**62))
    return query


@bp.get("/jobs")
def job_list():
    with ctx().db.reader() as s:
        return jsonify(paginate(s, job_query(), present.job))


@bp.get("/jobs/<int:job_id>")
def job_show(job_id: int):
    with ctx().db.reader() as s:
        job = jobs.get(s, job_id)
        return jsonify({**present.job(job), "log": job.log})


@bp.post("/jobs/<int:job_id>/cancel")
def job_cancel(job_id: int):
    with ctx().db.transaction() as s:
        job = jobs.get(s, job_id)
        if job.state != JS.QUEUED:
            raise Invalid(
                f"job {job_id} is {job.state}; only a queued job can be cancelled", "state"
            )
        jobs.transition(job, JS.CANCELLED, f"cancelled by {actor()}")
        from provisiond import events

        events.record(s, actor(), "job.cancelled", f"job {job_id}", job.kind)
        return jsonify(present.job(job))


# ---------------------------------------------------------------- events


def event_query():
    query = select(Event).order_by(Event.id.desc())
    for key in ("actor", "action", "target"):
        if request.args.get(key):
            query = query.where(getattr(Event, key) == request.args[key])
    if request.args.get("q"):
        like = f"%{request.args['q']}%"
        query = query.where(
            Event.target.like(like) | Event.detail.like(like) | Event.action.like(like)
        )
    if request.args.get("since_id"):
        query = query.where(Event.id > int_arg("since_id", 0, 0, 2**62))
    return query


@bp.get("/events")
def event_list():
    with ctx().db.reader() as s:
        return jsonify(paginate(s, event_query(), present.event))
