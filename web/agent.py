"""The agent API: what an idle resource's agent calls (``/agent/v1/...``).

Served by the asyncio agent channel (:mod:`provisiond.agentd`) on
``agent_port``; the agent learns its address from ``provisiond.agent=`` on
the kernel command line. The chunk streams of deploys and captures stay on
the HTTP port (:mod:`web.stream`). Views only: every rule is in
:mod:`provisiond.agentchannel`, :mod:`provisiond.resources` and
:mod:`provisiond.jobs`.

Every endpoint, GET included, requires ``Authorization: Bearer <per-boot
token>``; a wrong or missing token is 401 and changes nothing. The token is
only valid while its resource is in a state that runs the agent.

=====================================  ========================================
POST /agent/v1/register                 JSON {mac, ip, hostkey, inventory}
POST /agent/v1/heartbeat                204
GET  /agent/v1/authorized_keys          the server's SSH public key
GET  /agent/v1/commands?wait=N          204, or text lines id= kind= arg=(base64)
POST /agent/v1/commands/<id>/result     X-Exit-Code header, raw output body
=====================================  ========================================
"""

from __future__ import annotations

import json

from aiohttp import web

from provisiond import agentchannel, logs
from provisiond.agentd import AgentChannel
from provisiond.errors import Invalid, ProvisiondError
from provisiond.lifecycle import IllegalTransition

log = logs.get("agent")
MAX_BODY = 4 * 1024 * 1024
CHANNEL = web.AppKey("channel", AgentChannel)
CALLER = web.RequestKey("caller", agentchannel.Caller)


def _error(message: str, status: int, field: str | None = None) -> web.Response:
    body = {"error": message, **({"field": field} if field else {})}
    return web.json_response(body, status=status)


@web.middleware
async def _guard(request: web.Request, handler):
    """401 without a valid token (before anything else); service errors as JSON."""
    channel = request.app[CHANNEL]
    header = request.headers.get("Authorization", "")
    caller = await channel.authenticate(header)
    if caller is None:
        return web.Response(text="missing or invalid agent token\n", status=401)
    request[CALLER] = caller
    # any authenticated call is a sign of life: a registration queued behind a boot
    # storm's writes must not let its machine go offline (bench/agents, 2,000 agents)
    channel.ctx.liveness.touch(caller.resource_id)
    try:
        return await handler(request)
    except ProvisiondError as exc:
        return _error(exc.message, exc.status, exc.field)
    except IllegalTransition as exc:
        return _error(str(exc), 409, "state")


async def register(request: web.Request) -> web.Response:
    channel = request.app[CHANNEL]
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise Invalid("register: body must be a JSON object", field="body")
    out = await channel.run(
        agentchannel.register, channel.ctx, request[CALLER].resource_id, body, request.remote
    )
    log.info("%s registered (%s)", out["resource"], out["state"])
    return web.json_response(out)


async def heartbeat(request: web.Request) -> web.Response:
    channel, caller = request.app[CHANNEL], request[CALLER]
    if agentchannel.heartbeat_needs_db(caller):
        await channel.run(agentchannel.heartbeat, channel.ctx, caller)
    else:
        agentchannel.heartbeat(channel.ctx, caller)
    return web.Response(status=204)


async def authorized_keys(request: web.Request) -> web.Response:
    pub = request.app[CHANNEL].ctx.config.ssh_key_path.with_suffix(".pub")
    return web.Response(text=pub.read_text(), content_type="text/plain")


async def commands(request: web.Request) -> web.Response:
    try:
        wait = float(request.query.get("wait", 0))
    except ValueError:
        raise Invalid("wait must be a number of seconds", field="wait")
    text = await request.app[CHANNEL].wait_command(request[CALLER].resource_id, wait)
    if text is None:
        return web.Response(status=204)
    return web.Response(text=text, content_type="text/plain")


async def command_result(request: web.Request) -> web.Response:
    channel = request.app[CHANNEL]
    try:
        code = int(request.headers.get("X-Exit-Code", ""))
    except ValueError:
        raise Invalid("X-Exit-Code header must be an integer", field="X-Exit-Code")
    try:
        job_id = int(request.match_info["job_id"])
    except ValueError:
        raise Invalid("the command id must be an integer", field="id")
    output = await request.read()
    await channel.run(
        agentchannel.complete_command,
        channel.ctx, request[CALLER].resource_id, job_id, code, output,
    )  # fmt: skip
    return web.Response(status=204)


def create_agent_app(channel: AgentChannel) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY)
    app[CHANNEL] = channel
    app.router.add_post("/agent/v1/register", register)
    app.router.add_post("/agent/v1/heartbeat", heartbeat)
    app.router.add_get("/agent/v1/authorized_keys", authorized_keys)
    app.router.add_get("/agent/v1/commands", commands)
    app.router.add_post("/agent/v1/commands/{job_id}/result", command_result)
    return app
