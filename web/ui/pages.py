"""The UI's pages: dashboard, resources, appliances, images, kernels, storages, jobs,
events, users and tokens.

Owns rendering and form handling only. Reads use the same queries and JSON
shapes as the API (:mod:`provisiond.present`, :func:`web.api.inventory.resource_query`);
actions call the same view helpers or service functions, and a refused action
is shown in plain words on the page it came from (a flash message, or the
message next to the form field at fault).
"""

from __future__ import annotations

from flask import flash, redirect, render_template, request
from sqlalchemy import func, select

from provisiond import jobs, lookup, present, resources, storages, users
from provisiond.errors import ProvisiondError
from provisiond.importpolicy import redact_url
from provisiond.lifecycle import IllegalTransition
from provisiond.lifecycle import JobState as JS
from provisiond.lifecycle import ResourceState as RS
from provisiond.model import ApiToken, Appliance, Event, Image, Job, Kernel, Resource, User
from web.api import inventory, work
from web.api.auth import actor, current, requires
from web.api.common import ctx, int_arg
from web.ui import bp

PAGE = 50
ACTIVE_JOBS = (JS.QUEUED, JS.RUNNING)


def _page(session, query) -> tuple[list, dict]:
    page = int_arg("page", 1, 1, 10**7)
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = list(session.scalars(query.limit(PAGE).offset((page - 1) * PAGE)))
    pages = max(1, -(-total // PAGE))
    return rows, {"page": page, "pages": pages, "total": total}


def _action(back: str, fn, *args, ok: str = ""):
    """Run a UI action; its refusal is flashed in plain words on the page it came from."""
    try:
        fn(*args)
    except (ProvisiondError, IllegalTransition) as exc:
        flash(getattr(exc, "message", str(exc)), "error")
    else:
        if ok:
            flash(ok, "ok")
    return redirect(back)


@bp.get("/")
def dashboard():
    with ctx().db.reader() as s:
        counts = dict(
            s.execute(select(Resource.state, func.count()).group_by(Resource.state)).all()
        )
        app_counts = dict(
            s.execute(select(Appliance.state, func.count()).group_by(Appliance.state)).all()
        )
        running = s.scalars(
            select(Job).where(Job.state.in_(ACTIVE_JOBS)).order_by(Job.id.desc()).limit(20)
        ).all()
        recent = s.scalars(select(Event).order_by(Event.id.desc()).limit(15)).all()
        return render_template(
            "dashboard.html",
            counts=counts,
            app_counts=app_counts,
            jobs=[present.job(j) for j in running],
            events=[present.event(e) for e in recent],
        )


# ---------------------------------------------------------------- resources


@bp.get("/resources")
def resource_list():
    state, q = request.args.get("state", ""), request.args.get("q", "")
    with ctx().db.reader() as s:
        rows, pager = _page(s, inventory.resource_query(state or None, q or None))
        states = [r for (r,) in s.execute(select(Resource.state).distinct())]
        return render_template(
            "resources.html",
            rows=[present.resource(r) for r in rows],
            pg=pager,
            state=state,
            q=q,
            states=sorted(states),
        )


@bp.get("/resources/<int:rid>")
def resource_show(rid: int):
    with ctx().db.reader() as s:
        res = resources.find(s, str(rid))
        app = s.scalars(select(Appliance).where(Appliance.resource_id == res.id)).first()
        history = s.scalars(
            select(Event)
            .where(Event.target == res.display_name, Event.action.like("resource.%"))
            .order_by(Event.id.desc())
            .limit(50)
        ).all()
        res_jobs = s.scalars(
            select(Job).where(Job.resource_id == res.id).order_by(Job.id.desc()).limit(10)
        ).all()
        return render_template(
            "resource.html",
            r=present.resource(res, detail=True),
            appliance=present.appliance(app) if app else None,
            history=[present.event(e) for e in history],
            jobs=[present.job(j) for j in res_jobs],
            can_shell=res.state == RS.IDLE and bool(res.ip and res.hostkey),
        )


@bp.post("/resources/<int:rid>/accept-key")
@requires("admin")
def resource_accept_key(rid: int):
    """Trust the new host key of a key-changed resource (admins only, like the API)."""
    back = f"/resources/{rid}"
    return _action(back, inventory.resource_accept_key, str(rid), ok="host key accepted")


@bp.post("/resources/<int:rid>/<action>")
def resource_action(rid: int, action: str):
    back = f"/resources/{rid}"
    views = {
        "reboot": inventory.resource_reboot,
        "release": inventory.resource_release,
        "erase": inventory.resource_erase,
    }
    if action == "delete":
        return _action("/resources", inventory.resource_delete, str(rid), ok="resource removed")
    if action not in views:
        flash(f"unknown action {action!r}", "error")
        return redirect(back)
    return _action(back, views[action], str(rid), ok=f"{action}: accepted")


# ---------------------------------------------------------------- appliances


@bp.get("/appliances")
def appliance_list():
    with ctx().db.reader() as s:
        rows, pager = _page(s, select(Appliance).order_by(Appliance.id))
        return render_template(
            "appliances.html", rows=[present.appliance(a) for a in rows], pg=pager
        )


@bp.get("/appliances/<ref>")
def appliance_show(ref: str):
    with ctx().db.reader() as s:
        app = lookup.find(s, Appliance, ref)
        app_jobs = s.scalars(
            select(Job).where(Job.appliance_id == app.id).order_by(Job.id.desc()).limit(20)
        ).all()
        return render_template(
            "appliance.html",
            a=present.appliance(app),
            resource_id=app.resource_id,
            jobs=[present.job(j) for j in app_jobs],
        )


@bp.post("/appliances/<ref>/<action>")
def appliance_action(ref: str, action: str):
    views = {"start": work.appliance_start, "stop": work.appliance_stop}
    if action == "delete":
        return _action("/appliances", work.appliance_delete, ref, ok="appliance removed")
    if action not in views:
        flash(f"unknown action {action!r}", "error")
        return redirect(f"/appliances/{ref}")
    return _action(f"/appliances/{ref}", views[action], ref, ok=f"{action}: accepted")


# ---------------------------------------------------------------- images, kernels, storages


@bp.get("/images")
def image_list():
    with ctx().db.reader() as s:
        rows, pager = _page(s, select(Image).order_by(Image.id))
        out = [{**present.image(i), "used_by": inventory.image_used_by(s, i)} for i in rows]
        storages = [st.name for st in ctx().config.storages]
        return render_template(
            "images.html", rows=out, pg=pager, storages=storages, errors={}, form={}
        )


@bp.post("/images")
def image_import():
    from web.api import imports

    form = {k: request.form.get(k, "").strip() for k in ("name", "source", "storage")}
    data = {k: v for k, v in form.items() if v}
    try:
        resp, _status = imports.start_import(data, actor())
    except ProvisiondError as exc:
        with ctx().db.reader() as s:
            rows, pager = _page(s, select(Image).order_by(Image.id))
            out = [{**present.image(i), "used_by": inventory.image_used_by(s, i)} for i in rows]
        errors = {exc.field or "source": exc.message}
        form["source"] = redact_url(form["source"])
        storages = [st.name for st in ctx().config.storages]
        return render_template(
            "images.html", rows=out, pg=pager, storages=storages, errors=errors, form=form
        ), exc.status
    job = resp.get_json()
    flash(f"import of {form['name']} started", "ok")
    return redirect(f"/jobs/{job['id']}" if job.get("id") else "/jobs")


@bp.post("/images/<ref>/<action>")
def image_action(ref: str, action: str):
    if action == "delete":
        return _action("/images", inventory.image_delete, ref, ok="image removed")
    flash(f"unknown action {action!r}", "error")
    return redirect("/images")


@bp.get("/kernels")
def kernel_list():
    with ctx().db.reader() as s:
        rows, pager = _page(s, select(Kernel).order_by(Kernel.id))
        return render_template("kernels.html", rows=[present.kernel(k) for k in rows], pg=pager)


@bp.get("/storages")
def storage_list():
    """The declared storages (the configuration is their one source: provisiond.storages)."""
    with ctx().db.reader() as s:
        rows = [present.declared_storage(d) for d in storages.declared(ctx().config, s)]
    return render_template("storages.html", rows=rows, pg={"page": 1, "pages": 1,
                                                           "total": len(rows)})  # fmt: skip


# ---------------------------------------------------------------- jobs, events


@bp.get("/jobs")
def job_list():
    with ctx().db.reader() as s:
        rows, pager = _page(s, work.job_query())
        return render_template("jobs.html", rows=[present.job(j) for j in rows], pg=pager)


@bp.get("/jobs/<int:job_id>")
def job_show(job_id: int):
    with ctx().db.reader() as s:
        job = jobs.get(s, job_id)
        return render_template("job.html", j={**present.job(job), "log": job.log})


@bp.post("/jobs/<int:job_id>/cancel")
def job_cancel(job_id: int):
    return _action(f"/jobs/{job_id}", work.job_cancel, job_id, ok="job cancelled")


@bp.get("/events")
def event_list():
    with ctx().db.reader() as s:
        rows, pager = _page(s, work.event_query())
        return render_template(
            "events.html",
            rows=[present.event(e) for e in rows],
            pg=pager,
            q=request.args.get("q", ""),
        )


# ---------------------------------------------------------------- users, tokens


def _users_page(errors: dict, form: dict, status: int = 200):
    with ctx().db.reader() as s:
        rows = [users.user_dict(u) for u in s.scalars(select(User).order_by(User.id))]
    return render_template(
        "users.html", rows=rows, roles=users.ROLES, errors=errors, form=form
    ), status


@bp.get("/users")
@requires("admin")
def user_list():
    return _users_page({}, {})


@bp.post("/users")
@requires("admin")
def user_create():
    form = {k: request.form.get(k, "") for k in ("name", "password", "role")}
    try:
        with ctx().db.transaction() as s:
            users.create(s, form["name"].strip(), form["password"], form["role"], actor())
    except ProvisiondError as exc:
        return _users_page({exc.field or "name": exc.message}, form, exc.status)
    flash(f"user {form['name']} created", "ok")
    return redirect("/users")


@bp.post("/users/<int:uid>/<action>")
@requires("admin")
def user_action(uid: int, action: str):
    def run() -> None:
        with ctx().db.transaction() as s:
            user = lookup.find(s, User, str(uid))
            if action == "delete":
                users.delete(s, user, actor())
            elif action == "role":
                users.update(s, user, actor(), role=request.form.get("role", ""))
            elif action == "password":
                users.update(s, user, actor(), password=request.form.get("password", ""))
            else:
                raise ProvisiondError(f"unknown action {action!r}")

    return _action("/users", run, ok=f"user {action}: done")


@bp.get("/tokens")
def token_list():
    p = current()
    with ctx().db.reader() as s:
        query = select(ApiToken).order_by(ApiToken.id)
        if not p.can("admin"):
            query = query.where(ApiToken.user_id == p.user_id)
        rows = [users.token_dict(t) for t in s.scalars(query)]
    return render_template("tokens.html", rows=rows, secret=None, errors={})


@bp.post("/tokens")
def token_create():
    p = current()
    try:
        with ctx().db.transaction() as s:
            tok, secret = users.create_token(
                s, s.get(User, p.user_id), request.form.get("name", ""), actor()
            )
            name = tok.name
    except ProvisiondError as exc:
        return render_template("tokens.html", rows=[], secret=None, errors={"name": exc.message})
    return render_template("tokens.html", rows=[], secret=secret, name=name, errors={})


@bp.post("/tokens/<int:token_id>/delete")
def token_delete(token_id: int):
    def run() -> None:
        with ctx().db.transaction() as s:
            users.delete_token(s, users.find_token(s, token_id, current()), actor())

    return _action("/tokens", run, ok="token revoked")
