"""The UI's power forms: a resource's power settings and actions, and bulk actions.

Owns form handling only; the rules are :mod:`provisiond.powerctl` and
:mod:`provisiond.bulk`, as for the API. The password field is write-only: the
page shows whether one is stored, never the password, and an empty field keeps
the stored one ("remove the password" is its own checkbox).
"""

from __future__ import annotations

import json

from flask import flash, redirect, request
from sqlalchemy import select

from provisiond import bulk, powerctl, resources
from provisiond.errors import ProvisiondError
from provisiond.lifecycle import IllegalTransition
from provisiond.model import Image
from provisiond.power import PowerError
from web.api.auth import actor, requires
from web.api.common import ctx
from web.ui import bp


@bp.app_template_global()
def image_names() -> list[str]:
    """Image names for the bulk assign form."""
    with ctx().db.reader() as s:
        return list(s.scalars(select(Image.name).order_by(Image.name)))


def _options(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ProvisiondError(f"option {line.strip()!r}: write one key=value a line", "options")
        try:
            out[key.strip()] = json.loads(value.strip())
        except ValueError:
            out[key.strip()] = value.strip()
    return out


@bp.post("/resources/<int:rid>/power/settings")
@requires("admin")
def resource_power_settings(rid: int):
    back = f"/resources/{rid}"
    f = request.form
    password = f.get("password") or None
    if f.get("clear_password"):
        password = ""
    try:
        with ctx().db.transaction() as s:
            res = resources.find(s, str(rid))
            powerctl.set_power(s, ctx().config, res, f.get("driver", ""), f.get("address", ""),
                               f.get("user", ""), password, _options(f.get("options", "")),
                               actor())  # fmt: skip
    except ProvisiondError as exc:
        flash(f"power settings not saved: {exc.message}", "error")
    else:
        flash("power settings saved", "ok")
    return redirect(back)


@bp.post("/resources/<int:rid>/power/clear")
@requires("admin")
def resource_power_clear(rid: int):
    with ctx().db.transaction() as s:
        powerctl.clear_power(s, resources.find(s, str(rid)), actor())
    flash("power settings removed", "ok")
    return redirect(f"/resources/{rid}")


@bp.post("/resources/<int:rid>/power/<action>")
def resource_power_action(rid: int, action: str):
    back = f"/resources/{rid}"
    try:
        out = powerctl.act(ctx().config, ctx().db, rid, action, actor())
    except PowerError as exc:
        flash(f"power {action} failed ({exc.kind}): {exc}", "error")
    except ProvisiondError as exc:
        flash(exc.message, "error")
    else:
        flash(f"power {action}: {out.state.value} ({out.detail})", "ok")
    return redirect(back)


@bp.post("/resources/bulk")
def resource_bulk():
    f = request.form
    back = "/resources"
    try:
        fan = {k: f.get(f"fanout_{k}", "").strip() for k in ("transport", "max_wait", "rate")}
        items = bulk.run(ctx().config, ctx().db, f.getlist("resource"), f.get("action", ""),
                         erase=f.get("erase") or None, mode=f.get("mode") or None,
                         image=f.get("image") or None, actor=actor(),
                         fanout={k: v for k, v in fan.items() if v} or None)  # fmt: skip
    except (ProvisiondError, IllegalTransition) as exc:
        flash(getattr(exc, "message", str(exc)), "error")
        return redirect(back)
    ctx().inventory.refresh()
    ctx().ring()
    ok = [i for i in items if i.ok]
    flash(f"{f.get('action')}: {len(ok)} of {len(items)} done", "ok" if ok else "error")
    for item in items:
        if not item.ok:
            flash(f"{item.resource}: {item.detail}", "error")
    return redirect(back)
