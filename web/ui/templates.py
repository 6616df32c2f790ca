"""The UI's install-template page: the shipped sets and a render preview.

Owns ``/templates``: pick a set and a resource (and optional KEY=VALUE
parameters); the page shows exactly what :func:`web.api.templates.render_preview`
returns — the files the machine would get — or the render error in plain words.
"""

from __future__ import annotations

from flask import render_template, request
from sqlalchemy import select

from provisiond.errors import ProvisiondError
from provisiond.model import Resource
from web.api.auth import requires
from web.api.common import ctx
from web.api.templates import render_preview, renderer
from web.ui import bp
from web.ui.assign import _parse_params


@bp.get("/templates")
@requires("operator")
def templates():
    sets = renderer().sets()
    form = {k: request.args.get(k, "").strip() for k in ("template", "resource", "params")}
    with ctx().db.sessions() as s:
        machines = [(r.display_name, r.ip or r.mac) for r in
                    s.scalars(select(Resource).order_by(Resource.id).limit(500))]  # fmt: skip
    preview, error = None, ""
    if form["template"] and form["resource"]:
        try:
            preview = render_preview(form["template"], form["resource"],
                                     _parse_params(form["params"]))  # fmt: skip
        except ProvisiondError as exc:
            error = exc.message
    return render_template("templates.html", sets=sets, form=form, machines=machines,
                           preview=preview, error=error)  # fmt: skip
