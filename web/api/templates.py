"""REST views of install templates: list, source, and the render preview.

Owns ``/api/v1/templates``. Rendering is :func:`provisiond.installs.preview`,
the same call as ``provisiond template render``: what the machine would get,
with a placeholder instead of the one-time token.
"""

from __future__ import annotations

from flask import jsonify

from provisiond import installs, rootfs
from provisiond.templating import Renderer
from web.api import bp
from web.api.common import body, ctx, typed


def renderer() -> Renderer:
    return Renderer(ctx().config.templates_dir / "install")


@bp.get("/templates")
def template_list():
    items = [
        {"name": t.name, "kind": t.kind, "description": t.description, "files": list(t.files),
         "answer": t.answer}
        for t in renderer().sets()
    ]  # fmt: skip
    return jsonify({"items": items, "total": len(items)})


@bp.get("/templates/<path:name>")
def template_show(name: str):
    r = renderer()
    tset = r.get(name)
    return jsonify({"name": name, "kind": tset.kind, "files": r.source(name)})


def render_preview(name: str, resource_ref: str, params: dict) -> dict:
    overrides = {str(k): str(v) for k, v in params.items()}
    ref = rootfs.lookup(overrides.get("rootfs", installs.DEFAULTS["rootfs"]))
    with ctx().db.sessions() as s:
        return installs.preview(s, ctx().config, renderer(), name, resource_ref, overrides, ref)


@bp.post("/templates/<path:name>/render")
def template_render(name: str):
    data = body({"resource", "params"}, {"resource"})
    params = typed(data, "params", dict, {}) or {}
    return jsonify(render_preview(name, str(data["resource"]), params))
