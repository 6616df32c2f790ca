"""The operator UI: server-rendered Jinja2 pages with a little plain JavaScript.

Owns the ``ui`` blueprint: log-in/log-out here, the pages in
:mod:`web.ui.pages`, the assign workflow in :mod:`web.ui.assign` and the web
shell in :mod:`web.ui.shell`. Log-in verifies the scrypt hash through
:mod:`provisiond.users`, opens a server-side session (new CSRF token; log-out
deletes it) and slows
repeated failures down per client address first, then per user name
(:class:`provisiond.users.LoginThrottle`: counted atomically when admitted,
answered 429 with the wait). ``next=`` is followed only to a same-site path
(:func:`safe_next`).
Every log-in, failure and log-out is an Event.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request, session

from provisiond import events, users
from web.api.auth import csrf_token
from web.api.common import ctx

bp = Blueprint("ui", __name__)


@bp.record_once
def _setup(state) -> None:
    state.app.extensions.setdefault("login_throttle", users.LoginThrottle())


_NEXT = re.compile(r"/(?![/\\])[\x21-\x7e]*")  # printable ASCII, not "//" or "/\\"


def safe_next(target: str | None) -> str:
    """``target`` if it is a same-site path, else ``/``.

    Browsers drop tabs and newlines from URLs and read a backslash as ``/``, so
    ``/<TAB>/evil.example`` would become ``//evil.example``: any byte that is not
    printable ASCII, a backslash anywhere, or a second leading slash refuses it.
    """
    if not target or not _NEXT.fullmatch(target) or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", "/"), errors={})
    throttle: users.LoginThrottle = current_app.extensions["login_throttle"]
    name = request.form.get("name", "").strip()
    address = request.remote_addr or "?"
    nxt = request.form.get("next", "/")
    wait = throttle.admit(address, name)
    if wait > 0:
        msg = f"Too many failed attempts. Wait {int(wait) + 1} seconds, then try again."
        return render_template("login.html", next=nxt, name=name, errors={"password": msg}), 429
    with ctx().db.transaction() as s:
        principal = users.authenticate_password(s, name, request.form.get("password", ""))
        if principal is None:
            events.record(s, f"web:{name[:40]}", "user.login_failed", name[:64], address)
        else:
            events.record(s, f"web:{name}", "user.login", name, address)
    if principal is None:
        msg = "Wrong user name or password."
        return render_template("login.html", next=nxt, name=name, errors={"password": msg}), 401
    throttle.succeeded(address, name)
    with ctx().db.transaction() as s:
        sid = users.open_session(
            s, principal.user_id, current_app.config["PERMANENT_SESSION_LIFETIME"]
        )
    session.clear()
    session.permanent = True
    session["sid"] = sid
    csrf_token()
    return redirect(safe_next(nxt))


@bp.post("/logout")
def logout():
    from web.api.auth import current

    with ctx().db.transaction() as s:
        events.record(s, f"web:{current().name}", "user.logout", current().name, "")
        if isinstance(session.get("sid"), str):
            users.close_session(s, session["sid"])
    session.clear()
    return redirect("/login")


from web.ui import (  # noqa: E402,F401  (register routes)
    assign,
    pages,
    power,
    shell,
    templates,
)
