"""The job runner: executes queued jobs inside the daemon.

Owns claiming queued jobs (``queued -> running`` by a conditional UPDATE, so
two runners never take the same job; the claim stamps the runner's instance
as ``owner`` on the job, its appliance and its resource), running their
handler in a bounded worker pool, and recording the outcome. A handler that
raises leaves the job ``failed`` with the exception's message as the reason
and calls the handler's ``fail`` hook so the objects it touched (appliance,
resource) are failed too — never silently left half-done. With several
instances on one database a runner claims only the jobs of machines its
rack reaches (:func:`provisiond.racks.claimable`). The CLI, the API and the UI only
enqueue; this is the one place long work runs.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sqlalchemy import select, update

from provisiond import jobs, logs, lookup, racks
from provisiond.db import Database
from provisiond.lifecycle import JobState as JS
from provisiond.model import Appliance, Job, Resource, utcnow
from pxe.service import LoopThread

log = logs.get("jobs")


class JobFailed(Exception):
    """A handler's clean failure: the message is the reason shown to operators."""


class Handler(Protocol):
    def run(self, job_id: int) -> str:
        """Do the work; return the outcome text. Raise JobFailed(reason) to fail."""
        ...

    def fail(self, job_id: int, reason: str) -> None:
        """Put what the job touched into its failed state with ``reason``."""
        ...


class JobRunner:
    name = "jobs"

    def __init__(
        self,
        db: Database,
        handlers: dict[str, Handler],
        workers: int = 4,
        interval=0.3,
        owner: str | None = None,
    ) -> None:
        self.db, self.handlers, self.interval, self.owner = db, handlers, interval, owner
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self._wake = threading.Event()
        self._loop = LoopThread("jobs", self._step, log)

    def _step(self) -> None:
        self._wake.wait(self.interval)
        self._wake.clear()
        if not self._loop.stopping:
            for job_id in self.claim():
                self._pool.submit(self.execute, job_id)

    def poke(self) -> None:
        self._wake.set()

    def claim(self) -> list[int]:
        if not self.handlers:
            return []
        claimed = []
        with self.db.transaction() as s:
            query = select(Job.id).where(Job.state == JS.QUEUED, Job.kind.in_(list(self.handlers)))
            if self.owner is not None:  # only the rack that reaches the machine (racks.py)
                query = query.where(racks.claimable(self.owner))
            ids = s.scalars(query.order_by(Job.id).limit(16)).all()
            for job_id in ids:
                won = s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == JS.QUEUED)
                    .values(state=JS.RUNNING, started_at=utcnow(), owner=self.owner)
                ).rowcount
                if won:
                    claimed.append(job_id)
                    self._own_objects(s, job_id)
        return claimed

    def _own_objects(self, s, job_id: int) -> None:
        """The claimed job's appliance and resource are this instance's work now."""
        job = s.get(Job, job_id)
        for model, obj_id in ((Appliance, job.appliance_id), (Resource, job.resource_id)):
            if obj_id is not None:
                s.execute(update(model).where(model.id == obj_id).values(owner=self.owner))

    def execute(self, job_id: int) -> None:
        with self.db.reader() as s:
            kind = s.get(Job, job_id).kind
        handler = self.handlers[kind]
        log.info("job %d (%s) running", job_id, kind)
        try:
            outcome = handler.run(job_id)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, JobFailed):
                log.exception("job %d (%s) crashed", job_id, kind)
            self._finish(job_id, JS.FAILED, reason)
            try:
                handler.fail(job_id, reason)
            except Exception:
                log.exception("job %d: could not record the failure on its objects", job_id)
            log.warning("job %d (%s) failed: %s", job_id, kind, reason)
            return
        self._finish(job_id, JS.SUCCEEDED, outcome)
        log.info("job %d (%s) succeeded: %s", job_id, kind, outcome)

    def _finish(self, job_id: int, state: JS, outcome: str) -> None:
        with self.db.transaction() as s:
            job = s.get(Job, job_id)
            if job.state == JS.RUNNING:
                jobs.append_log(job, outcome)
                jobs.transition(job, state, outcome)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._wake.set()
        self._loop.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)


class ByMode:
    """A Handler for appliance jobs that delegates to the handler of the appliance's mode."""

    def __init__(self, db: Database, by_mode: dict[str, Handler]) -> None:
        self.db, self.by_mode = db, by_mode

    def _handler(self, job_id: int) -> Handler:
        with self.db.reader() as s:
            app = lookup.appliance_of(s, job_id)
            mode = app.mode if app else None
        if mode not in self.by_mode:
            raise JobFailed(f"no deployer for appliance mode {mode!r} in this build")
        return self.by_mode[mode]

    def run(self, job_id: int) -> str:
        return self._handler(job_id).run(job_id)

    def fail(self, job_id: int, reason: str) -> None:
        try:
            self._handler(job_id).fail(job_id, reason)
        except JobFailed:
            pass
