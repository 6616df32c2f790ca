"""The appliance OS's heartbeat (``/ha/v1``): how a running HA appliance says it lives.

Views only; the rule is :func:`provisiond.hapools.heartbeat`.

=========================  ==============================================
POST /ha/v1/heartbeat      ``Authorization: Bearer <reporter token>``
                           (``provisiond ha token APPLIANCE``); 204, or 401
=========================  ==============================================

A reporter in the appliance's OS posts every few seconds, e.g.
``while :; do curl -fsS -X POST -H "Authorization: Bearer $T" URL; sleep 5; done``.
Once it has reported, missing heartbeats for ``[ha] timeout`` seconds mark
the appliance dead (:mod:`provisiond.ha`).
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from provisiond import hapools

bp = Blueprint("hareport", __name__, url_prefix="/ha/v1")


@bp.post("/heartbeat")
def heartbeat():
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.startswith("Bearer ") else ""
    with current_app.extensions["provisiond"].db.transaction() as s:
        name = hapools.heartbeat(s, token) if token else None
    if name is None:
        return Response("missing or invalid HA reporter token\n", status=401, mimetype="text/plain")
    return Response(status=204)
