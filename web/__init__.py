"""The Flask application: boot, chunk-stream endpoints, the REST API and the operator UI.

(The agent's control calls are served by the asyncio agent channel on
``agent_port``: :mod:`provisiond.agentd`, views in :mod:`web.agent`.)

Owns :func:`create_app`, which builds the WSGI app around a
:class:`provisiond.context.Context`. Views only: all logic lives in the
``provisiond`` service modules. Every request passes :func:`web.api.auth.guard`
(authentication, CSRF, roles; ``/healthz``, the log-in page, static files and
the boot and agent blueprints are the allow-list). JSON errors carry a message
and the field at fault; service-layer errors map to their HTTP status. The
session cookie is signed with a key kept in ``<state_dir>/web-secret`` (0600,
created on first start), HttpOnly and SameSite=Lax, and Secure when
``[http] tls`` is on. Then the UI and API answer only over HTTPS
(:func:`_https_only`: a plain-HTTP page is redirected there, anything else is
refused), while the boot and agent blueprints and ``/healthz`` stay on
plain HTTP for iPXE. Every answer but the boot path's carries CSP,
X-Frame-Options and X-Content-Type-Options; HTTPS answers also HSTS.
"""

from __future__ import annotations

import datetime as dt
import os
from urllib.parse import urlsplit

from flask import Flask, jsonify, redirect, render_template, request

from provisiond.context import Context
from provisiond.errors import ProvisiondError
from provisiond.lifecycle import IllegalTransition
from provisiond.security import write_private


def _secret_key(ctx: Context) -> bytes:
    path = ctx.config.state_dir / "web-secret"
    if not path.exists():
        write_private(path, os.urandom(32).hex().encode())
    return path.read_bytes().strip()


def _error_response(message: str, status: int, field: str | None = None):
    wants_json = (
        request.path.startswith(("/api/", "/shell/")) or request.endpoint == "ui.shell_open"
    )
    if wants_json or request.blueprint in ("boot", "agent", "install"):
        body = {"error": message}
        if field:
            body["field"] = field
        return jsonify(body), status
    return render_template("error.html", status=status, message=message), status


PLAIN_BLUEPRINTS = frozenset({"boot", "agent"})  # iPXE and the initrd agent: plain HTTP
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HSTS = "max-age=31536000"


def _https_only(https_port: int):
    """With TLS on: the UI's pages move to HTTPS, the API and forms are refused on HTTP."""
    if request.is_secure or request.blueprint in PLAIN_BLUEPRINTS:
        return None
    if request.endpoint == "healthz":
        return None
    host = urlsplit("//" + request.host).hostname or ""
    host = f"[{host}]" if ":" in host else host
    target = f"https://{host}:{https_port}{request.full_path.rstrip('?')}"
    if request.method in ("GET", "HEAD") and not request.path.startswith("/api/"):
        return redirect(target, 308)
    return _error_response(f"the UI and API are served over HTTPS only: use {target}", 403)


def _security_headers(response):
    if request.blueprint in PLAIN_BLUEPRINTS:
        return response
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


def create_app(ctx: Context) -> Flask:
    app = Flask(__name__)
    app.extensions["provisiond"] = ctx
    app.config.update(
        MAX_CONTENT_LENGTH=4 * 1024 * 1024,
        SECRET_KEY=_secret_key(ctx),
        SESSION_COOKIE_NAME="provisiond_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=ctx.config.http.tls,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=12),
    )

    from web import boot, hareport, install, stream
    from web.api import bp as api_bp
    from web.api.auth import csrf_token, guard
    from web.ui import bp as ui_bp

    app.register_blueprint(boot.bp)
    app.register_blueprint(stream.bp)
    app.register_blueprint(install.bp)
    app.register_blueprint(hareport.bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(ui_bp)
    if ctx.config.http.tls:
        app.before_request(lambda: _https_only(ctx.config.http.https_port))
    app.before_request(guard)
    app.after_request(_security_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token

    @app.errorhandler(ProvisiondError)
    def _service_error(exc: ProvisiondError):
        return _error_response(exc.message, exc.status, exc.field)

    @app.errorhandler(IllegalTransition)
    def _illegal(exc: IllegalTransition):
        return _error_response(str(exc), 409, "state")

    @app.errorhandler(404)
    def _not_found(_exc):
        return _error_response(f"no such page: {request.path}", 404)

    @app.errorhandler(405)
    def _bad_method(_exc):
        return _error_response(f"{request.method} is not allowed on {request.path}", 405)

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    return app
