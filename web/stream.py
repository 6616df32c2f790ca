"""Streaming endpoints of the agent API: deploy and capture data paths.

Views only; the work is in :mod:`provisiond.localdeploy` and
:mod:`provisiond.capture`. ``<cmd>`` is the id of the agent command
(``agent.deploy`` / ``agent.capture`` / ``agent.erase``) the agent is
running; a command that belongs to another resource is 404, one that is no
longer running (failed by the daemon, restart, timeout) is 410, which makes
the agent stop. Same bearer-token rule as web/agent.py. They are served by
waitress on the HTTP port (``provisiond.url=``), not by the asyncio agent
channel: chunk streams are throughput-bound (bench/stream). The blueprint is
named ``agent``, so the request guard's allow-list and the JSON error answers
of ``/agent/v1`` apply.

=====================================================  =========================
GET  /agent/v1/stream/<cmd>/manifest                    text: header + chunk lines
GET  /agent/v1/stream/<cmd>/chunks?start=P&step=N       framed chunks (chunks.py)
POST /agent/v1/stream/<cmd>/progress  body "DONE TOTAL" 204
PUT  /agent/v1/stream/<cmd>/chunk/<index>?sha256=&enc=  204; 422 on a checksum error
GET  /agent/v1/stream/<cmd>/report-in                   the deploy's report-in record
                                                        (4 KiB; 404 if the image has
                                                        no slot; reportslot.py)
=====================================================  =========================
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from flask import Blueprint, Response, current_app, request

from provisiond import agentchannel, capture, localdeploy
from provisiond.context import Context
from provisiond.errors import Invalid

# named "agent": the request guard's allow-list and JSON errors apply to it
bp = Blueprint("agent", __name__, url_prefix="/agent/v1")
MAX_CHUNK_BODY = 64 * 2**20


def _ctx() -> Context:
    return current_app.extensions["provisiond"]


def agent_auth(view: Callable) -> Callable:
    """Resolve the bearer token to a resource id; 401 (and nothing else) otherwise."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        caller = agentchannel.authenticate(_ctx().db, request.headers.get("Authorization", ""))
        if caller is None:
            return Response("missing or invalid agent token\n", status=401, mimetype="text/plain")
        return view(caller.resource_id, *args, **kwargs)

    return wrapper


def _int(name: str, default: int) -> int:
    try:
        return int(request.args.get(name, default))
    except ValueError:
        raise Invalid(f"{name} must be an integer", field=name)


@bp.get("/stream/<int:cmd_id>/manifest")
@agent_auth
def manifest(resource_id: int, cmd_id: int):
    _path, m = localdeploy.deploy_source(_ctx().db, resource_id, cmd_id)
    return Response(m.text(), mimetype="text/plain")


@bp.get("/stream/<int:cmd_id>/report-in")
@agent_auth
def report_in_record(resource_id: int, cmd_id: int):
    record = localdeploy.report_record(_ctx().db, resource_id, cmd_id)
    return Response(record, mimetype="application/octet-stream")


@bp.get("/stream/<int:cmd_id>/chunks")
@agent_auth
def chunk_stream(resource_id: int, cmd_id: int):
    path, m = localdeploy.deploy_source(_ctx().db, resource_id, cmd_id)
    start, step = _int("start", 0), _int("step", 1)
    if start < 0 or not 1 <= step <= 64:
        raise Invalid("start must be >= 0 and step 1..64", field="step")
    body = localdeploy.frames(path, m, start, step)
    return Response(body, mimetype="application/octet-stream", direct_passthrough=True)


@bp.post("/stream/<int:cmd_id>/progress")
@agent_auth
def progress(resource_id: int, cmd_id: int):
    try:
        done, total = (int(x) for x in request.get_data(as_text=True).split()[:2])
    except ValueError:
        raise Invalid("progress body must be 'DONE TOTAL' (bytes)", field="body")
    localdeploy.report_progress(_ctx().db, resource_id, cmd_id, done, total)
    return Response(status=204)


@bp.route("/stream/<int:cmd_id>/chunk/<int:index>", methods=["PUT", "POST"])
@agent_auth
def chunk_upload(resource_id: int, cmd_id: int, index: int):
    request.max_content_length = MAX_CHUNK_BODY
    digest = request.args.get("sha256", "")
    enc = request.args.get("enc", "r")
    capture.store_chunk(_ctx().db, resource_id, cmd_id, index, digest, enc, request.get_data())
    return Response(status=204)
