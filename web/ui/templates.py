"""The UI's install-template page: the sets, a render preview, and storing your own.

Owns ``/templates``: pick a set and a resource (and optional KEY=VALUE
parameters); the page shows exactly what :func:`web.api.templates.render_preview`
returns — the files the machine would get — or the render error in plain words.
``POST /templates`` stores a one-file set (or replaces a stored one) through
:mod:`provisiond.templatestore`, the same checks as CLI and API: a template
the sandbox refuses comes back on the form with the file, line and message,
and nothing is stored. ``POST /templates/<name>/delete`` removes a stored set.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, request
from sqlalchemy import select

from provisiond import templatestore
from provisiond.errors import Invalid, ProvisiondError
from provisiond.model import Resource
from provisiond.templating import KINDS
from web.api.auth import actor, requires
from web.api.common import ctx
from web.api.templates import render_preview, renderer
from web.ui import bp
from web.ui.assign import _parse_params
from web.ui.pages import _action

STORE_FIELDS = ("name", "kind", "description", "answer", "cmdline", "path", "text", "replace")


@bp.get("/templates")
@requires("operator")
def templates():
    return _page({"kind": "preseed"}, {})


@bp.post("/templates")
@requires("operator")
def template_store():
    store = {k: request.form.get(k, "") for k in STORE_FIELDS}
    for k in ("name", "kind", "description", "answer", "path"):
        store[k] = store[k].strip()
    fields = {"name": store["name"], "kind": store["kind"], "description": store["description"],
              "answer": store["answer"], "cmdline": store["cmdline"].strip(),
              "files": {store["path"]: store["text"].replace("\r\n", "\n")}}  # fmt: skip
    try:
        if not store["path"]:
            raise Invalid("give the file's path, e.g. preseed.cfg", field="path")
        with ctx().db.transaction() as s:
            fn = templatestore.update if store["replace"] else templatestore.add
            tset = fn(s, ctx().config, actor=actor(), **fields)
    except ProvisiondError as exc:
        return _page(store, {exc.field or "text": exc.message}), exc.status
    flash(f"template {tset.name} stored ({tset.kind}, {len(tset.files)} file)", "ok")
    return redirect(f"/templates?template={tset.name}")


@bp.post("/templates/<name>/delete")
@requires("operator")
def template_delete(name: str):
    def run() -> None:
        with ctx().db.transaction() as s:
            templatestore.remove(s, ctx().config, name, actor=actor())

    return _action("/templates", run, ok=f"template {name} removed")


def _page(store: dict, errors: dict):
    sets = renderer().sets()
    form = {k: request.args.get(k, "").strip() for k in ("template", "resource", "params")}
    with ctx().db.reader() as s:
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
                           preview=preview, error=error, store=store, errors=errors,
                           kinds=KINDS)  # fmt: skip
