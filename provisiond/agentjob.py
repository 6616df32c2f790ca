"""The kit of agent-backed jobs: a daemon job that runs a command on the idle agent.

Owns what deploy (``local``), capture, erase and template installs share: the
job's log line (:func:`job_log`), the command argument encoding
(:func:`encode_arg`), queueing the agent command for this instance and
waiting for its result (:func:`start_command`, :func:`wait_command`,
:func:`cancel_command`), the stream side's check that a command is this
resource's and still running (:func:`open_command`, :class:`Gone`), and the
handler's :class:`JobScope`: its job's log and progress, the appliance and
the resource it works for (:func:`provisiond.lookup.appliance_of` is the one
place that finds a job's appliance).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisiond import jobs, logs, pickup
from provisiond.context import Context
from provisiond.db import Database
from provisiond.errors import Invalid, NotFound
from provisiond.jobrunner import JobFailed
from provisiond.lifecycle import JobState as JS
from provisiond.lookup import appliance_of
from provisiond.model import Appliance, Job, Resource, utcnow

log = logs.get("local")
DEFAULT_TIMEOUT = 6 * 3600


def job_log(db: Database, job_id: int, line: str) -> None:
    log.info("job %d: %s", job_id, line)
    with db.transaction() as s:
        jobs.append_log(s.get(Job, job_id), line)


def encode_arg(**kv: object) -> str:
    return "".join(f"{k}={v}\n" for k, v in kv.items() if v is not None and v != "")


@dataclass(frozen=True)
class JobScope:
    """What a job handler works with: its job's log and progress, its appliance and resource.

    ``scope = JobScope(ctx, job_id)`` at the top of a handler's ``run``; the
    session-taking methods read inside the caller's transaction.
    """

    ctx: Context
    job_id: int

    @property
    def db(self) -> Database:
        return self.ctx.db

    def log(self, line: str) -> None:
        """One line in the job's log (and the daemon's log)."""
        job_log(self.ctx.db, self.job_id, line)

    def progress(self, done: int | None = None, total: int | None = None) -> None:
        """Record bytes done and/or the total (None leaves that one as it is)."""
        with self.ctx.db.transaction() as s:
            job = s.get(Job, self.job_id)
            if total is not None:
                job.bytes_total = total
            if done is not None:
                job.bytes_done = done

    def job(self, session: Session) -> Job:
        return session.get(Job, self.job_id)

    def appliance(self, session: Session) -> Appliance | None:
        """The appliance the job works for (None if it was removed meanwhile)."""
        return appliance_of(session, self.job_id)

    def resource(self, session: Session) -> Resource | None:
        """The machine the job works on (None if it was removed meanwhile)."""
        job = session.get(Job, self.job_id)
        return session.get(Resource, job.resource_id) if job and job.resource_id else None


def start_command(ctx: Context, job_id: int, res_id: int, kind: str, arg: str, **params) -> int:
    with ctx.db.transaction() as s:
        res = s.get(Resource, res_id)
        cmd = jobs.enqueue_command(s, res, kind, arg=arg, actor="daemon")
        cmd.params = {**cmd.params, "parent": job_id, **params}
        cmd.owner = ctx.config.instance  # this instance waits for it (wait_command)
        parent = s.get(Job, job_id)
        parent.params = {**(parent.params or {}), "command": cmd.id}
        cmd_id = cmd.id
    ctx.ring()
    return cmd_id


def wait_command(ctx: Context, job_id: int, cmd_id: int, timeout: float) -> str:
    """Wait for the agent's result: its output's last line, or JobFailed with it."""
    deadline = time.monotonic() + timeout
    silent_limit = ctx.config.agent.heartbeat_timeout
    next_pickup_check = 0.0
    while time.monotonic() < deadline:
        with ctx.db.reader() as s:
            cmd, parent = s.get(Job, cmd_id), s.get(Job, job_id)
            state, out = cmd.state, cmd.log
            parent_state = parent.state if parent else JS.FAILED
            res = s.get(Resource, cmd.resource_id) if cmd.resource_id else None
            beat = res.last_heartbeat if res else None
            machine = res.display_name if res else "the machine"
        last = next((ln for ln in reversed(out.splitlines()) if ln.strip()), "")
        silent = (utcnow() - beat).total_seconds() if beat else 0.0
        if state == JS.RUNNING and silent > silent_limit:
            raise JobFailed(
                f"the agent of {machine} went silent for {silent:.0f} s during command {cmd_id} "
                "(machine down, rebooted or off the network?)"
            )
        if state == JS.SUCCEEDED:
            return last
        if state in (JS.FAILED, JS.CANCELLED):
            raise JobFailed(last or f"agent command {cmd_id} {state}")
        if parent_state != JS.RUNNING:
            raise JobFailed(f"job {job_id} is {parent_state}")
        if state == JS.QUEUED and time.monotonic() >= next_pickup_check:
            next_pickup_check = time.monotonic() + PICKUP_CHECK
            reason = fail_if_not_picked_up(ctx, cmd_id)
            if reason:
                raise JobFailed(reason)
        time.sleep(0.3)
    raise JobFailed(
        f"the agent did not finish command {cmd_id} within {timeout:.0f} s "
        "(is it running? `provisiond resource show`)"
    )


PICKUP_CHECK = 2.0  # s between looks at a queued command's pickup deadline


def fail_if_not_picked_up(ctx: Context, cmd_id: int) -> str | None:
    """Fail a queued command its agent has not picked up in time (:mod:`provisiond.pickup`).

    Returns the reason when it failed it; None while it may still be picked up
    (or already was: the check and the failing are one transaction).
    """
    with ctx.db.transaction() as s:
        cmd = s.get(Job, cmd_id)
        if cmd is None or cmd.state != JS.QUEUED:
            return None
        res = s.get(Resource, cmd.resource_id) if cmd.resource_id else None
        others = list(s.scalars(
            select(Job).where(Job.resource_id == cmd.resource_id, Job.id != cmd.id,
                              Job.kind.like("agent.%"),
                              Job.state.in_((JS.RUNNING, JS.SUCCEEDED, JS.FAILED,
                                             JS.CANCELLED)))
            .order_by(Job.id.desc()).limit(20)
        ))  # fmt: skip
        busy = any(j.state == JS.RUNNING for j in others)
        ended = [j.finished_at for j in others if j.finished_at is not None]
        waiting = pickup.Waiting(
            machine=res.display_name if res else f"resource {cmd.resource_id}",
            command_id=cmd.id, kind=cmd.kind.removeprefix("agent."),
            queued_at=cmd.created_at, heard_at=res.last_heartbeat if res else None,
            busy=busy, free_since=max(ended) if ended else None,
        )  # fmt: skip
        reason = pickup.overdue(waiting, utcnow(), pickup.Bounds.of(ctx.config.agent))
        if reason:
            jobs.append_log(cmd, reason)
            jobs.transition(cmd, JS.FAILED, reason)
    return reason


def cancel_command(db: Database, job_id: int, reason: str) -> None:
    """Fail the agent command of ``job_id`` if still open: its streams then answer 410."""
    with db.transaction() as s:
        parent = s.get(Job, job_id)
        cmd_id = (parent.params or {}).get("command") if parent else None
        cmd = s.get(Job, cmd_id) if cmd_id else None
        if cmd is not None and cmd.state in (JS.QUEUED, JS.RUNNING):
            jobs.transition(cmd, JS.FAILED, reason)


# --- the stream side: is this command the resource's, and still running? -------


def open_command(session, resource_id: int, cmd_id: int, kind: str) -> Job:
    cmd = session.get(Job, cmd_id)
    if cmd is None or cmd.resource_id != resource_id or cmd.kind != f"agent.{kind}":
        raise NotFound(f"no {kind} command {cmd_id} for this resource")
    if cmd.state != JS.RUNNING:
        raise Gone(f"command {cmd_id} is {cmd.state}")
    return cmd


class Gone(Invalid):
    status = 410
