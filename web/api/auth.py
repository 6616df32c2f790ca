"""Who is asking, may they, and did the form come from us: the one request guard.

Owns :func:`guard` (installed as ``before_request`` by :func:`web.create_app`)
and the CSRF token. Order of checks for every request:

1. Allow-listed endpoints (``ALLOW``: ``/healthz``, the log-in page, static
   files, and the ``boot`` and ``agent`` blueprints, which carry their own
   per-boot tokens) pass without a user.
2. The principal: ``Authorization: Bearer <API token>`` on ``/api/``, else
   the session cookie's secret, looked up as a server-side session row on
   every request (:func:`provisiond.users.principal_for_session`): log-out,
   a password or role change or a deleted user ends it at once. None: the API
   answers 401 JSON, the UI redirects to the log-in page.
3. CSRF: every unsafe method authenticated by the session cookie (the log-in
   form included) must echo the session's token in the ``csrf_token`` form
   field or the ``X-CSRF-Token`` header; bearer-token calls are not exposed
   to CSRF (no ambient credential) and skip it.
4. Role: reads need ``viewer``, unsafe methods ``operator`` (a viewer cannot
   change anything, log-out excepted), and views marked with
   :func:`requires` (user management) need that role.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from urllib.parse import quote

from flask import current_app, g, jsonify, redirect, render_template, request, session

from provisiond import users
from provisiond.users import Principal

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALLOW = frozenset({"static", "healthz", "ui.login"})
ALLOW_BLUEPRINTS = frozenset({"boot", "agent", "install", "hareport"})  # own token checks
VIEWER_MAY_POST = frozenset({"ui.logout"})


def requires(role: str) -> Callable:
    """Mark a view as needing at least ``role`` (checked by :func:`guard`)."""

    def mark(view: Callable) -> Callable:
        view.required_role = role
        return view

    return mark


def current() -> Principal:
    return g.principal


def actor() -> str:
    p: Principal = g.principal
    return f"{'api' if p.via == 'token' else 'web'}:{p.name}"


def csrf_token() -> str:
    tok = session.get("csrf")
    if not tok:
        tok = session["csrf"] = secrets.token_urlsafe(32)
    return tok


def is_api() -> bool:
    return request.path.startswith("/api/")


def _deny(status: int, message: str):
    if is_api():
        return jsonify({"error": message}), status
    if status == 401:
        nxt = request.full_path if request.method == "GET" else "/"
        return redirect("/login?next=" + quote(nxt.rstrip("?"), safe="/?=&"))
    return render_template("error.html", status=status, message=message), status


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else None


def _load_principal() -> Principal | None:
    db = current_app.extensions["provisiond"].db
    token = _bearer() if is_api() else None
    with db.reader() as s:
        if token:
            return users.authenticate_token(s, token)
        sid = session.get("sid")
        return users.principal_for_session(s, sid) if isinstance(sid, str) else None


def _csrf_ok() -> bool:
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    want = session.get("csrf", "")
    return bool(want) and hmac.compare_digest(str(sent), str(want))


def _needed_role(endpoint: str) -> str:
    view = current_app.view_functions.get(endpoint)
    marked = getattr(view, "required_role", None)
    reads = request.method in SAFE_METHODS or endpoint in VIEWER_MAY_POST
    base = "viewer" if reads else "operator"
    if marked and users.role_at_least(marked, base):
        return marked
    return base


def guard():
    endpoint = request.endpoint or ""
    if request.blueprint in ALLOW_BLUEPRINTS or endpoint in ("static", "healthz"):
        return None
    unsafe = request.method not in SAFE_METHODS
    if endpoint == "ui.login":
        if unsafe and not _csrf_ok():
            return _deny(400, "the form has expired (CSRF token missing or wrong); reload the page")
        return None
    principal = _load_principal()
    if principal is None:
        return _deny(401, "authentication required: log in or send 'Authorization: Bearer <token>'")
    g.principal = principal
    if unsafe and principal.via == "session" and not _csrf_ok():
        return _deny(400, "the form has expired (CSRF token missing or wrong); reload the page")
    needed = _needed_role(endpoint) if request.endpoint else "viewer"
    if not principal.can(needed):
        return _deny(403, f"user '{principal.name}' ({principal.role}) may not do this: "
                          f"it needs the role {needed}")  # fmt: skip
    return None
