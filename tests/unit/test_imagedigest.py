"""provisiond.imagedigest: a captured image's whole sha256, computed after it is ready.

:func:`verify` against tampered manifests and tampered volumes (table-driven),
and :func:`ensure` / :class:`Backfill` on a real SQLite database: the sha256
lands on the image and in its manifest, a restart's sweep finds what is
pending, a volume that does not match marks the image failed.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import replace

import pytest
from sqlalchemy import select

from provisiond import chunks, imagedigest, images
from provisiond.imagedigest import VerifyError
from provisiond.model import Event, Image, Job
from tests.conftest import file_storage_world

CS = 4096
SIZE = 6 * CS + 700  # 7 chunk slots, a short tail
DATA = (0, 2, 3, 6)  # chunks 1, 4, 5 are zero


def _image() -> bytes:
    img = bytearray(SIZE)
    for i in DATA:
        end = min(SIZE, (i + 1) * CS)
        img[i * CS : end] = os.urandom(end - i * CS)
    return bytes(img)


def _manifest(img: bytes) -> chunks.Manifest:
    return chunks.scan(io.BytesIO(img), SIZE, CS)


def _flip(img: bytes, offset: int) -> bytes:
    return img[:offset] + bytes([img[offset] ^ 1]) + img[offset + 1 :]


def _entries(m: chunks.Manifest, fn) -> chunks.Manifest:
    return replace(m, chunks=tuple(fn(list(m.chunks))))


OTHER = "cd" * 32

# (what is changed, how: image -> image, manifest -> manifest, the error's words or None)
CASES = [
    ("nothing", lambda i: i, lambda m: m, None),
    ("no whole sha256 yet", lambda i: i, lambda m: replace(m, sha256=""), None),
    ("data chunk byte", lambda i: _flip(i, 2 * CS + 17), lambda m: m, "chunk 2: sha256"),
    ("tail byte", lambda i: _flip(i, SIZE - 1), lambda m: m, "chunk 6: sha256"),
    ("zero chunk written", lambda i: _flip(i, 4 * CS), lambda m: m, "chunk 4 holds data"),
    (
        "data chunk zeroed",
        lambda i: i[: 3 * CS] + bytes(CS) + i[4 * CS :],
        lambda m: m,
        "chunk 3 is zero",
    ),
    (
        "manifest sha256 of a chunk",
        lambda i: i,
        lambda m: _entries(
            m, lambda e: [replace(e[1], sha256=OTHER) if c is e[1] else c for c in e]
        ),
        "chunk 2: sha256",
    ),
    (
        "manifest drops a chunk",
        lambda i: i,
        lambda m: _entries(m, lambda e: e[:1] + e[2:]),
        "chunk 2 holds data",
    ),
    (
        "manifest lists a zero chunk",
        lambda i: i,
        lambda m: _entries(
            m, lambda e: sorted([*e, chunks.ChunkEntry(5, OTHER)], key=lambda c: c.index)
        ),
        "chunk 5 is zero",
    ),
    ("manifest whole sha256", lambda i: i, lambda m: replace(m, sha256=OTHER), "whole image"),
]


@pytest.mark.parametrize("what,volume,manifest,error", CASES, ids=[c[0] for c in CASES])
def test_verify_checks_every_chunk_and_returns_the_raw_sha256(what, volume, manifest, error):
    img = _image()
    m = manifest(_manifest(img))
    vol = volume(img)
    if error is None:
        assert imagedigest.verify(io.BytesIO(vol), m) == hashlib.sha256(img).hexdigest()
    else:
        with pytest.raises(VerifyError, match=error):
            imagedigest.verify(io.BytesIO(vol), m)


def test_verify_of_a_sparse_file_reads_holes_as_zero(tmp_path):
    img = _image()
    path = tmp_path / "sparse"
    with open(path, "wb") as fh:  # only the data chunks are written: the rest are holes
        fh.truncate(SIZE)
        for i in DATA:
            fh.seek(i * CS)
            fh.write(img[i * CS : (i + 1) * CS])
    with open(path, "rb") as fh:
        assert imagedigest.verify(fh, _manifest(img)) == hashlib.sha256(img).hexdigest()


@pytest.fixture
def world(tmp_path):
    yield from file_storage_world(tmp_path)


def _captured(ctx, manager, tmp_path, name: str, img: bytes) -> int:
    """An image as a tcp capture registers it: manifest listed, whole sha256 pending."""
    vol = tmp_path / f"image-{name}"
    vol.write_bytes(img)
    m = replace(_manifest(img), sha256="")
    with ctx.db.transaction() as s:
        job = Job(kind="image.capture", state="running", params={})
        s.add(job)
        s.flush()
        master = images.Master(name, "local", f"image-{name}", str(vol), SIZE, m.sha256,
                               m.to_json())  # fmt: skip
        return images.register(s, manager, job.id, master, "t", "image.captured", "").id


def test_backfill_fills_the_image_and_its_manifest(world, tmp_path):
    ctx, manager = world
    img = _image()
    image_id = _captured(ctx, manager, tmp_path, "cap", img)
    with ctx.db.reader() as s:
        assert s.get(Image, image_id).sha256 is None  # pending, the image is ready already
        assert s.get(Image, image_id).state == "ready"
    bf = imagedigest.Backfill(ctx.db)
    bf.submit(image_id)
    assert bf.idle(30)
    want = hashlib.sha256(img).hexdigest()
    with ctx.db.reader() as s:
        got = s.get(Image, image_id)
        assert (got.sha256, got.manifest["sha256"], got.state) == (want, want, "ready")
    assert imagedigest.ensure(ctx.db, image_id) == want  # now a lookup, no read


def test_sweep_after_a_restart_queues_only_pending_images(world, tmp_path):
    ctx, manager = world
    a = _captured(ctx, manager, tmp_path, "a", _image())
    b = _captured(ctx, manager, tmp_path, "b", _image())
    imagedigest.ensure(ctx.db, a)
    bf = imagedigest.Backfill(ctx.db)
    assert bf.sweep() == 1  # only b
    assert bf.idle(30)
    with ctx.db.reader() as s:
        assert (
            s.get(Image, b).sha256
            == hashlib.sha256((tmp_path / "image-b").read_bytes()).hexdigest()
        )
    assert imagedigest.Backfill(ctx.db).sweep() == 0


def test_a_volume_that_differs_from_its_manifest_fails_the_image(world, tmp_path):
    ctx, manager = world
    img = _image()
    image_id = _captured(ctx, manager, tmp_path, "bad", img)
    (tmp_path / "image-bad").write_bytes(_flip(img, 3 * CS + 5))
    with pytest.raises(VerifyError, match="chunk 3"):
        imagedigest.ensure(ctx.db, image_id)
    with ctx.db.reader() as s:
        got = s.get(Image, image_id)
        assert (got.sha256, got.state) == (None, "failed")
        ev = s.scalars(select(Event).where(Event.action == "image.verify_failed")).one()
        assert ev.target == "bad" and "chunk 3" in ev.detail


def test_a_remote_hasher_is_used_for_a_volume_elsewhere(world, tmp_path):
    ctx, manager = world
    image_id = _captured(ctx, manager, tmp_path, "far", _image())
    seen = []

    def hasher(path: str, size: int) -> str:
        seen.append((path, size))
        return "ef" * 32

    assert imagedigest.ensure(ctx.db, image_id, hasher) == "ef" * 32
    assert seen == [(str(tmp_path / "image-far"), SIZE)]


@pytest.mark.parametrize("tampered", [False, True])
def test_nc_deploy_of_a_fresh_capture_computes_the_sha256_on_the_spot(world, tmp_path, tampered):
    from provisiond import localdeploy
    from provisiond.jobrunner import JobFailed

    ctx, manager = world
    img = _image()
    image_id = _captured(ctx, manager, tmp_path, "fresh", img)
    if tampered:
        (tmp_path / "image-fresh").write_bytes(_flip(img, 6 * CS + 1))
    with ctx.db.transaction() as s:
        job = Job(kind="appliance.start", state="running", params={})
        s.add(job)
        s.flush()
        job_id = job.id
    m = replace(_manifest(img), sha256="")
    if tampered:
        with pytest.raises(JobFailed, match="cannot be verified: chunk 6"):
            localdeploy._with_whole_sha256(ctx.db, image_id, job_id, m)
        return
    got = localdeploy._with_whole_sha256(ctx.db, image_id, job_id, m)
    assert got.sha256 == hashlib.sha256(img).hexdigest()
    assert got.chunks == m.chunks
    with ctx.db.reader() as s:
        assert "computing it now" in (s.get(Job, job_id).log or "")
