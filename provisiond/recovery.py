"""What a stopped daemon leaves behind: orphaned work, and results that come late.

Owns two decisions.

**At start-up** (:func:`recover`, called once the instance lock is held and
its lease written) an instance fails the transient work that nobody runs any
more, and nothing else:

=================================  ============================================
owner of the transient object      outcome
=================================  ============================================
this instance                      failed: "daemon restarted during <state>"
another instance, lease expired    failed: "rack <id> stopped heartbeating
(or no instance row at all)        during <state>"
another instance, lease holds      untouched: that daemon is still running it
none, job ``queued``               untouched: nobody started it; a job runner
(and what that job will touch)     claims it (stamping its owner) and runs it
none, anything else                failed as this instance's own: rows written
                                   before owners existed (one daemon per state)
=================================  ============================================

A restart never resumes half-done work: a failed object can be retried.
:func:`recover` can be called again later (by a scheduler tick, say) with the
same rules, since an alive owner's work is never touched.

**A late result** (:func:`late_result`): an agent that reports on a command
the daemon had already failed. What it says is recorded (command log and an
``agent.late_result`` event). A ``deploy`` that exited 0 has written the
whole image and read every chunk back against its sha256; the agent reboots
into that disk right after reporting. If recovery was the only reason the
deploy failed, and nothing has changed since (the appliance is still the
failed one of that very job, with the same image and manifest, and no later
job was queued for it), the deploy is *adopted*: appliance ``failed ->
starting -> active`` and resource ``failed -> deploying -> active``, every
step an audited transition of the existing tables, so the machine boots its
written disk instead of sitting in ``failed``. Otherwise the failure stays;
for a command that succeeded the resource's reason also says what the agent
reported and why it was not adopted. (A late failure, typically the agent's
stream answered 410 after the restart, only adds the event.)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provisiond import appliances, events, instance, lifecycle, lookup, resources
from provisiond.chunks import Manifest
from provisiond.lifecycle import ApplianceState as AS
from provisiond.lifecycle import JobState as JS
from provisiond.lifecycle import ResourceState as RS
from provisiond.model import Appliance, Image, Instance, Job, Resource, utcnow


@dataclass(frozen=True)
class Failed:
    kind: str  # resource | appliance | job
    name: str
    reason: str


def orphan_reason(
    owner: str | None, state: str, me: str, alive: set[str], running: bool = False
) -> str | None:
    """Why transient work in ``state`` is orphaned, or None when its owner still runs it.

    ``running``: asked by a running instance (:mod:`provisiond.racks`), whose own
    work (and unowned work, which it may be running) is not orphaned.
    """
    if owner is None or owner == me:
        return None if running else lifecycle.restart_reason(state)
    if owner in alive:
        return None
    return f"rack {owner} stopped heartbeating during {state}"


def _states(states) -> list[str]:
    return [str(s) for s in states]


_OBJECTS = (
    (Appliance, lifecycle.TRANSIENT_APPLIANCE),
    (Resource, lifecycle.TRANSIENT_RESOURCE),
)


def _fail(session: Session, obj: Appliance | Resource, reason: str) -> Failed:
    if isinstance(obj, Appliance):
        appliances.set_state(session, obj, AS.FAILED, reason)
        return Failed("appliance", obj.name, reason)
    resources.set_state(session, obj, RS.FAILED, reason)
    return Failed("resource", obj.display_name, reason)


def recover(
    session: Session, me: str, now: dt.datetime | None = None, running: bool = False
) -> list[Failed]:
    """Fail what is orphaned (see the module's table); returns what was failed.

    ``running=True``: called by a running instance for other racks' work only
    (this instance's own and unowned work is left alone). Rows are taken
    ``FOR UPDATE SKIP LOCKED``, so two instances never fail the same object.
    """
    now = now or utcnow()
    alive = instance.alive(session, now) - {me}
    failed: list[Failed] = []
    waiting_apps, waiting_res = set(), set()
    transient_jobs = select(Job).where(Job.state.in_(_states(lifecycle.TRANSIENT_JOB)))
    dead: list[str] = []
    if running:  # only rows of racks whose lease expired are touched (and locked)
        dead = sorted(set(session.scalars(select(Instance.id))) - alive - {me})
        if not dead:
            return []
        transient_jobs = transient_jobs.where(Job.owner.in_(dead))
    for job in session.scalars(transient_jobs.with_for_update(skip_locked=True)):
        if job.owner is None and job.state == JS.QUEUED:
            waiting_apps.add(job.appliance_id)
            waiting_res.add(job.resource_id)
            continue
        reason = orphan_reason(job.owner, job.state, me, alive, running)
        if reason is None:
            continue
        lifecycle.check(job.state, JS.FAILED)
        job.state, job.outcome, job.finished_at = JS.FAILED, reason, now
        job.params = {**(job.params or {}), "orphaned": True}
        failed.append(Failed("job", f"{job.kind} {job.id}", reason))
    waiting = {Appliance: waiting_apps, Resource: waiting_res}
    for model, states in _OBJECTS:
        transient = select(model).where(model.state.in_(_states(states)))
        if running:
            transient = transient.where(model.owner.in_(dead))
        for obj in session.scalars(transient.with_for_update(skip_locked=True)):
            if obj.owner is None and obj.id in waiting[model]:
                continue
            reason = orphan_reason(obj.owner, obj.state, me, alive, running)
            if reason is not None:
                failed.append(_fail(session, obj, reason))
    return failed


# --- results that arrive after the daemon gave up on a command ----------------


def late_result(session: Session, res: Resource, cmd: Job, exit_code: int, last: str) -> str:
    """Record an agent's result for a failed command; adopt a finished deploy when safe.

    Returns what was decided (also the audit event's detail).
    """
    kind = cmd.kind.removeprefix("agent.")
    said = f"agent reported command {cmd.id} ({kind}) exited {exit_code} after the daemon " + (
        f"had failed it ({cmd.outcome})" + (f": {last}" if last else "")
    )
    app, why_not = _adoptable(session, res, cmd, exit_code)
    if app is not None:
        reason = f"deploy finished by the agent after the daemon had failed it: {last or 'ok'}"
        appliances.set_state(session, app, AS.STARTING, reason, actor="agent")
        resources.set_state(session, res, RS.DEPLOYING, reason, actor="agent")
        appliances.set_state(session, app, AS.ACTIVE, reason, actor="agent")
        resources.set_state(session, res, RS.ACTIVE, reason, actor="agent")
        detail = f"{said}; adopted: appliance {app.name} and {res.display_name} are active"
    else:
        detail = f"{said}; state kept: {why_not}"
        if exit_code == 0 and res.state == RS.FAILED:  # a finished machine says why it is failed
            res.state_reason = f"{res.state_reason}; then the {detail}"[:4000]
    events.record(session, "agent", "agent.late_result", res.display_name, detail)
    return detail


def _adoptable(
    session: Session, res: Resource, cmd: Job, exit_code: int
) -> tuple[Appliance | None, str]:
    """(the appliance, "") when the late result is a whole, verified deploy that nothing
    has overtaken since; else (None, why not)."""
    if cmd.kind != "agent.deploy" or exit_code != 0:
        return None, "only a successful deploy can be adopted"
    parent = session.get(Job, (cmd.params or {}).get("parent") or 0)
    if parent is None or parent.kind != "appliance.start" or parent.appliance_id is None:
        return None, "the command belongs to no appliance start"
    if not (parent.params or {}).get("orphaned"):
        return None, f"job {parent.id} failed for its own reason ({parent.outcome})"
    app = lookup.appliance_of(session, parent)
    if app is None or app.resource_id != res.id:
        return None, "the appliance was removed or moved to another machine"
    if app.state != AS.FAILED or res.state != RS.FAILED:
        return (
            None,
            f"appliance {app.name} is {app.state} and {res.display_name} {res.state} by now",
        )
    newest = session.scalar(select(func.max(Job.id)).where(Job.appliance_id == app.id))
    if newest != parent.id:
        return None, f"appliance {app.name} has a newer job ({newest})"
    img = session.get(Image, app.image_id) if app.image_id else None
    if img is None or img.id != cmd.params.get("image_id") or not img.manifest:
        return None, "the appliance's image changed since the deploy began"
    sent = dict(
        line.split("=", 1) for line in (cmd.params or {}).get("arg", "").splitlines() if "=" in line
    )
    now = Manifest.from_json(img.manifest).sha256
    # a capture's whole sha256 is filled in after the image is ready: "" then a digest is no change
    if sent.get("sha256") and now != sent.get("sha256"):
        return None, f"image {img.name} changed since the deploy began"
    return app, ""
