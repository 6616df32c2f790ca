"""Recovery rules, the instance lock and late agent results, on a real SQLite database.

Table-driven: who owns transient work and whether the owner's lease holds
decides whether a starting instance fails it, and with which reason. The
lock test takes the real flock twice in one process (flock is per open file,
so the second open conflicts exactly as a second process would).
"""

from __future__ import annotations

import datetime as dt
import os

import pytest
from sqlalchemy import select

from provisiond import config as configmod
from provisiond import instance, jobs, recovery, resources
from provisiond.chunks import ChunkEntry, Manifest
from provisiond.db import Database
from provisiond.model import Appliance, Event, Image, Instance, Job, Resource, utcnow

ME = "r1"
NOW = dt.datetime(2026, 12, 2, 12, 0, 0)


@pytest.fixture
def db(tmp_path):
    d = Database(f"sqlite:///{tmp_path / 'provisiond.db'}")
    d.migrate()
    yield d
    d.dispose()


def _lease(s, ident: str, expires_in: float) -> None:
    s.add(Instance(id=ident, pid=1, host="h", started_at=NOW, heartbeat_at=NOW,
                   expires_at=NOW + dt.timedelta(seconds=expires_in)))  # fmt: skip


def _work(s, owner, job_state="running", mac="52:54:00:00:00:01"):
    """A local deploy in flight: resource deploying, appliance starting, its job."""
    res = resources.ensure(s, mac)
    res.state, res.owner = "deploying", owner
    app = Appliance(name=f"a{mac[-2:]}", resource_id=res.id, mode="local", state="starting",
                    owner=owner)  # fmt: skip
    s.add(app)
    s.flush()
    job = Job(kind="appliance.start", state=job_state, appliance_id=app.id,
              resource_id=res.id, owner=owner)  # fmt: skip
    s.add(job)
    s.flush()
    return res.id, app.id, job.id


RESTARTED = ("daemon restarted during deploying", "daemon restarted during starting")
RACK2 = (
    "rack r2 stopped heartbeating during deploying",
    "rack r2 stopped heartbeating during starting",
)
# owner, lease of r2 (seconds from NOW; None: no row), job state -> (resource, appliance) reasons
CASES = [
    ("own leftovers", ME, None, "running", RESTARTED),
    ("other rack alive", "r2", 30, "running", None),
    ("other rack expired", "r2", -1, "running", RACK2),
    ("other rack never seen", "r2", None, "running", RACK2),
    ("unowned and queued: nobody started it", None, None, "queued", None),
    ("unowned and running: before owners existed", None, None, "running", RESTARTED),
]


@pytest.mark.parametrize(("owner", "lease", "job_state", "want"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_recovery_fails_only_orphaned_work(db, owner, lease, job_state, want):
    with db.transaction() as s:
        if lease is not None:
            _lease(s, "r2", lease)
        _lease(s, ME, 30)
        res_id, app_id, job_id = _work(s, owner, job_state)
    with db.transaction() as s:
        failed = recovery.recover(s, ME, NOW)
    with db.transaction() as s:
        res, app, job = s.get(Resource, res_id), s.get(Appliance, app_id), s.get(Job, job_id)
        if want is None:
            assert failed == []
            assert (res.state, app.state, job.state) == ("deploying", "starting", job_state)
        else:
            assert (res.state, res.state_reason) == ("failed", want[0])
            assert (app.state, app.state_reason) == ("failed", want[1])
            assert job.state == "failed" and job.outcome.endswith(f"during {job_state}")
            assert job.params["orphaned"] is True
            assert {f.kind for f in failed} == {"resource", "appliance", "job"}


def test_recovery_is_per_owner_on_one_database(db):
    with db.transaction() as s:
        _lease(s, "r2", 30)
        _lease(s, "r3", -5)
        mine = _work(s, ME, mac="52:54:00:00:00:01")
        alive = _work(s, "r2", mac="52:54:00:00:00:02")
        dead = _work(s, "r3", mac="52:54:00:00:00:03")
    with db.transaction() as s:
        recovery.recover(s, ME, NOW)
    with db.transaction() as s:
        states = {ids: s.get(Resource, ids[0]).state_reason for ids in (mine, alive, dead)}
    assert states == {
        mine: "daemon restarted during deploying",
        alive: "",
        dead: "rack r3 stopped heartbeating during deploying",
    }


def test_lease_register_renew_expire_and_alive(db, tmp_path):
    cfg = configmod.parse(f'instance = "r1"\nstate_dir = "{tmp_path}"\n[lease]\n'
                          "heartbeat_interval = 2\nexpiry = 3")  # fmt: skip
    with db.transaction() as s:
        row = instance.register(s, cfg, NOW)
        assert (row.pid, row.expires_at) == (os.getpid(), NOW + dt.timedelta(seconds=6))
        assert instance.alive(s, NOW + dt.timedelta(seconds=5)) == {"r1"}
        assert instance.alive(s, NOW + dt.timedelta(seconds=7)) == set()
        instance.renew(s, cfg)
        assert instance.alive(s) == {"r1"}
        instance.expire(s, cfg)
        assert instance.alive(s, utcnow() + dt.timedelta(microseconds=1)) == set()


def test_second_lock_on_the_same_state_is_refused_and_touches_nothing(tmp_path):
    cfg = configmod.parse(f'state_dir = "{tmp_path / "state"}"')
    first = instance.InstanceLock.acquire(cfg)
    try:
        lock_file = tmp_path / "state" / instance.LOCK_FILE
        assert lock_file.read_text() == f"{os.getpid()}\n"
        with pytest.raises(instance.AlreadyRunning) as err:
            instance.InstanceLock.acquire(cfg)
        assert f"provisiond is already running with this state (pid {os.getpid()})" in str(
            err.value
        )
        assert not (tmp_path / "state" / "provisiond.db").exists()
    finally:
        first.release()
    instance.InstanceLock.acquire(cfg).release()  # free again once released


def test_an_unusable_state_dir_says_so():
    cfg = configmod.parse('state_dir = "/proc/provisiond-none"')
    with pytest.raises(OSError, match="state_dir must be writable"):
        instance.InstanceLock.acquire(cfg)


def test_a_sqlite_file_outside_state_dir_is_locked_too(tmp_path):
    a = configmod.parse(f'state_dir = "{tmp_path / "a"}"\n'
                        f'database_url = "sqlite:///{tmp_path / "db" / "x.db"}"')  # fmt: skip
    b = configmod.parse(f'state_dir = "{tmp_path / "b"}"\n'
                        f'database_url = "sqlite:///{tmp_path / "db" / "x.db"}"')  # fmt: skip
    lock = instance.InstanceLock.acquire(a)
    try:
        with pytest.raises(instance.AlreadyRunning, match=r"x\.db\.lock is locked"):
            instance.InstanceLock.acquire(b)
    finally:
        lock.release()


# --- late results ---------------------------------------------------------------

MANIFEST = Manifest(size=4096, chunks=(ChunkEntry(0, "ab" * 32),), sha256="cd" * 32)
VERIFIED = b"wrote 1 chunks\ndeployed: 1 chunks written, each read back and sha256 verified\n"


def _deploy_in_flight(s, sha256: str = MANIFEST.sha256):
    res_id, app_id, job_id = _work(s, ME)
    img = Image(name="img", manifest=MANIFEST.to_json(), sha256=MANIFEST.sha256)
    s.add(img)
    s.flush()
    s.get(Appliance, app_id).image_id = img.id
    res = s.get(Resource, res_id)
    cmd = jobs.enqueue_command(s, res, "deploy", arg=f"disk=/dev/vda\nsha256={sha256}\n")
    cmd.params = {**cmd.params, "parent": job_id, "image_id": img.id}
    cmd.owner = ME
    jobs.next_command(s, res, ME)
    return res_id, app_id, cmd.id


def _late(db, cmd_id, code=0, output=VERIFIED):
    with db.transaction() as s:
        recovery.recover(s, ME)
    with db.transaction() as s:
        cmd = s.get(Job, cmd_id)
        jobs.complete_command(s, s.get(Resource, cmd.resource_id), cmd_id, code, output)
    with db.transaction() as s:
        late = select(Event).where(Event.action == "agent.late_result")
        return [e.detail for e in s.scalars(late)]


def test_late_verified_deploy_after_a_restart_is_adopted(db):
    with db.transaction() as s:
        res_id, app_id, cmd_id = _deploy_in_flight(s)
    events = _late(db, cmd_id)
    with db.transaction() as s:
        res, app, cmd = s.get(Resource, res_id), s.get(Appliance, app_id), s.get(Job, cmd_id)
        assert (res.state, app.state) == ("active", "active")
        assert "sha256 verified" in res.state_reason
        assert cmd.state == "failed" and cmd.params["late_exit_code"] == 0
        assert "late result, exit code 0" in cmd.log and "sha256 verified" in cmd.log
    assert len(events) == 1 and "adopted" in events[0] and "sha256 verified" in events[0]


LATE_KEPT = [
    ("the deploy failed on the agent too", 3, None, "only a successful deploy"),
    ("another job for the appliance since", 0, "retry", "has a newer job"),
    ("the image changed since", 0, "image", "changed since the deploy began"),
]


@pytest.mark.parametrize(("code", "change", "why"), [c[1:] for c in LATE_KEPT],
                         ids=[c[0] for c in LATE_KEPT])  # fmt: skip
def test_late_result_that_cannot_be_adopted_is_recorded_and_explained(db, code, change, why):
    with db.transaction() as s:
        res_id, app_id, cmd_id = _deploy_in_flight(
            s, sha256="ee" * 32 if change == "image" else MANIFEST.sha256
        )
    if change == "retry":
        with db.transaction() as s:
            recovery.recover(s, ME)
            s.add(Job(kind="appliance.stop", state="failed", appliance_id=app_id))
    events = _late(db, cmd_id, code)
    with db.transaction() as s:
        res = s.get(Resource, res_id)
        assert (res.state, s.get(Appliance, app_id).state) == ("failed", "failed")
        if code == 0:
            assert res.state_reason.startswith("daemon restarted during deploying; then the agent")
            assert why in res.state_reason
        else:  # a late failure only adds the event
            assert res.state_reason == "daemon restarted during deploying"
    assert len(events) == 1 and why in events[0] and f"exited {code}" in events[0]


def test_commands_are_owned_by_who_queued_them_or_who_handed_them_out(db):
    with db.transaction() as s:
        res = resources.ensure(s, "52:54:00:00:00:09")
        by_cli = jobs.enqueue_command(s, res, "run", arg="true")
        by_daemon = jobs.enqueue_command(s, res, "reboot")
        by_daemon.owner = "r2"
        assert by_cli.owner is None
        assert jobs.next_command(s, res, ME) is by_cli and by_cli.owner == ME
        assert jobs.next_command(s, res, ME) is by_daemon and by_daemon.owner == "r2"


def test_migration_0002_goes_down_and_up_again(db):
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import inspect

    from provisiond.db import MIGRATIONS

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = db.engine
    command.downgrade(cfg, "0001")
    assert "instance" not in inspect(db.engine).get_table_names()
    assert "owner" not in {c["name"] for c in inspect(db.engine).get_columns("job")}
    db.migrate()
    assert "instance" in inspect(db.engine).get_table_names()
    for table in ("resource", "appliance", "job"):
        assert "owner" in {c["name"] for c in inspect(db.engine).get_columns(table)}
