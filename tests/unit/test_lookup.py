"""The one lookup (provisiond.lookup) and a job handler's scope (provisiond.agentjob.JobScope)."""

from __future__ import annotations

import pytest

from provisiond import appliances, lookup, resources, users
from provisiond import config as configmod
from provisiond.agentjob import JobScope
from provisiond.app import build_context
from provisiond.errors import NotFound
from provisiond.model import Appliance, Image, Job, Kernel, Storage, User
from tests.conftest import write_config


@pytest.fixture
def ctx(tmp_path):
    c = build_context(configmod.load(write_config(tmp_path)))
    c.db.migrate()
    with c.db.transaction() as s:
        res = resources.ensure(s, "52:54:00:10:00:01")
        s.add(Image(name="deb12", format="raw", size=1, state="ready"))
        s.add(Kernel(name="k6", kernel_path="kernels/k6/vmlinuz"))
        s.add(Storage(name="local", backend="file", path="/x", exporter="auto"))
        users.create(s, "ops", "correct horse battery", "operator", "test")
        s.flush()
        appliances.create(s, name="web1", resource=res, mode="sanboot", image="deb12")
    yield c
    c.db.dispose()


@pytest.mark.parametrize(
    ("model", "name", "missing"),
    [
        (Appliance, "web1", "appliance 'nope' not found; see `provisiond appliance list`"),
        (Image, "deb12", "image 'nope' not found; see `provisiond image list`"),
        (Kernel, "k6", "kernel 'nope' not found; see `provisiond kernel list`"),
        (Storage, "local", "storage 'nope' not found; see `provisiond storage list`"),
        (User, "ops", "user 'nope' not found"),
    ],
)
def test_find_by_name_or_id_and_one_message(ctx, model, name, missing):
    with ctx.db.reader() as s:
        obj = lookup.find(s, model, name)
        assert obj.name == name
        assert lookup.find(s, model, str(obj.id)) is obj
        assert lookup.find(s, model, obj.id) is obj
        with pytest.raises(NotFound) as err:
            lookup.find(s, model, "nope")
    assert err.value.message == missing
    assert err.value.field == lookup.KINDS[model].field


def test_appliance_of_a_job_by_object_or_id(ctx):
    with ctx.db.transaction() as s:
        app = lookup.find(s, Appliance, "web1")
        job = appliances.start(s, app)
        lone = Job(kind="resource.erase", state="queued", resource_id=app.resource_id)
        s.add(lone)
        s.flush()
        ids = job.id, lone.id, app.id
    with ctx.db.reader() as s:
        assert lookup.appliance_of(s, ids[0]).id == ids[2]
        assert lookup.appliance_of(s, s.get(Job, ids[0])).id == ids[2]
        assert lookup.appliance_of(s, ids[1]) is None  # a job without an appliance
        assert lookup.appliance_of(s, 999999) is None  # no such job
        assert lookup.appliance_of(s, None) is None


def test_job_scope_logs_progress_and_finds_its_objects(ctx):
    with ctx.db.transaction() as s:
        job_id = appliances.start(s, lookup.find(s, Appliance, "web1")).id
    scope = JobScope(ctx, job_id)
    scope.log("first line")
    scope.progress(total=100)
    scope.progress(done=40)
    with ctx.db.reader() as s:
        job = scope.job(s)
        assert job.log.splitlines()[-1] == "first line"
        assert (job.bytes_done, job.bytes_total) == (40, 100)
        assert scope.appliance(s).name == "web1"
        assert scope.resource(s).mac == "52:54:00:10:00:01"
