"""REST views of power control and bulk actions.

Owns ``/api/v1/resources/<ref>/power`` (GET the settings and last state, PUT
new settings — admin only, the password is write-only —, DELETE them, POST
``{"action": "on"|"off"|"cycle"|"status"}``) and ``POST /api/v1/resources/bulk``
(``{"resources": [...], "action": "on"|"off"|"cycle"|"release"|"assign", ...}``).
A BMC failure answers 502 (504 when unreachable, 409 when unsupported) with
``{"error": message, "kind": "unreachable"|"credentials"|"unsupported"|"error"}``.
The rules live in :mod:`provisiond.powerctl` and :mod:`provisiond.bulk`.
"""

from __future__ import annotations

from flask import jsonify

from provisiond import bulk, powerctl, resources
from provisiond.errors import Invalid
from provisiond.power import PowerError
from web.api import bp
from web.api.auth import actor, requires
from web.api.common import body, ctx, typed

_STATUS = {"unreachable": 504, "credentials": 502, "unsupported": 409}


def power_error(exc: PowerError):
    return jsonify({"error": str(exc), "kind": exc.kind}), _STATUS.get(exc.kind, 502)


@bp.get("/resources/<ref>/power")
def resource_power_show(ref: str):
    with ctx().db.reader() as s:
        res = resources.find(s, ref)
        return jsonify({"resource": res.display_name, **powerctl.describe(res)})


@bp.put("/resources/<ref>/power")
@requires("admin")
def resource_power_set(ref: str):
    """Store power settings; omit ``password`` to keep the stored one, "" to remove it."""
    data = body({"driver", "address", "user", "password", "options"}, {"driver"})
    with ctx().db.transaction() as s:
        res = resources.find(s, ref)
        powerctl.set_power(
            s,
            ctx().config,
            res,
            str(typed(data, "driver", str)),
            typed(data, "address", str, "") or "",
            typed(data, "user", str, "") or "",
            typed(data, "password", str),
            typed(data, "options", dict, {}) or {},
            actor(),
        )
        return jsonify({"resource": res.display_name, **powerctl.describe(res)})


@bp.delete("/resources/<ref>/power")
@requires("admin")
def resource_power_clear(ref: str):
    with ctx().db.transaction() as s:
        powerctl.clear_power(s, resources.find(s, ref), actor())
    return "", 204


@bp.post("/resources/<ref>/power")
def resource_power_act(ref: str):
    data = body({"action"}, {"action"})
    with ctx().db.reader() as s:
        res_id = resources.find(s, ref).id
    try:
        out = powerctl.act(ctx().config, ctx().db, res_id, str(data["action"]), actor())
    except PowerError as exc:
        return power_error(exc)
    return jsonify({"resource": out.resource, "action": out.action, "state": out.state.value})


@bp.post("/resources/bulk")
def resource_bulk():
    """One action on many resources; 200 with one result per resource (``ok`` each)."""
    data = body({"resources", "action", "erase", "mode", "image", "kernel", "fanout"}, {"action"})
    if "resources" not in data:
        raise Invalid("resources: give a non-empty list of resource names", field="resources")
    items = bulk.run(
        ctx().config,
        ctx().db,
        data["resources"],
        str(data["action"]),
        erase=typed(data, "erase", str),
        mode=typed(data, "mode", str),
        image=typed(data, "image", str),
        kernel=typed(data, "kernel", str),
        actor=actor(),
        fanout=typed(data, "fanout", dict),  # {transport, max_wait, rate}: bulk.FanoutSettings
    )
    ctx().inventory.refresh()
    ctx().ring()
    ok = sum(1 for i in items if i.ok)
    return jsonify({"action": data["action"], "ok": ok, "failed": len(items) - ok,
                    "results": [i.as_dict() for i in items]})  # fmt: skip
