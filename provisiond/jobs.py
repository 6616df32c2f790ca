"""Jobs: durable long work with progress, log and outcome; the agent command queue.

Owns :class:`provisiond.model.Job` rows. Every state change goes through
:func:`transition` (the job transition table). Commands for an idle agent
(``run``, ``reboot``, ``poweroff``; deploy/capture/erase later) are jobs of
kind ``agent.<command>``: queued by the CLI/API, handed to the agent by its
long poll, finished by the agent's result. A command is owned by the
instance that queued it for its own job, or else by the one whose agent API
handed it out. A result for a command the daemon had already failed is
recorded, not refused (:func:`provisiond.recovery.late_result` decides what
it changes).

Delivery is at least once: the agent runs its commands one at a time and
polls only when it runs none, so a poll from the same agent boot while one
of its commands is ``running`` means that command never reached it (its poll
connection died while the server handed it out) or its result was lost; the
poll gets the same command again (the agent runs an id once and re-sends the
result of one it already ran). After :data:`MAX_REDELIVERIES` the command
fails with the reason instead of staying ``running``.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisiond import events, lifecycle, recovery
from provisiond.errors import Invalid, NotFound
from provisiond.lifecycle import JobState as JS
from provisiond.model import Job, Resource, utcnow

AGENT_COMMANDS = frozenset({"run", "reboot", "poweroff", "deploy", "capture", "erase", "install"})
MAX_LOG = 256 * 1024
#: hand-outs of one command to one agent boot that brought no result, before it fails
MAX_REDELIVERIES = 3


#: called with a job's id when it reaches a final state (succeeded, failed, cancelled) in
#: this process: what a job kept in memory only (an import's password) is dropped then
ON_FINAL: list = []


def transition(job: Job, target: JS, outcome: str = "") -> None:
    lifecycle.check(job.state, target)
    job.state = str(target)
    if target == JS.RUNNING:
        job.started_at = utcnow()
    if target in (JS.SUCCEEDED, JS.FAILED, JS.CANCELLED):
        job.finished_at = utcnow()
        job.outcome = outcome
        for hook in ON_FINAL:
            hook(job.id)


def append_log(job: Job, line: str) -> None:
    job.log = (job.log + line.rstrip("\n") + "\n")[-MAX_LOG:]


def get(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found; see `provisiond job list`")
    return job


def enqueue_command(
    session: Session, res: Resource, command: str, arg: str = "", actor: str = "cli"
) -> Job:
    if command not in AGENT_COMMANDS:
        raise Invalid(
            f"unknown agent command {command!r}; known: {', '.join(sorted(AGENT_COMMANDS))}",
            field="command",
        )
    job = Job(kind=f"agent.{command}", state=JS.QUEUED, resource_id=res.id, params={"arg": arg})
    session.add(job)
    session.flush()
    events.record(session, actor, f"agent.{command}", res.display_name, arg)
    return job


def next_command(session: Session, res: Resource, owner: str | None = None) -> Job | None:
    """Hand the oldest queued command of ``res`` to its agent (queued -> running).

    ``owner`` is the instance whose agent API hands it out; it owns the command
    from now on unless the instance that queued it already does.
    """
    boot = _boot_tag(res)
    for job in session.scalars(
        select(Job)
        .where(Job.resource_id == res.id, Job.state == JS.RUNNING, Job.kind.like("agent.%"))
        .order_by(Job.id)
    ):
        if boot is None or (job.params or {}).get("boot") != boot:
            continue  # not handed to this boot of the agent (or not by a poll)
        n = int(job.params.get("redelivered", 0)) + 1
        if n > MAX_REDELIVERIES:
            reason = (f"command {job.id} was handed to the agent {n} times and never "
                      "acknowledged (the agent keeps polling without running it)")  # fmt: skip
            append_log(job, reason)
            transition(job, JS.FAILED, reason)
            continue
        job.params = {**job.params, "redelivered": n}
        append_log(
            job,
            f"handed out again ({n}): the agent polled without its result (its poll "
            "connection ended before the command arrived, or the result was lost)",
        )
        return job
    job = session.scalars(
        select(Job)
        .where(Job.resource_id == res.id, Job.state == JS.QUEUED, Job.kind.like("agent.%"))
        .order_by(Job.id)
    ).first()
    if job is not None:
        transition(job, JS.RUNNING)
        job.owner = job.owner or owner
        if boot is not None:
            job.params = {**(job.params or {}), "boot": boot}
    return job


def _boot_tag(res: Resource) -> str | None:
    """A short tag of the agent's per-boot token (not the token's hash itself)."""
    if not res.agent_token_hash:
        return None
    return hashlib.sha256(f"boot:{res.agent_token_hash}".encode()).hexdigest()[:12]


def complete_command(
    session: Session, res: Resource, job_id: int, exit_code: int, output: bytes
) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.resource_id != res.id:
        raise NotFound(f"command {job_id} is not a command of {res.display_name}")
    text = output.decode("utf-8", "replace")
    if job.state == JS.FAILED:  # the daemon gave up first (restart, timeout): record it
        append_log(job, f"late result, exit code {exit_code}:\n{text}")
        job.params = {**job.params, "late_exit_code": exit_code}
        last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
        recovery.late_result(session, res, job, exit_code, last.strip())
        return job
    if job.state != JS.RUNNING:
        raise Invalid(f"command {job_id} is {job.state}, not running")
    append_log(job, text)
    job.params = {**job.params, "exit_code": exit_code}
    transition(job, JS.SUCCEEDED if exit_code == 0 else JS.FAILED, f"exit code {exit_code}")
    return job
