"""Boot endpoints: per-MAC iPXE scripts and boot assets (kernels, initrds, iPXE).

``GET /boot/<mac>.ipxe`` asks the boot policy and renders the answer.
Scripts that carry a per-boot secret — the agent token (agent and deploy
boots) and a SAN boot's CHAP secret — go only to the machine that is
booting: the address provisiond's DHCP gave that MAC in this boot, or the
address of the proxyDHCP request it answered (:mod:`provisiond.boots`).
The token is minted once per boot; any other request gets ``403`` with the
reason, and changes nothing (no token replaced, no resource created).
Fetching a SAN script does not make its appliance active: the sanboot job
watches for the initiator's iSCSI login. Each SAN script served is counted
(``ctx.san_fetches``, :mod:`provisiond.bootchain`): a machine that keeps
fetching it is in a boot loop and its appliance fails. Local-boot scripts are
counted the same way (``ctx.local_fetches``) and arm the watch for the booted
OS's DHCP request (``ctx.os_dhcp``; :mod:`provisiond.localdeploy`). Test fault injection
(``PROVISIOND_TEST_FAULT``) is applied to SAN scripts here. ``GET /assets/<path>`` streams
files from the boot assets directory with Range support, confined to that
directory. Both are unauthenticated by design.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, current_app, request, send_file

from provisiond import bootchain, logs, resources
from provisiond.context import Context
from provisiond.security import hash_token, new_token
from pxe.boot import BootAction, BootSpec, Firmware, Machine, normalize_mac

bp = Blueprint("boot", __name__)
log = logs.get("http")
TOKEN_ACTIONS = (BootAction.AGENT, BootAction.DEPLOY)
# scripts that carry one appliance's secrets: a SAN boot's CHAP secret, an
# installer's one-time answer-file URL (root password hash, SSH keys)
SECRET_ACTIONS = {BootAction.SANBOOT: "SAN boot script", BootAction.KERNEL: "installer script"}


def _ctx() -> Context:
    return current_app.extensions["provisiond"]


def _text(text: str, status: int = 200) -> Response:
    return Response(text, status=status, mimetype="text/plain")


@bp.get("/boot/<mac>.ipxe")
def script(mac: str) -> Response:
    ctx = _ctx()
    try:
        mac = normalize_mac(mac)
    except ValueError:
        return _text(f"not a MAC address: {mac!r}\n", 400)
    source = request.remote_addr
    ctx.inventory.ensure_boot_current()  # a kernel or appliance committed just before counts
    spec = ctx.policy.boot_spec(Machine(mac=mac, firmware=Firmware.IPXE, ip=source))
    extra = ""
    if spec is not None and spec.action in TOKEN_ACTIONS:
        if not spec.kernel:  # "no agent kernel yet": no token to give, discovery only
            if ctx.boots.boot_of(mac, source) is not None:
                _discover(ctx, mac)
        elif ctx.boots.claim_token(mac, source) is None:
            return _refuse(ctx, mac, source, spec, "no agent token")
        else:
            extra = _mint(ctx, mac)
    elif (
        spec is not None
        and spec.action in SECRET_ACTIONS
        and spec.resource_id is not None
        and ctx.boots.boot_of(mac, source) is None
    ):
        return _refuse(ctx, mac, source, spec, f"no {SECRET_ACTIONS[spec.action]}")
    if spec is not None and spec.action == BootAction.SANBOOT and spec.resource_id is not None:
        n = ctx.san_fetches.fetched(spec.resource_id)
        log.info("SAN script for %s: fetch %d of this boot", mac, n)
        faults = bootchain.active_faults()
        if faults:
            log.warning("TEST FAULT injected into the SAN script of %s: %s", mac, sorted(faults))
            spec = bootchain.inject(spec, faults)
    if spec is not None and spec.action == BootAction.LOCAL_DISK and spec.resource_id is not None:
        n = ctx.local_fetches.fetched(spec.resource_id)  # a local deploy watches these
        ctx.os_dhcp.arm(mac)
        log.info("local-boot script for %s: fetch %d", mac, n)
    try:
        text = ctx.renderer.render(spec, mac, extra)
    except ValueError as exc:  # UnsafeScriptValue: a stored value older than the input checks
        log.error("boot script for %s not rendered: %s", mac, exc)
        return _text(f"provisiond: refusing to render the boot script for {mac}: {exc}\n", 500)
    log.info("script for %s to %s: %s", mac, source, spec.label if spec else "ignored")
    return _text(text)


def _discover(ctx: Context, mac: str) -> None:
    with ctx.db.transaction() as s:
        resources.ensure(s, mac)
    ctx.inventory.request_refresh()


def _mint(ctx: Context, mac: str) -> str:
    """This boot's agent token (the resource is created on first sight)."""
    token = new_token()  # group-committed with the other boots of a storm
    ctx.mints.mint(mac, hash_token(token), ctx.config.agent.hostkey_pinning)
    ctx.inventory.request_refresh()
    return (
        f"provisiond.url={ctx.config.http_base} provisiond.agent={ctx.config.agent_base} "
        f"provisiond.token={token} "
        f"BOOTIF=01-{mac.replace(':', '-')} "
        f"provisiond.interval={ctx.config.agent.heartbeat_interval}"
    )


def _refuse(ctx: Context, mac: str, source: str | None, spec: BootSpec, what: str) -> Response:
    why = ctx.boots.why_not(mac, source)  # logged, not an event: anyone can ask
    log.warning("boot script for %s (%s) refused to %s: %s", mac, spec.label, source, why)
    return _text(
        f"provisiond: {what} for {mac} to {source}: {why}. Per-boot secrets go only to the "
        "address provisiond's DHCP gave this MAC in this boot, once; reboot the machine "
        "(PXE) to start a new boot.\n",
        403,
    )


@bp.get("/assets/<path:relpath>")
def asset(relpath: str) -> Response:
    root = Path(_ctx().config.boot_assets_dir).resolve()
    target = (root / relpath).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        abort(404)
    return send_file(target, conditional=True, mimetype="application/octet-stream")
