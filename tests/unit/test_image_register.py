"""The one image-registration path (provisiond.images.register), shared by import and capture."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from provisiond import images
from provisiond.errors import Conflict, Invalid
from provisiond.model import Event, Image, Job, Volume
from tests.conftest import file_storage_world


@pytest.fixture
def world(tmp_path):
    yield from file_storage_world(tmp_path)


def _job(ctx, kind: str) -> int:
    with ctx.db.transaction() as s:
        job = Job(kind=kind, state="running", params={})
        s.add(job)
        s.flush()
        return job.id


@pytest.mark.parametrize(
    ("kind", "action", "manifest"),
    [("image.import", "image.imported", None), ("image.capture", "image.captured", '{"m": 1}')],
)
def test_register_makes_volume_image_job_link_and_event(world, kind, action, manifest):
    ctx, manager = world
    job_id = _job(ctx, kind)
    master = images.Master("deb12", "local", images.master_volume("deb12"), "/v/image-deb12",
                           4096, "ab" * 32, manifest)  # fmt: skip
    with ctx.db.transaction() as s:
        images.register(s, manager, job_id, master, "tester", action, "detail")
    with ctx.db.reader() as s:
        img = s.scalars(select(Image)).one()
        vol = s.get(Volume, img.volume_id)
        job = s.get(Job, job_id)
        ev = s.scalars(select(Event).where(Event.action == action)).one()
        assert (img.name, img.state, img.size, img.sha256, img.manifest) == (
            "deb12", "ready", 4096, "ab" * 32, manifest)  # fmt: skip
        assert (vol.name, vol.path, vol.size, vol.storage.name) == (
            "image-deb12", "/v/image-deb12", 4096, "local")  # fmt: skip
        assert (job.image_id, job.bytes_done, job.bytes_total) == (img.id, 4096, 4096)
        assert (ev.actor, ev.target, ev.detail) == ("tester", "deb12", "detail")


@pytest.mark.parametrize(("name", "error"), [("deb12", Conflict), ("bad name", Invalid)])
def test_a_taken_or_bad_name_registers_nothing(world, name, error):
    ctx, manager = world
    first = images.Master("deb12", "local", "image-deb12", "/v/a", 1, "00" * 32)
    with ctx.db.transaction() as s:
        images.register(s, manager, _job(ctx, "image.import"), first, "t", "image.imported", "")
    job_id = _job(ctx, "image.capture")
    second = images.Master(name, "local", "v2", "/v/b", 2, "11" * 32)
    with pytest.raises(error), ctx.db.transaction() as s:
        images.register(s, manager, job_id, second, "t", "image.captured", "")
    with ctx.db.reader() as s:
        assert s.scalars(select(Image.name)).all() == ["deb12"]
        assert s.scalars(select(Volume.name)).all() == ["image-deb12"]
        assert s.get(Job, job_id).image_id is None
