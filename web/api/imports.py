"""Image import and removal over HTTP, through :mod:`provisiond.images`.

Owns turning a request into a queued ``image.import`` job: what can be
refused at once (bad name, name taken, no such storage, a source the import
policy forbids) is answered as that error, with its field; otherwise the
answer is 202 with the queued job, which the daemon's job runner runs
(:class:`provisiond.images.ImportJob`) and whose progress the UI and API show.
"""

from __future__ import annotations

from flask import jsonify

from provisiond import images, lookup, present
from provisiond.errors import Invalid
from provisiond.model import Image, Job
from provisiond.storages import StorageManager
from web.api.auth import actor
from web.api.common import body, ctx, typed


def start_import(data: dict | None = None, who: str | None = None):
    """Queue an import; answers 202 with its job (or raises what is refused at once)."""
    if data is None:
        data = body({"name", "source", "storage"}, {"name", "source"})
    for key in ("name", "source"):
        if not data.get(key):
            raise Invalid(f"{key} is required", field=key)
    name, source = typed(data, "name", str), typed(data, "source", str)
    storage = typed(data, "storage", str)
    c = ctx()
    manager = StorageManager(c.config)
    job_id = images.queue_import(c.db, manager, source, name, storage, who or actor())
    with c.db.reader() as s:
        return jsonify(present.job(s.get(Job, job_id))), 202


def remove_image(ref: str):
    with ctx().db.transaction() as s:
        images.remove(s, StorageManager(ctx().config), lookup.find(s, Image, ref), actor=actor())
    ctx().inventory.refresh()
    return "", 204
