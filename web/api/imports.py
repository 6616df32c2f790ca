"""Image import and removal through :mod:`provisiond.images`, as background work.

Owns turning the synchronous ``images.import_from`` into an HTTP answer: it
runs in a thread; the request waits until the import's Job row exists (then
answers 202 with the job, whose progress the UI and API show) or until the
import fails early (bad name, name taken, no storage: answered as that
error, with its field). The storage manager is the Context's when the
composition root provides one (``ctx.storage``), else one built from the
configuration.
"""

from __future__ import annotations

import threading
import time

from flask import jsonify
from sqlalchemy import select

from provisiond import logs, lookup, present
from provisiond.errors import Invalid
from provisiond.importpolicy import redact_url
from provisiond.model import Image, Job
from web.api.auth import actor
from web.api.common import body, ctx, typed

log = logs.get("http")
WAIT_FOR_JOB = 5.0


def _manager():
    c = ctx()
    manager = getattr(c, "storage", None)
    if manager is None:
        from provisiond.storages import StorageManager

        manager = StorageManager(c.config)
    return manager


def _find_job(name: str, since_id: int) -> Job | None:
    with ctx().db.reader() as s:
        for job in s.scalars(
            select(Job).where(Job.kind == "image.import", Job.id > since_id).order_by(Job.id)
        ):
            if (job.params or {}).get("name") == name:
                return job
    return None


def start_import(data: dict | None = None, who: str | None = None):
    """Start an import; answers 202 with its job (or raises the early failure)."""
    if data is None:
        data = body({"name", "source", "storage"}, {"name", "source"})
    for key in ("name", "source"):
        if not data.get(key):
            raise Invalid(f"{key} is required", field=key)
    name, source = typed(data, "name", str), typed(data, "source", str)
    storage = typed(data, "storage", str)
    c, who, manager = ctx(), who or actor(), _manager()
    with c.db.reader() as s:
        since = s.scalar(select(Job.id).order_by(Job.id.desc()).limit(1)) or 0
    failure: list[BaseException] = []

    def work() -> None:
        from provisiond import images

        try:
            images.import_from(c.db, manager, source, name, storage=storage, actor=who)
        except BaseException as exc:  # reported to the waiting request or logged
            failure.append(exc)
            log.warning("image import %s from %s failed: %s", name, redact_url(source), exc)

    thread = threading.Thread(target=work, name=f"import-{name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_FOR_JOB
    while time.monotonic() < deadline:
        job = _find_job(name, since)
        if job is not None:
            return jsonify(present.job(job)), 202
        if not thread.is_alive():
            break
        time.sleep(0.05)
    thread.join(0.1)
    if failure:
        raise failure[0]
    job = _find_job(name, since)
    return jsonify(present.job(job) if job else {"status": "importing", "name": name}), 202


def remove_image(ref: str):
    from provisiond import images

    with ctx().db.transaction() as s:
        images.remove(s, _manager(), lookup.find(s, Image, ref), actor=actor())
    ctx().inventory.refresh()
    return "", 204
