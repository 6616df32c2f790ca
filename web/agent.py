"""The agent API: what an idle resource's agent calls (``/agent/v1/...``).

Every endpoint, GET included, requires ``Authorization: Bearer <per-boot
token>``; a wrong or missing token is 401 and changes nothing. The token is
only valid while its resource is in a state that runs the agent.

=====================================  ========================================
POST /agent/v1/register                 JSON {mac, ip, hostkey, inventory}; the
                                        address recorded is the request's source
POST /agent/v1/heartbeat                204
GET  /agent/v1/authorized_keys          the server's SSH public key
GET  /agent/v1/commands?wait=N          204, or text lines id= kind= arg=(base64)
POST /agent/v1/commands/<id>/result     X-Exit-Code header, raw output body
=====================================  ========================================
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from functools import wraps

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select

from provisiond import jobs, logs, resources
from provisiond.context import Context
from provisiond.errors import Invalid
from provisiond.model import Resource
from provisiond.resources import AGENT_STATES
from provisiond.security import hash_token

bp = Blueprint("agent", __name__, url_prefix="/agent/v1")
log = logs.get("agent")
MAX_WAIT = 30


def _ctx() -> Context:
    return current_app.extensions["provisiond"]


def _unauthorized() -> Response:
    return Response("missing or invalid agent token\n", status=401, mimetype="text/plain")


def agent_auth(view: Callable) -> Callable:
    """Resolve the bearer token to a resource id; 401 (and nothing else) otherwise."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or len(header) < 20:
            return _unauthorized()
        digest = hash_token(header[7:].strip())
        with _ctx().db.sessions() as s:
            row = s.execute(
                select(Resource.id, Resource.state).where(Resource.agent_token_hash == digest)
            ).first()
        if row is None or row.state not in AGENT_STATES:
            return _unauthorized()
        return view(row.id, *args, **kwargs)

    return wrapper


@bp.post("/register")
@agent_auth
def register(resource_id: int):
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise Invalid("register: body must be a JSON object", field="body")
    ctx = _ctx()
    with ctx.db.session() as s:
        res = s.get(Resource, resource_id)
        resources.register(s, res, body, request.remote_addr)
        out = {"resource": res.display_name, "state": res.state}
    ctx.inventory.request_refresh()
    log.info("%s registered (%s)", out["resource"], out["state"])
    return jsonify({**out, "heartbeat_interval": ctx.config.agent.heartbeat_interval})


@bp.post("/heartbeat")
@agent_auth
def heartbeat(resource_id: int):
    with _ctx().db.session() as s:
        resources.heartbeat(s, s.get(Resource, resource_id))
    return Response(status=204)


@bp.get("/authorized_keys")
@agent_auth
def authorized_keys(resource_id: int):
    pub = _ctx().config.ssh_key_path.with_suffix(".pub")
    return Response(pub.read_text(), mimetype="text/plain")


@bp.get("/commands")
@agent_auth
def commands(resource_id: int):
    ctx = _ctx()
    try:
        wait = min(max(float(request.args.get("wait", 0)), 0.0), MAX_WAIT)
    except ValueError:
        raise Invalid("wait must be a number of seconds", field="wait")
    deadline = time.monotonic() + wait
    while True:
        with ctx.db.session() as s:
            res = s.get(Resource, resource_id)
            res.last_heartbeat = resources.utcnow()
            job = jobs.next_command(s, res, owner=ctx.config.instance)
            if job is not None:
                lines = [f"id={job.id}", f"kind={job.kind.removeprefix('agent.')}"]
                arg = job.params.get("arg", "")
                if arg:
                    lines.append("arg=" + base64.b64encode(arg.encode()).decode())
                return Response("\n".join(lines) + "\n", mimetype="text/plain")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Response(status=204)
        with ctx.bell:
            ctx.bell.wait(min(0.5, remaining))


@bp.post("/commands/<int:job_id>/result")
@agent_auth
def command_result(resource_id: int, job_id: int):
    try:
        code = int(request.headers.get("X-Exit-Code", ""))
    except ValueError:
        raise Invalid("X-Exit-Code header must be an integer", field="X-Exit-Code")
    ctx = _ctx()
    with ctx.db.session() as s:
        jobs.complete_command(s, s.get(Resource, resource_id), job_id, code, request.get_data())
    ctx.ring()
    return Response(status=204)
