"""Pickup deadline of agent commands: the rule (provisiond.pickup) and wait_command using it."""

from __future__ import annotations

import datetime as dt

import pytest

from provisiond import appliances, jobs, pickup, resources
from provisiond import config as configmod
from provisiond.agentjob import fail_if_not_picked_up, start_command, wait_command
from provisiond.app import build_context
from provisiond.config import ConfigError
from provisiond.jobrunner import JobFailed
from provisiond.lifecycle import JobState as JS
from provisiond.model import Image, Job, Resource, utcnow
from tests.conftest import write_config

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)
B = pickup.Bounds(pickup=300, boot=900, heartbeat_timeout=60)


def s(n: float) -> dt.timedelta:
    return dt.timedelta(seconds=n)


def w(**kv) -> pickup.Waiting:
    base = {"machine": "r-a", "command_id": 7, "kind": "deploy", "queued_at": T0,
            "heard_at": T0 - s(5)}  # fmt: skip
    return pickup.Waiting(**{**base, **kv})


@pytest.mark.parametrize(
    ("case", "waiting", "after", "bound"),
    [
        ("alive agent, within the bound", w(), 299, None),
        ("alive agent, bound reached", w(), 300, "pickup_timeout"),
        ("heard exactly heartbeat_timeout before", w(heard_at=T0 - s(60)), 300, "pickup_timeout"),
        ("silent agent: boot bound, not yet", w(heard_at=T0 - s(61)), 899, None),
        ("silent agent: boot bound reached", w(heard_at=T0 - s(61)), 900, "pickup_boot_timeout"),
        ("never heard: boot bound", w(heard_at=None), 900, "pickup_boot_timeout"),
        ("another command runs: never overdue", w(busy=True), 10_000, None),
        ("clock from the previous command's end", w(free_since=T0 + s(200)), 450, None),
        ("... and past it", w(free_since=T0 + s(200)), 500, "pickup_timeout"),
        ("an old previous command does not matter", w(free_since=T0 - s(999)), 300,
         "pickup_timeout"),
    ],
)  # fmt: skip
def test_overdue(case, waiting, after, bound):
    reason = pickup.overdue(waiting, T0 + s(after), B)
    if bound is None:
        assert reason is None, case
        return
    assert reason is not None, case
    assert reason.startswith("r-a did not pick up its deploy command 7 within "), reason
    assert f"[agent] {bound}" in reason
    assert f"within {B.pickup if bound == 'pickup_timeout' else B.boot} s" in reason
    if waiting.heard_at is None:
        assert "its agent was never heard" in reason
    else:
        assert f"last heard {waiting.heard_at:%Y-%m-%d %H:%M:%S} UTC" in reason


@pytest.mark.parametrize(
    ("agent", "problem"),
    [({"pickup_timeout": 0}, "pickup_timeout"), ({"pickup_boot_timeout": '"x"'}, "pickup_boot")],
)
def test_config_refuses_bad_bounds(tmp_path, agent, problem):
    with pytest.raises(ConfigError) as err:
        configmod.load(write_config(tmp_path, agent=agent))
    assert problem in str(err.value)


def test_config_defaults_and_values(tmp_path):
    cfg = configmod.load(write_config(tmp_path))
    assert (cfg.agent.pickup_timeout, cfg.agent.pickup_boot_timeout) == (300, 900)
    cfg = configmod.load(write_config(tmp_path, agent={"pickup_timeout": 7}))
    assert cfg.agent.pickup_timeout == 7


@pytest.fixture
def ctx(tmp_path):
    c = build_context(configmod.load(write_config(
        tmp_path, agent={"pickup_timeout": 5, "pickup_boot_timeout": 8})))  # fmt: skip
    c.db.migrate()
    with c.db.transaction() as s:
        res = resources.ensure(s, "52:54:00:10:00:01")
        res.last_heartbeat = utcnow()
        s.add(Image(name="deb12", format="raw", size=1, state="ready"))
        s.flush()
        app = appliances.create(s, name="web1", resource=res, mode="sanboot", image="deb12")
        job = appliances.start(s, app)
        jobs.transition(job, JS.RUNNING)
        ids = (job.id, res.id)
    yield c, ids
    c.db.dispose()


def _age(c, cmd_id: int, seconds: float) -> None:
    with c.db.transaction() as s:
        s.get(Job, cmd_id).created_at = utcnow() - s_(seconds)


def s_(n: float) -> dt.timedelta:
    return dt.timedelta(seconds=n)


def test_wait_command_fails_a_command_never_picked_up(ctx):
    c, (job_id, res_id) = ctx
    cmd_id = start_command(c, job_id, res_id, "deploy", "disk=/dev/vda\n")
    _age(c, cmd_id, 4)  # queued 4 s ago; the bound is 5 s
    with pytest.raises(JobFailed) as err:
        wait_command(c, job_id, cmd_id, timeout=30)
    assert "r-525400100001 did not pick up its deploy command" in str(err.value)
    assert "within 5 s" in str(err.value)
    with c.db.reader() as s:
        cmd = s.get(Job, cmd_id)
        assert cmd.state == "failed" and cmd.outcome == str(err.value)
        assert cmd.started_at is None


def test_a_picked_up_command_is_not_failed(ctx):
    c, (job_id, res_id) = ctx
    cmd_id = start_command(c, job_id, res_id, "deploy", "")
    _age(c, cmd_id, 60)
    with c.db.transaction() as s:
        got = jobs.next_command(s, s.get(Resource, res_id))
        assert got.id == cmd_id
    assert fail_if_not_picked_up(c, cmd_id) is None
    with c.db.reader() as s:
        assert s.get(Job, cmd_id).state == "running"


def test_a_silent_machine_gets_the_boot_bound_and_a_busy_one_none(ctx):
    c, (job_id, res_id) = ctx
    with c.db.transaction() as s:
        s.get(Resource, res_id).last_heartbeat = utcnow() - s_(3600)
        other = jobs.enqueue_command(s, s.get(Resource, res_id), "run", "sleep 1000")
        jobs.transition(other, JS.RUNNING)
        other_id = other.id
    cmd_id = start_command(c, job_id, res_id, "deploy", "")
    _age(c, cmd_id, 7)
    assert fail_if_not_picked_up(c, cmd_id) is None  # the agent runs another command
    with c.db.transaction() as s:
        jobs.transition(s.get(Job, other_id), JS.SUCCEEDED, "exit code 0")
        s.get(Job, other_id).finished_at = utcnow() - s_(7)
    assert fail_if_not_picked_up(c, cmd_id) is None  # 7 s < the boot bound of 8 s
    _age(c, cmd_id, 9)
    with c.db.transaction() as s:
        s.get(Job, other_id).finished_at = utcnow() - s_(9)
    reason = fail_if_not_picked_up(c, cmd_id)
    assert reason and "within 8 s" in reason and "pickup_boot_timeout" in reason
