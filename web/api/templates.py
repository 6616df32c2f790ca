"""REST views of install templates: list, source, and the render preview.

Owns ``/api/v1/templates``. Rendering is :func:`provisiond.installs.preview`,
the same call as ``provisiond template render``: what the machine would get,
with a placeholder instead of the one-time token.
"""

from __future__ import annotations

from flask import jsonify

from provisiond import installs, rootfs, templatestore
from provisiond.templating import Renderer
from web.api import bp
from web.api.auth import actor
from web.api.common import body, ctx, typed


def renderer() -> Renderer:
    return templatestore.renderer(ctx().config, ctx().db)


@bp.get("/templates")
def template_list():
    items = [
        templatestore.summary(t) for t in renderer().sets()
    ]  # fmt: skip
    return jsonify({"items": items, "total": len(items)})


@bp.get("/templates/<path:name>")
def template_show(name: str):
    r = renderer()
    tset = r.get(name)
    return jsonify({"name": name, "kind": tset.kind, "files": r.source(name)})


SET_FIELDS = {"name", "kind", "description", "files", "answer", "cmdline", "modes", "initrds"}


def _fields(data: dict) -> dict:
    files = typed(data, "files", dict) or {}
    out = {"files": {str(k): v for k, v in files.items()}, "kind": str(data.get("kind", ""))}
    for key in ("description", "answer", "cmdline"):
        out[key] = typed(data, key, str, "") or ""
    out["modes"] = typed(data, "modes", dict, {}) or {}
    out["initrds"] = typed(data, "initrds", list, []) or []
    return out


@bp.post("/templates")
def template_create():
    """Store a template set; it is checked in the sandbox first (400 names file and line)."""
    data = body(SET_FIELDS, {"name", "kind", "files"})
    with ctx().db.transaction() as s:
        tset = templatestore.add(s, ctx().config, actor=actor(), name=str(data["name"]),
                                 **_fields(data))  # fmt: skip
    return jsonify(templatestore.summary(tset)), 201


@bp.put("/templates/<name>")
def template_replace(name: str):
    data = body(SET_FIELDS - {"name"}, {"kind", "files"})
    with ctx().db.transaction() as s:
        tset = templatestore.update(s, ctx().config, actor=actor(), name=name, **_fields(data))
    return jsonify(templatestore.summary(tset))


@bp.delete("/templates/<name>")
def template_delete(name: str):
    with ctx().db.transaction() as s:
        templatestore.remove(s, ctx().config, name, actor=actor())
    return "", 204


def render_preview(name: str, resource_ref: str, params: dict) -> dict:
    overrides = {str(k): str(v) for k, v in params.items()}
    ref = rootfs.lookup(overrides.get("rootfs", installs.DEFAULTS["rootfs"]))
    with ctx().db.reader() as s:
        return installs.preview(s, ctx().config, renderer(), name, resource_ref, overrides, ref)


@bp.post("/templates/<path:name>/render")
def template_render(name: str):
    data = body({"resource", "params"}, {"resource"})
    params = typed(data, "params", dict, {}) or {}
    return jsonify(render_preview(name, str(data["resource"]), params))
