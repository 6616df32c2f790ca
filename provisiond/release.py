"""Release and erase: give a machine back to the idle pool, disks wiped on request.

Owns :func:`release` (behind ``provisiond resource release R [--erase
quick|full]`` and the API) and the ``resource.erase`` job handler.

* No erase: the resource goes straight back to ``idle``.
* ``--erase quick|full``: the resource is ``releasing`` while the agent
  command ``erase`` runs; ``quick`` wipes the partition tables (MBR and GPT:
  the first and the last MiB of each disk, which also kills most file-system
  and RAID signatures), ``full`` first tries ``blkdiscard`` (only trusted
  when the device reads back zeros afterwards) and otherwise writes zeros
  over the whole disk, with progress. Success → ``idle``; failure →
  ``failed`` with the agent's reason.

A resource that an appliance still holds (starting, active, stopping) is
refused: stop the appliance first. Erase needs the agent to run (the machine
booted into PXE): a machine booted from its disk must be power-cycled first.
"""

from __future__ import annotations

from sqlalchemy import select

from provisiond import events, resources
from provisiond.agentjob import JobScope, cancel_command, encode_arg, start_command, wait_command
from provisiond.context import Context
from provisiond.errors import Conflict, Invalid
from provisiond.hardware import InventoryView
from provisiond.jobrunner import JobFailed
from provisiond.lifecycle import ApplianceState as AS
from provisiond.lifecycle import JobState as JS
from provisiond.lifecycle import ResourceState as RS
from provisiond.model import Appliance, Job, Resource
from provisiond.modes import EraseMode

ERASE_MODES = tuple(m.value for m in EraseMode)
ERASE_TIMEOUT = 24 * 3600


def release(session, res: Resource, erase: str | None, actor: str = "cli") -> Job | None:
    """Back to idle now (no erase) or queue a ``resource.erase`` job; returns the job."""
    if erase is not None and erase not in ERASE_MODES:
        raise Invalid(f"erase mode {erase!r}: use {' or '.join(ERASE_MODES)}", field="erase")
    app = session.scalars(
        select(Appliance).where(
            Appliance.resource_id == res.id,
            Appliance.state.in_((AS.STARTING, AS.ACTIVE, AS.STOPPING)),
        )
    ).first()
    if app is not None:
        raise Conflict(
            f"resource {res.display_name} belongs to appliance '{app.name}' "
            f"({app.state}); stop it first (`provisiond appliance stop {app.name}`)"
        )
    if erase is None:
        if res.state != RS.IDLE:
            resources.set_state(session, res, RS.IDLE, "released", actor=actor)
        events.record(session, actor, "resource.released", res.display_name, "")
        return None
    if res.state not in resources.AGENT_STATES or not res.agent_token_hash:
        raise Conflict(
            f"resource {res.display_name} is {res.state} and runs no agent; "
            "power-cycle it into PXE before erasing its disks"
        )
    busy = session.scalars(
        select(Job.id).where(
            Job.resource_id == res.id,
            Job.kind == "resource.erase",
            Job.state.in_((JS.QUEUED, JS.RUNNING)),
        )
    ).first()
    if busy:
        raise Conflict(f"resource {res.display_name} is already being erased (job {busy})")
    resources.set_state(session, res, RS.RELEASING, f"erase {erase}", actor=actor)
    job = Job(kind="resource.erase", state=JS.QUEUED, resource_id=res.id, params={"mode": erase})
    session.add(job)
    session.flush()
    events.record(session, actor, "resource.erase", res.display_name, erase)
    return job


class EraseJob:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def run(self, job_id: int) -> str:
        db, scope = self.ctx.db, JobScope(self.ctx, job_id)
        with db.reader() as s:
            mode, res = scope.job(s).params["mode"], scope.resource(s)
            res_id, res_name = res.id, res.display_name
            disks = InventoryView.of(res.inventory).disk_paths
        if not disks:
            raise JobFailed(f"resource {res_name} reported no disks; nothing to erase")
        arg = encode_arg(mode=mode, disks=",".join(disks))
        cmd_id = start_command(self.ctx, job_id, res_id, "erase", arg)
        scope.log(f"asked the agent of {res_name} to erase {', '.join(disks)} ({mode})")
        last = wait_command(self.ctx, job_id, cmd_id, ERASE_TIMEOUT)
        scope.log(f"agent: {last}")
        with db.transaction() as s:
            res = s.get(Resource, res_id)
            resources.set_state(s, res, RS.IDLE, f"erased ({mode})")
        self.ctx.inventory.refresh()
        return f"{res_name}: {', '.join(disks)} erased ({mode}); idle"

    def fail(self, job_id: int, reason: str) -> None:
        cancel_command(self.ctx.db, job_id, reason)
        with self.ctx.db.transaction() as s:
            res = JobScope(self.ctx, job_id).resource(s)
            if res is not None and res.state == RS.RELEASING:
                resources.set_state(s, res, RS.FAILED, reason)
