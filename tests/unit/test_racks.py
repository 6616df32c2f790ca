"""Racks on one database: who may claim a job, and what a rack's expired lease changes.

Table-driven on a real SQLite database: the owner of a job's machine and
that owner's lease decide whether instance ``r1`` claims the job; a running
instance's sweep puts an expired rack's machines offline with the reason and
fails its transient work, and touches nothing of live racks or its own.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from provisiond import racks, resources
from provisiond.db import Database
from provisiond.jobrunner import JobRunner
from provisiond.model import Appliance, Event, Instance, Job, Resource, utcnow

ME = "r1"


@pytest.fixture
def db(tmp_path):
    d = Database(f"sqlite:///{tmp_path / 'provisiond.db'}")
    d.migrate()
    yield d
    d.dispose()


def _lease(s, ident: str, expires_in: float) -> None:
    now = utcnow()
    s.add(Instance(id=ident, pid=1, host="h", started_at=now, heartbeat_at=now,
                   expires_at=now + dt.timedelta(seconds=expires_in)))  # fmt: skip


def _resource(s, mac: str, owner: str | None, state: str = "idle") -> Resource:
    res = resources.ensure(s, mac)
    res.state, res.owner = state, owner
    s.flush()
    return res


# owner of the job's machine -> does r1 claim it
CLAIMS = [
    ("no machine", "none", True),
    ("unowned machine", None, True),
    ("r1's machine", ME, True),
    ("machine of a live rack", "r2", False),
    ("machine of an expired rack", "r3", True),
]


class _Nop:
    def run(self, job_id: int) -> str:
        return "ok"

    def fail(self, job_id: int, reason: str) -> None:
        pass


@pytest.mark.parametrize(("owner", "claimed"), [c[1:] for c in CLAIMS],
                         ids=[c[0] for c in CLAIMS])  # fmt: skip
def test_a_runner_claims_only_jobs_of_machines_its_rack_reaches(db, owner, claimed):
    with db.transaction() as s:
        _lease(s, ME, 30)
        _lease(s, "r2", 30)
        _lease(s, "r3", -1)
        res_id = None if owner == "none" else _resource(s, "52:54:00:00:00:01", owner).id
        job = Job(kind="resource.erase", state="queued", resource_id=res_id)
        s.add(job)
        s.flush()
        job_id = job.id
    runner = JobRunner(db, {"resource.erase": _Nop()}, owner=ME)
    try:
        assert runner.claim() == ([job_id] if claimed else [])
        assert runner.claim() == []  # claimed once, never twice
    finally:
        runner.stop()
    with db.transaction() as s:
        job = s.get(Job, job_id)
        assert (job.state, job.owner) == (("running", ME) if claimed else ("queued", None))
        if claimed and res_id is not None:
            assert s.get(Resource, res_id).owner == ME  # the rack that runs it owns it now


def test_two_runners_claim_one_job_once(db):
    with db.transaction() as s:
        s.add(Job(kind="resource.erase", state="queued"))
    a = JobRunner(db, {"resource.erase": _Nop()}, owner="r1")
    b = JobRunner(db, {"resource.erase": _Nop()}, owner="r2")
    try:
        assert sorted([*a.claim(), *b.claim()]) == [1]
    finally:
        a.stop()
        b.stop()


def test_sweep_puts_an_expired_racks_machines_offline_and_fails_its_work(db):
    with db.transaction() as s:
        _lease(s, ME, 30)
        _lease(s, "r2", 30)
        _lease(s, "r3", -2)
        mine = _resource(s, "52:54:00:00:00:01", ME).id
        live = _resource(s, "52:54:00:00:00:02", "r2").id
        dead = _resource(s, "52:54:00:00:00:03", "r3").id
        dead_active = _resource(s, "52:54:00:00:00:04", "r3", "active").id
        deploying = _resource(s, "52:54:00:00:00:05", "r3", "deploying")
        app = Appliance(name="a5", resource_id=deploying.id, mode="local", state="starting",
                        owner="r3")  # fmt: skip
        s.add(app)
        s.flush()
        s.add(Job(kind="appliance.start", state="running", appliance_id=app.id,
                  resource_id=deploying.id, owner="r3"))  # fmt: skip
        mine_deploying = _resource(s, "52:54:00:00:00:06", ME, "deploying").id
        deploying_id, app_id = deploying.id, app.id
        expired_at = s.get(Instance, "r3").expires_at
    with db.transaction() as s:
        changed = racks.sweep_expired(s, ME)
    assert len(changed) == 4, changed  # the idle machine; job, appliance, deploying machine
    with db.transaction() as s:
        state = {rid: (r.state, r.state_reason) for rid in (mine, live, dead, dead_active,
                 deploying_id, mine_deploying) for r in [s.get(Resource, rid)]}  # fmt: skip
        assert state[mine] == ("idle", "")
        assert state[live] == ("idle", "")
        assert state[dead] == ("offline", racks.offline_reason("r3", expired_at))
        assert "rack r3 stopped heartbeating" in state[dead][1]
        assert state[dead_active] == ("active", "")  # booted from its disk: no agent to lose
        assert state[deploying_id] == ("failed", "rack r3 stopped heartbeating during deploying")
        assert state[mine_deploying] == ("deploying", "")  # this instance runs it
        assert s.get(Appliance, app_id).state == "failed"
        events = s.scalars(select(Event.detail).where(Event.action == "resource.state")).all()
        assert any("idle -> offline: rack r3 stopped heartbeating" in e for e in events)
    with db.transaction() as s:  # a second sweep finds nothing more to do
        assert racks.sweep_expired(s, ME) == []


def test_sweep_does_nothing_while_every_lease_holds(db):
    with db.transaction() as s:
        _lease(s, ME, 30)
        _lease(s, "r2", 30)
        _resource(s, "52:54:00:00:00:02", "r2")
    with db.transaction() as s:
        assert racks.sweep_expired(s, ME) == []
