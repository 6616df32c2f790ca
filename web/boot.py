"""Boot endpoints: per-MAC iPXE scripts and boot assets (kernels, initrds, iPXE).

``GET /boot/<mac>.ipxe`` asks the boot policy and renders the answer; for an
agent boot it discovers the resource (state ``new``) and mints a fresh
per-boot token whose hash is stored. ``GET /assets/<path>`` streams files
from the boot assets directory with Range support, confined to that
directory. Both are unauthenticated by design: they carry no secrets except
the per-boot token, which is only ever rendered into that MAC's own script.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, current_app, request, send_file

from provisiond import appliances, logs, resources
from provisiond.boot import BootAction, Firmware, Machine, normalize_mac
from provisiond.context import Context
from provisiond.security import hash_token, new_token

bp = Blueprint("boot", __name__)
log = logs.get("http")


def _ctx() -> Context:
    return current_app.extensions["provisiond"]


@bp.get("/boot/<mac>.ipxe")
def script(mac: str) -> Response:
    ctx = _ctx()
    try:
        mac = normalize_mac(mac)
    except ValueError:
        return Response(f"not a MAC address: {mac!r}\n", status=400, mimetype="text/plain")
    machine = Machine(mac=mac, firmware=Firmware.IPXE, ip=request.remote_addr)
    spec = ctx.policy.boot_spec(machine)
    extra = ""
    if spec is not None and spec.action in (BootAction.AGENT, BootAction.DEPLOY):
        token = new_token()
        with ctx.db.session() as s:
            res = resources.ensure(s, mac)
            res.agent_token_hash = hash_token(token)
        ctx.inventory.request_refresh()
        extra = (
            f"provisiond.url={ctx.config.http_base} provisiond.agent={ctx.config.agent_base} "
            f"provisiond.token={token} "
            f"BOOTIF=01-{mac.replace(':', '-')} "
            f"provisiond.interval={ctx.config.agent.heartbeat_interval}"
        )
    if spec is not None and spec.action == BootAction.SANBOOT and spec.resource_id:
        with ctx.db.session() as s:
            became_active = appliances.booted(s, spec.resource_id)
        if became_active:
            ctx.inventory.refresh()
    text = ctx.renderer.render(spec, mac, extra)
    log.info("script for %s: %s", mac, spec.label if spec else "ignored")
    return Response(text, mimetype="text/plain")


@bp.get("/assets/<path:relpath>")
def asset(relpath: str) -> Response:
    root = Path(_ctx().config.boot_assets_dir).resolve()
    target = (root / relpath).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        abort(404)
    return send_file(target, conditional=True, mimetype="application/octet-stream")
