"""The operator UI: server-rendered Jinja2 pages with a little plain JavaScript.

Owns the ``ui`` blueprint: log-in/log-out here, the pages in
:mod:`web.ui.pages`, the assign workflow in :mod:`web.ui.assign` and the web
shell in :mod:`web.ui.shell`. Log-in verifies the scrypt hash through
:mod:`provisiond.users`, rotates the session (new CSRF token) and slows
repeated failures down per user name and per client address
(:class:`provisiond.users.LoginThrottle`, answered 429 with the wait).
Every log-in, failure and log-out is an Event.
"""

from __future__ import annotations

from flask import Blueprint, current_app, redirect, render_template, request, session

from provisiond import events, users
from web.api.auth import csrf_token
from web.api.common import ctx

bp = Blueprint("ui", __name__)


@bp.record_once
def _setup(state) -> None:
    state.app.extensions.setdefault("login_throttle", users.LoginThrottle())


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", "/"), errors={})
    throttle: users.LoginThrottle = current_app.extensions["login_throttle"]
    name = request.form.get("name", "").strip()
    keys = ("user:" + name.lower(), "ip:" + (request.remote_addr or "?"))
    nxt = request.form.get("next", "/")
    wait = throttle.wait_for(*keys)
    if wait > 0:
        msg = f"Too many failed attempts. Wait {int(wait) + 1} seconds, then try again."
        return render_template("login.html", next=nxt, name=name, errors={"password": msg}), 429
    with ctx().db.session() as s:
        principal = users.authenticate_password(s, name, request.form.get("password", ""))
        if principal is None:
            events.record(s, f"web:{name[:40]}", "user.login_failed", name[:64], keys[1])
        else:
            events.record(s, f"web:{name}", "user.login", name, keys[1])
    if principal is None:
        throttle.failed(*keys)
        msg = "Wrong user name or password."
        return render_template("login.html", next=nxt, name=name, errors={"password": msg}), 401
    throttle.succeeded(keys[0])
    session.clear()
    session.permanent = True
    session["uid"] = principal.user_id
    csrf_token()
    return redirect(_safe_next(nxt))


@bp.post("/logout")
def logout():
    from web.api.auth import current

    with ctx().db.session() as s:
        events.record(s, f"web:{current().name}", "user.logout", current().name, "")
    session.clear()
    return redirect("/login")


from web.ui import assign, pages, shell, templates  # noqa: E402,F401  (register routes)
