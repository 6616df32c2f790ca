"""REST views of N-to-1 HA: status, spares of pools, reporter tokens.

Owns ``/api/v1/ha``, ``/api/v1/resources/<ref>/ha-pool`` and
``/api/v1/appliances/<ref>/ha-token``; the work is :mod:`provisiond.hapools`.
"""

from __future__ import annotations

from flask import jsonify

from provisiond import hapools, lookup, present, resources
from provisiond.errors import Invalid
from provisiond.model import Appliance
from web.api import bp
from web.api.auth import actor
from web.api.common import body, ctx


@bp.get("/ha")
def ha_status():
    with ctx().db.reader() as s:
        return jsonify(hapools.status(s))


@bp.put("/resources/<ref>/ha-pool")
def resource_ha_pool(ref: str):
    data = body({"pool"})
    if "pool" not in data:
        raise Invalid("pool is required (a pool name, or null: no pool)", field="pool")
    pool = data["pool"]
    if pool is not None and not isinstance(pool, str):
        raise Invalid("pool must be a string (or null: no pool)", field="ha_pool")
    with ctx().db.transaction() as s:
        res = resources.find(s, ref)
        hapools.set_pool(s, res, pool, actor())
        out = present.resource(res, detail=True)
    return jsonify(out)


@bp.post("/appliances/<ref>/ha-token")
def appliance_ha_token(ref: str):
    with ctx().db.transaction() as s:
        app = lookup.find(s, Appliance, ref)
        if not app.ha:
            raise Invalid(f"appliance '{app.name}' has no HA; create it with --ha", field="ha")
        token = hapools.new_reporter_token(s, app, actor())
        name = app.name
    return jsonify(
        {"appliance": name, "token": token, "url": f"{ctx().config.http_base}/ha/v1/heartbeat"}
    ), 201
