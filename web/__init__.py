"""The Flask application: boot and agent endpoints, the REST API and the operator UI.

Owns :func:`create_app`, which builds the WSGI app around a
:class:`provisiond.context.Context`. Views only: all logic lives in the
``provisiond`` service modules. Every request passes :func:`web.api.auth.guard`
(authentication, CSRF, roles; ``/healthz``, the log-in page, static files and
the boot and agent blueprints are the allow-list). JSON errors carry a message
and the field at fault; service-layer errors map to their HTTP status. The
session cookie is signed with a key kept in ``<state_dir>/web-secret`` (0600,
created on first start), HttpOnly and SameSite=Lax.
"""

from __future__ import annotations

import datetime as dt
import os

from flask import Flask, jsonify, render_template, request

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


def create_app(ctx: Context) -> Flask:
    app = Flask(__name__)
    app.extensions["provisiond"] = ctx
    app.config.update(
        MAX_CONTENT_LENGTH=4 * 1024 * 1024,
        SECRET_KEY=_secret_key(ctx),
        SESSION_COOKIE_NAME="provisiond_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=12),
    )

    from web import agent, boot, install, stream  # noqa: F401 (stream adds routes to agent.bp)
    from web.api import bp as api_bp
    from web.api.auth import csrf_token, guard
    from web.ui import bp as ui_bp

    app.register_blueprint(boot.bp)
    app.register_blueprint(agent.bp)
    app.register_blueprint(install.bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(ui_bp)
    app.before_request(guard)
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
