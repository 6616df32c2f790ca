"""REST views of the inventory: resources, images, kernels and storages.

Owns ``/api/v1/{resources,images,kernels,storages}`` — views only. State
changes and their rules are the core's (:mod:`provisiond.resources` with
renaming, :mod:`provisiond.jobs`, :mod:`provisiond.images`,
:mod:`provisiond.kernels`, :mod:`provisiond.release`,
:mod:`provisiond.capture`), so the CLI applies the same ones; long work
answers 202 with its job. Storages are read-only here: the configuration's
``[[storage]]`` tables are their one source (:mod:`provisiond.storages`).
"""

from __future__ import annotations

import re
from typing import Any

from flask import jsonify
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from provisiond import (
    capture,
    images,
    jobs,
    kernels,
    lookup,
    present,
    release,
    resources,
    storages,
)
from provisiond.errors import Invalid
from provisiond.model import Appliance, Image, Kernel, Resource, Volume
from web.api import bp
from web.api.auth import actor, requires
from web.api.common import body, ctx, page_args, paginate, typed

_MAC_CHARS = re.compile(r"^[0-9a-fA-F:.-]+$")


def resource_query(state: str | None = None, q: str | None = None):
    query = select(Resource).order_by(Resource.id)
    if state:
        query = query.where(Resource.state == state)
    if q:
        q = q.strip().lower()
        like = f"%{q}%"
        conds = [Resource.name.like(like), Resource.ip.like(like)]
        if _MAC_CHARS.match(q):
            conds.append(Resource.mac.like("%" + q.replace("-", ":") + "%"))
        if q.startswith("r-"):
            conds.append(Resource.mac.like("%" + ":".join(_pairs(q[2:])) + "%"))
        query = query.where(or_(*conds))
    return query


def _pairs(hexdigits: str) -> list[str]:
    return [hexdigits[i : i + 2] for i in range(0, len(hexdigits), 2)]


# ---------------------------------------------------------------- resources


@bp.get("/resources")
def resource_list():
    from flask import request

    with ctx().db.reader() as s:
        query = resource_query(request.args.get("state"), request.args.get("q"))
        return jsonify(paginate(s, query, present.resource))


@bp.post("/resources")
def resource_create():
    data = body({"mac", "name"}, {"mac"})
    with ctx().db.transaction() as s:
        try:
            res = resources.ensure(s, str(data["mac"]), actor=actor())
        except ValueError:
            raise Invalid(f"mac {data['mac']!r} is not a MAC address", field="mac")
        if data.get("name"):
            resources.rename(s, res, data["name"], actor())
        out = present.resource(res, detail=True)
    ctx().inventory.refresh()
    return jsonify(out), 201


@bp.get("/resources/<ref>")
def resource_show(ref: str):
    with ctx().db.reader() as s:
        res = resources.find(s, ref)
        out = present.resource(res, detail=True)
        app = s.scalars(select(Appliance).where(Appliance.resource_id == res.id)).first()
        out["appliance"] = app.name if app else None
    return jsonify(out)


@bp.patch("/resources/<ref>")
def resource_update(ref: str):
    data = body({"name"})
    with ctx().db.transaction() as s:
        res = resources.find(s, ref)
        if "name" in data:
            resources.rename(s, res, data["name"], actor())
        out = present.resource(res, detail=True)
    ctx().inventory.refresh()
    return jsonify(out)


@bp.delete("/resources/<ref>")
def resource_delete(ref: str):
    with ctx().db.transaction() as s:
        resources.delete(s, resources.find(s, ref), actor())
    ctx().inventory.refresh()
    return "", 204


@bp.post("/resources/<ref>/accept-key")
@requires("admin")
def resource_accept_key(ref: str):
    """Trust the host key a key-changed resource presented (admin only)."""
    with ctx().db.transaction() as s:
        res = resources.accept_key(s, resources.find(s, ref), actor())
        out = present.resource(res, detail=True)
    ctx().inventory.refresh()
    return jsonify(out)


@bp.post("/resources/<ref>/reboot")
def resource_reboot(ref: str):
    with ctx().db.transaction() as s:
        job = jobs.enqueue_command(s, resources.find(s, ref), "reboot", actor=actor())
        out = present.job(job)
    ctx().ring()
    return jsonify(out), 202


@bp.post("/resources/<ref>/run")
@requires("admin")
def resource_run(ref: str):
    """Queue a shell command for the resource's agent: {"command": "..."} -> 202 job."""
    data = body({"command"}, {"command"})
    command = typed(data, "command", str)
    with ctx().db.transaction() as s:
        job = jobs.enqueue_command(s, resources.find(s, ref), "run", command, actor=actor())
        out = present.job(job)
    ctx().ring()
    return jsonify(out), 202


def _optional_body(allowed: set[str]) -> dict[str, Any]:
    from flask import request

    return body(allowed) if request.get_data() else {}


def _queued(job) -> tuple[Any, int]:
    ctx().inventory.refresh()
    ctx().ring()
    return jsonify(present.job(job) if job is not None else {"status": "idle"}), 202


@bp.post("/resources/<ref>/release")
def resource_release(ref: str):
    """Back to idle; with {"erase": "quick"|"full"} an erase job first."""
    data = _optional_body({"erase"})
    with ctx().db.transaction() as s:
        job = release.release(s, resources.find(s, ref), typed(data, "erase", str), actor())
        return _queued(job)


@bp.post("/resources/<ref>/erase")
def resource_erase(ref: str):
    """Erase every disk ({"mode": "quick"|"full"}, default quick), then idle."""
    data = _optional_body({"mode"})
    with ctx().db.transaction() as s:
        res = resources.find(s, ref)
        job = release.release(s, res, typed(data, "mode", str, "quick"), actor())
        return _queued(job)


@bp.post("/resources/<ref>/capture")
def resource_capture(ref: str):
    """Capture a disk of an idle resource into a new image (a job)."""
    data = body({"disk", "name", "storage"}, required={"disk", "name"})
    with ctx().db.transaction() as s:
        job = capture.capture(
            s,
            resources.find(s, ref),
            typed(data, "disk", str),
            typed(data, "name", str),
            typed(data, "storage", str),
            actor(),
        )
        return _queued(job)


# ---------------------------------------------------------------- images


def image_used_by(session: Session, img: Image) -> list[str]:
    return list(session.scalars(select(Appliance.name).where(Appliance.image_id == img.id)))


@bp.get("/images")
def image_list():
    from flask import request

    query = select(Image).order_by(Image.id)
    if request.args.get("state"):
        query = query.where(Image.state == request.args["state"])
    if request.args.get("q"):
        query = query.where(Image.name.like(f"%{request.args['q']}%"))
    with ctx().db.reader() as s:
        return jsonify(paginate(s, query, present.image))


@bp.get("/images/<ref>")
def image_show(ref: str):
    with ctx().db.reader() as s:
        img = lookup.find(s, Image, ref)
        return jsonify({**present.image(img), "used_by": image_used_by(s, img)})


@bp.post("/images")
def image_import():
    from web.api import imports

    return imports.start_import()


@bp.patch("/images/<ref>")
def image_update(ref: str):
    data = body({"name", "os"})
    with ctx().db.transaction() as s:
        fields = {k: typed(data, k, str) for k in ("name", "os") if k in data}
        img = images.change(s, lookup.find(s, Image, ref), fields, actor())
        return jsonify(present.image(img))


@bp.delete("/images/<ref>")
def image_delete(ref: str):
    from web.api import imports

    return imports.remove_image(ref)


# ---------------------------------------------------------------- kernels


KERNEL_FIELDS = {"name", "version", "kernel_path", "initrd_path", "cmdline", "is_default"}


def _kernel_fields(data: dict[str, Any]) -> tuple[dict[str, Any], bool | None]:
    """The body's typed kernel fields and is_default; the rules are kernels.check's."""
    fields = {k: typed(data, k, str) for k in ("name", *kernels.TEXT_FIELDS) if k in data}
    return fields, typed(data, "is_default", bool)


@bp.get("/kernels")
def kernel_list():
    with ctx().db.reader() as s:
        return jsonify(paginate(s, select(Kernel).order_by(Kernel.id), present.kernel))


@bp.post("/kernels")
def kernel_create():
    data = body(KERNEL_FIELDS, {"name", "kernel_path"})
    with ctx().db.transaction() as s:
        k = kernels.create(s, *_kernel_fields(data), actor())
        out = present.kernel(k)
    ctx().inventory.refresh()
    return jsonify(out), 201


@bp.get("/kernels/<ref>")
def kernel_show(ref: str):
    with ctx().db.reader() as s:
        return jsonify(present.kernel(lookup.find(s, Kernel, ref)))


@bp.patch("/kernels/<ref>")
def kernel_update(ref: str):
    data = body(KERNEL_FIELDS)
    with ctx().db.transaction() as s:
        k = kernels.change(s, lookup.find(s, Kernel, ref), *_kernel_fields(data), actor())
        out = present.kernel(k)
    ctx().inventory.refresh()
    return jsonify(out)


@bp.delete("/kernels/<ref>")
def kernel_delete(ref: str):
    with ctx().db.transaction() as s:
        kernels.remove(s, lookup.find(s, Kernel, ref), actor())
    ctx().inventory.refresh()
    return "", 204


# ---------------------------------------------------------------- storages
# The configuration's [[storage]] tables are the one source (provisiond.storages):
# these views list them and refuse writes with the edit to make instead.


@bp.get("/storages")
def storage_list():
    limit, offset = page_args()
    with ctx().db.reader() as s:
        items = [present.declared_storage(d) for d in storages.declared(ctx().config, s)]
    page = items[offset : offset + limit]
    return jsonify({"items": page, "total": len(items), "limit": limit, "offset": offset})


@bp.post("/storages")
def storage_create():
    raise storages.read_only()


@bp.get("/storages/<ref>")
def storage_show(ref: str):
    with ctx().db.reader() as s:
        d = storages.find_declared(ctx().config, s, ref)
        out = present.declared_storage(d)
        vols = s.scalars(select(Volume).where(Volume.storage_id == d.row.id)) if d.row else []
        out["volumes"] = [{"id": v.id, "name": v.name, "size": v.size} for v in vols]
        return jsonify(out)


@bp.patch("/storages/<ref>")
def storage_update(ref: str):
    with ctx().db.reader() as s:
        raise storages.read_only(storages.find_declared(ctx().config, s, ref))


@bp.delete("/storages/<ref>")
def storage_delete(ref: str):
    with ctx().db.reader() as s:
        raise storages.read_only(storages.find_declared(ctx().config, s, ref))
