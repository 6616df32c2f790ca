"""The agent channel's domain side: who is calling, who is alive, what to hand out.

Owns the rules behind ``/agent/v1`` that do not depend on how requests are
served (the asyncio server is :mod:`provisiond.agentd`, its views
:mod:`web.agent`):

* :func:`authenticate` — a bearer token resolves to (resource id, state) or
  to nothing; only states in :data:`resources.AGENT_STATES` are accepted.
* liveness — heartbeats and waiting long polls go to ``ctx.liveness``
  (:class:`provisiond.liveness.Liveness`, group-committed), not to the
  database row by row.
* :func:`register`, :func:`heartbeat`, :func:`next_command`,
  :func:`complete_command` — one short transaction each, run by the server
  in a bounded thread pool; they call :mod:`provisiond.resources` and
  :mod:`provisiond.jobs` for every rule.
* :func:`resources_with_commands` — one query: the resources that have a
  queued agent command (the server wakes their long polls with it).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from provisiond import jobs, racks, resources
from provisiond.db import Database
from provisiond.errors import Invalid
from provisiond.lifecycle import JobState as JS
from provisiond.lifecycle import ResourceState as RS
from provisiond.model import Job, Resource
from provisiond.security import hash_token

if TYPE_CHECKING:
    from provisiond.context import Context


@dataclass(frozen=True)
class Caller:
    """An authenticated agent: its resource and that resource's state."""

    resource_id: int
    state: str


def token_digest(authorization: str) -> str | None:
    """The digest of the token in an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization.startswith("Bearer ") or len(authorization) < 20:
        return None
    return hash_token(authorization[7:].strip())


def authenticate(db: Database, authorization: str) -> Caller | None:
    """The caller behind an ``Authorization: Bearer <token>`` header, or None."""
    digest = token_digest(authorization)
    if digest is None:
        return None
    return lookup(db, digest)


def lookup(db: Database, digest: str) -> Caller | None:
    """The caller whose token has this digest (a read), or None."""
    with db.reader() as s:
        row = s.execute(
            select(Resource.id, Resource.state).where(Resource.agent_token_hash == digest)
        ).first()
    if row is None or row.state not in resources.AGENT_STATES:
        return None
    return Caller(row.id, row.state)


def register(
    ctx: Context, resource_id: int, body: Any, source_ip: str | None = None
) -> dict[str, Any]:
    """Apply a registration; the answer the agent gets (JSON object).

    ``source_ip`` is the address the request came from: the resource's address
    is that, never what the body claims (issue 11).
    """
    if not isinstance(body, dict):
        raise Invalid("register: body must be a JSON object", field="body")
    with ctx.db.transaction() as s:
        res = s.get(Resource, resource_id)
        resources.register(s, res, body, source_ip)
        racks.adopt(res, ctx.config.instance)  # this rack reaches the machine now
        out = {"resource": res.display_name, "state": res.state}
    ctx.liveness.touch(resource_id)
    ctx.inventory.request_refresh()
    return {**out, "heartbeat_interval": ctx.config.agent.heartbeat_interval}


def heartbeat_needs_db(caller: Caller) -> bool:
    """Only a heartbeat that brings a resource back from offline is a transaction."""
    return caller.state == RS.OFFLINE


def heartbeat(ctx: Context, caller: Caller) -> None:
    """Record a heartbeat in memory; offline -> idle in the database."""
    ctx.liveness.touch(caller.resource_id)
    if heartbeat_needs_db(caller):
        with ctx.db.transaction() as s:
            res = s.get(Resource, caller.resource_id)
            resources.heartbeat(s, res)
            racks.adopt(res, ctx.config.instance)
        ctx.inventory.request_refresh()


def next_command(ctx: Context, resource_id: int) -> str | None:
    """The next command for the agent as ``id= kind= arg=`` lines, or None.

    Most polls find nothing: that answer comes from a read, without a write
    transaction (which on SQLite would take this process's writer turn).
    """
    if not has_command(ctx.db, resource_id):
        return None
    with ctx.db.transaction() as s:
        job = jobs.next_command(s, s.get(Resource, resource_id), owner=ctx.config.instance)
        if job is None:
            return None
        lines = [f"id={job.id}", f"kind={job.kind.removeprefix('agent.')}"]
        arg = job.params.get("arg", "")
        if arg:
            lines.append("arg=" + base64.b64encode(arg.encode()).decode())
        return "\n".join(lines) + "\n"


def complete_command(
    ctx: Context, resource_id: int, job_id: int, exit_code: int, output: bytes
) -> None:
    with ctx.db.transaction() as s:
        jobs.complete_command(s, s.get(Resource, resource_id), job_id, exit_code, output)
    ctx.ring()


def _queued():
    return select(Job.resource_id).where(Job.state == JS.QUEUED, Job.kind.like("agent.%"))


def has_command(db: Database, resource_id: int) -> bool:
    """True when ``resource_id`` has a queued agent command, or a running one (a read).

    A running one may be for this poll again: :func:`provisiond.jobs.next_command`
    hands a command out again when the agent polls without its result.
    """
    with db.reader() as s:
        q = select(Job.resource_id).where(
            Job.state.in_((JS.QUEUED, JS.RUNNING)), Job.kind.like("agent.%")
        )
        return s.scalars(q.where(Job.resource_id == resource_id).limit(1)).first() is not None


def resources_with_commands(db: Database) -> set[int]:
    """Ids of resources that have a queued agent command (one query)."""
    with db.reader() as s:
        return set(s.scalars(_queued().distinct()))
