"""Images: importing master images onto a storage, and removing them.

Owns the Image and master Volume rows. An import streams a raw or qcow2
file (or an http(s) URL) into a new volume of a configured storage with
progress, records the sha256 and size, and is a Job the UI and API see:
``queue_import`` checks it and queues it for the daemon's job runner, whose
:class:`ImportJob` does the work; the CLI's ``import_from`` runs the same
work in its own process. What may be imported (import folders, no internal
URLs) is :mod:`provisiond.importpolicy`'s rule, checked before the job
starts; a URL's password never reaches the job, the events or an error
message (:func:`storage.fetch.redact_url`). Removing an image that still has clones is refused
with a message naming them.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisiond import events, importpolicy, jobs
from provisiond.db import Database
from provisiond.errors import Conflict, Invalid
from provisiond.jobrunner import JobFailed
from provisiond.lifecycle import JobState as JS
from provisiond.model import Appliance, Image, Job, Storage, Volume, utcnow
from provisiond.storages import StorageManager
from storage.backends import StorageError
from storage.fetch import redact_url
from storage.images import import_image

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,100}$")
Progress = Callable[[int, int], None]


class JobProgress:
    """Progress callback that writes bytes/rate to a job at most every ``every`` seconds."""

    def __init__(self, db: Database, job_id: int, echo: Progress | None = None, every=0.5):
        self.db, self.job_id, self.echo, self.every = db, job_id, echo, every
        self.t0 = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.echo:
            self.echo(done, total)
        now = time.monotonic()
        if now - self._last < self.every and done < total:
            return
        self._last = now
        with self.db.transaction() as s:
            job = s.get(Job, self.job_id)
            job.bytes_done, job.bytes_total = done, total
            job.rate = done / max(now - self.t0, 1e-6)


IMPORT = "image.import"  # the job kind the runner's ImportJob handles


class _Sources:
    """Import sources that carry a password, kept in memory only (never in the job row).

    The request that queues an import puts its source here; the runner's
    handler in the same process takes it. A job that ends in this process
    (succeeded, failed, cancelled: :data:`provisiond.jobs.ON_FINAL`) drops its
    source, and each new import first forgets the sources of jobs that are no
    longer queued or running (one cancelled by another instance). Thread-safe.
    """

    def __init__(self) -> None:
        self._by_job: dict[int, str] = {}
        self._put_at: dict[int, float] = {}
        self._lock = threading.Lock()

    def put(self, job_id: int, source: str) -> None:
        with self._lock:
            self._by_job[job_id] = source
            self._put_at[job_id] = time.monotonic()

    def take(self, job_id: int) -> str | None:
        with self._lock:
            self._put_at.pop(job_id, None)
            return self._by_job.pop(job_id, None)

    def discard(self, job_id: int) -> None:
        self.take(job_id)

    def held(self) -> list[int]:
        """The ids of the jobs whose source is held (tests, diagnostics; never the sources)."""
        with self._lock:
            return sorted(self._by_job)

    def prune(self, session: Session, settle: float = 60.0) -> None:
        """Forget the sources of jobs that ended elsewhere or no longer exist.

        Only sources held for ``settle`` seconds: a job whose source was put just
        now may not be committed yet (another request's transaction)."""
        with self._lock:
            now = time.monotonic()
            ids = sorted(j for j, at in self._put_at.items() if now - at >= settle)
        if not ids:
            return
        live = set(
            session.scalars(
                select(Job.id).where(Job.id.in_(ids), Job.state.in_((JS.QUEUED, JS.RUNNING)))
            )
        )
        for job_id in ids:
            if job_id not in live:
                self.discard(job_id)


SOURCES = _Sources()
jobs.ON_FINAL.append(SOURCES.discard)


def _new_job(db, manager, source, name, storage, actor, state: JS) -> int:
    """Check an import (name, storage, import policy) and create its job in ``state``."""
    check_name(None, name)
    settings = manager.settings(storage)
    importpolicy.checked_source(manager.config, source)
    shown = redact_url(source)
    with db.transaction() as s:
        SOURCES.prune(s)
        check_name(s, name)
        manager.sync_rows(s)
        job = Job(kind=IMPORT, state=state, started_at=utcnow() if state == JS.RUNNING else None,
                  params={"source": shown, "name": name, "storage": settings.name,
                          "actor": actor, "redacted": shown != source})  # fmt: skip
        s.add(job)
        s.flush()
        if shown != source:  # before the commit: the runner may claim the job right after it
            SOURCES.put(job.id, source)
        return job.id


def queue_import(
    db: Database,
    manager: StorageManager,
    source: str,
    name: str,
    storage: str | None = None,
    actor: str = "cli",
) -> int:
    """Queue an import for the daemon's job runner (:class:`ImportJob`); returns the job id.

    What can be refused at once (name, storage, import policy, name taken) is
    raised here, nothing queued.
    """
    return _new_job(db, manager, source, name, storage, actor, JS.QUEUED)


def _run(db: Database, manager: StorageManager, job_id: int, source: str,
         echo: Progress | None = None) -> str:  # fmt: skip
    """Stream ``source`` into a new volume and register the image; returns the outcome."""
    with db.reader() as s:
        params = dict(s.get(Job, job_id).params or {})
    name, shown, actor = params["name"], params["source"], params.get("actor", "cli")
    settings = manager.settings(params.get("storage"))
    path, url_check = importpolicy.checked_source(manager.config, source)
    progress = JobProgress(db, job_id, echo)
    backend = manager.backend(settings.name, progress=progress)
    volume_name = master_volume(name)
    try:
        result = import_image(backend, volume_name, path, progress=progress, url_check=url_check)
    except (StorageError, OSError) as exc:
        raise JobFailed(f"import of {shown} failed: {exc}")
    with db.transaction() as s:
        register(s, manager, job_id, Master(name, settings.name, volume_name, result.volume.path,
                                            result.size, result.sha256), actor,
                 "image.imported", f"{shown} sha256 {result.sha256}")  # fmt: skip
    return f"imported {result.size} bytes, sha256 {result.sha256}"


class ImportJob:
    """The job runner's handler of ``image.import`` jobs (:mod:`provisiond.jobrunner`)."""

    def __init__(self, db: Database, manager: StorageManager) -> None:
        self.db, self.manager = db, manager

    def run(self, job_id: int) -> str:
        with self.db.reader() as s:
            params = dict(s.get(Job, job_id).params or {})
        shown, source = params.get("source", ""), SOURCES.take(job_id)
        if source is None:
            if params.get("redacted"):
                raise JobFailed(
                    f"the password of {shown} is kept only by the daemon that queued the "
                    "import (it restarted, or another instance took the job): import it again"
                )
            source = shown
        return _run(self.db, self.manager, job_id, source)

    def fail(self, job_id: int, reason: str) -> None:
        SOURCES.take(job_id)  # the job touched no other object


def import_from(
    db: Database,
    manager: StorageManager,
    source: str,
    name: str,
    storage: str | None = None,
    actor: str = "cli",
    echo: Progress | None = None,
) -> Image:
    """Import in this process (the CLI, which follows it with ``echo``): the same job and
    work as :class:`ImportJob`, run here instead of by the daemon's runner."""
    job_id = _new_job(db, manager, source, name, storage, actor, JS.RUNNING)
    SOURCES.take(job_id)  # this process runs it: the source is at hand
    try:
        outcome = _run(db, manager, job_id, source, echo)
    except JobFailed as exc:
        _finish(db, job_id, JS.FAILED, str(exc))
        raise Invalid(str(exc), field="source")
    except Exception as exc:
        _finish(db, job_id, JS.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    _finish(db, job_id, JS.SUCCEEDED, outcome)
    with db.reader() as s:
        img = s.get(Image, s.get(Job, job_id).image_id)
        s.expunge(img)
    return img


def _finish(db: Database, job_id: int, state: JS, outcome: str) -> None:
    with db.transaction() as s:
        jobs.transition(s.get(Job, job_id), state, outcome)


# --- the one registration path (import and capture) ------------------------------


def check_name(session: Session | None, name: str) -> None:
    """A new image's name: the allowed letters (and, with a session, not taken)."""
    if not _NAME.match(name):
        raise Invalid(f"image name {name!r}: letters, digits and . _ + - only", field="name")
    if session is not None and session.scalars(select(Image.id).where(Image.name == name)).first():
        raise Conflict(f"image '{name}' already exists; pick another name", field="name")


def master_volume(name: str) -> str:
    """The volume name of image ``name``'s master."""
    return f"image-{name}"


@dataclass(frozen=True)
class Master:
    """A master volume written and verified on a storage, ready to become an image."""

    name: str  # the image's
    storage: str
    volume: str
    path: str
    size: int
    sha256: str
    manifest: str | None = None  # chunks.Manifest JSON, when the writer built one


def register(
    session: Session,
    manager: StorageManager,
    job_id: int,
    master: Master,
    actor: str,
    action: str,
    detail: str,
) -> Image:
    """Make ``master`` an image: its Volume row, the ready Image, the job's link, an event.

    The one way an image comes to exist, for import (:func:`_run`) and capture
    (:class:`provisiond.capture.CaptureJob`) alike.
    """
    check_name(session, master.name)
    manager.sync_rows(session)
    session.flush()
    st = session.scalars(select(Storage).where(Storage.name == master.storage)).one()
    vol = Volume(storage_id=st.id, name=master.volume, path=master.path, size=master.size)
    session.add(vol)
    session.flush()
    img = Image(name=master.name, format="raw", size=master.size, sha256=master.sha256 or None,
                volume_id=vol.id, manifest=master.manifest, state="ready")  # fmt: skip
    session.add(img)
    session.flush()
    job = session.get(Job, job_id)
    job.image_id = img.id
    job.bytes_done = job.bytes_total = master.size
    events.record(session, actor, action, master.name, detail)
    return img


def change(session: Session, img: Image, fields: dict[str, str | None], actor: str) -> Image:
    """Rename an image (a name no other image has) and/or set its ``os``."""
    if "name" in fields:
        name = fields["name"]
        taken = select(Image.id).where(Image.name == name, Image.id != img.id)
        if not name or session.scalars(taken).first():
            raise Conflict(f"image name {name!r} is empty or taken", field="name")
        img.name = name
    if "os" in fields:
        img.os = fields["os"]
    events.record(session, actor, "image.updated", img.name, ", ".join(sorted(fields)))
    return img


def clones_of(session: Session, img: Image) -> list[str]:
    names = [a.name for a in session.scalars(select(Appliance).where(Appliance.image_id == img.id))]
    if img.volume_id:
        names += [
            v.name
            for v in session.scalars(select(Volume).where(Volume.origin_id == img.volume_id))
            if v.name not in names
        ]
    return names


def remove(session: Session, manager: StorageManager, img: Image, actor: str = "cli") -> None:
    users = clones_of(session, img)
    if users:
        raise Conflict(
            f"image '{img.name}' still has clones or appliances: {', '.join(users)}; "
            "remove them first (`provisiond appliance rm`)"
        )
    vol = img.volume
    for job in session.scalars(select(Job).where(Job.image_id == img.id)):
        job.image_id = None
    session.delete(img)
    session.flush()
    if vol is not None:
        manager.backend(vol.storage.name).delete(vol.name)
        session.delete(vol)
    events.record(session, actor, "image.removed", img.name, "")
