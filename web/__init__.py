"""The Flask application: boot and agent endpoints now, operator UI and REST API later.

Owns :func:`create_app`, which builds the WSGI app around a
:class:`provisiond.context.Context`. Views only: all logic lives in the
``provisiond`` service modules. JSON errors carry a message and the field at
fault; service-layer errors map to their HTTP status.
"""

from __future__ import annotations

from flask import Flask, jsonify

from provisiond.context import Context
from provisiond.errors import ProvisiondError


def create_app(ctx: Context) -> Flask:
    app = Flask(__name__)
    app.extensions["provisiond"] = ctx
    app.config["MAX_CONTENT_LENGTH"] = 4 * 1024 * 1024

    from web import agent, boot

    app.register_blueprint(boot.bp)
    app.register_blueprint(agent.bp)

    @app.errorhandler(ProvisiondError)
    def _service_error(exc: ProvisiondError):
        body = {"error": exc.message}
        if exc.field:
            body["field"] = exc.field
        return jsonify(body), exc.status

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    return app
