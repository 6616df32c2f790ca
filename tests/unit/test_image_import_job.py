"""Image import is a job the daemon's job runner runs (issue 14, 2.4).

A real Flask app on a real SQLite file, a file storage and the real
:class:`provisiond.jobrunner.JobRunner` with the :class:`provisiond.images.ImportJob`
handler the daemon registers: the API only queues the import; nothing is
read or registered until the runner claims the job; the runner fails it
with the reason (and the image is not registered), and a cancelled import
is never run.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from sqlalchemy import select

from provisiond import config as configmod
from provisiond import images, lookup, users
from provisiond.app import build_context
from provisiond.jobrunner import JobRunner
from provisiond.model import Image, Job, User
from provisiond.storages import StorageManager
from tests.conftest import write_config
from web import create_app


@pytest.fixture
def world(tmp_path):
    (tmp_path / "imports").mkdir()
    (tmp_path / "volumes").mkdir(mode=0o700)  # the daemon's storage service makes it
    path = write_config(tmp_path)
    path.write_text(
        path.read_text()
        + f'[images]\nimport_dirs = ["{tmp_path / "imports"}"]\n'
        + 'allow_networks = ["127.0.0.0/8"]\n'
        + f'[[storage]]\nname = "local"\nbackend = "file"\npath = "{tmp_path / "volumes"}"\n'
    )
    cfg = configmod.load(path)
    ctx = build_context(cfg)
    ctx.db.migrate()
    with ctx.db.transaction() as s:
        users.create(s, "admin", "correct horse battery", "admin", "test")
        _, secret = users.create_token(s, lookup.find(s, User, "admin"), "t", "test")
    client = create_app(ctx).test_client()

    def api(method: str, path: str, **kw):
        headers = {"Authorization": f"Bearer {secret}"}
        return client.open("/api/v1" + path, method=method, headers=headers, **kw)

    runner = JobRunner(ctx.db, {images.IMPORT: images.ImportJob(ctx.db, StorageManager(cfg))},
                       interval=0.05)  # fmt: skip
    yield ctx, api, runner, tmp_path / "imports"
    runner.stop()
    ctx.db.dispose()


def _job(ctx, job_id: int) -> Job:
    with ctx.db.reader() as s:
        job = s.get(Job, job_id)
        s.expunge(job)
        return job


def _wait(ctx, job_id: int, timeout: float = 30) -> Job:
    deadline = time.monotonic() + timeout
    while (job := _job(ctx, job_id)).state in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job_id} still {job.state}"
        time.sleep(0.05)
    return job


def _images(ctx) -> list[str]:
    with ctx.db.reader() as s:
        return list(s.scalars(select(Image.name)))


def test_the_api_queues_and_the_runner_imports(world):
    ctx, api, runner, imports = world
    data = os.urandom(64 * 1024) + b"\0" * 64 * 1024
    (imports / "disk.raw").write_bytes(data)
    r = api("POST", "/images", json={"name": "disk", "source": str(imports / "disk.raw")})
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["id"]
    time.sleep(0.3)  # no runner yet: nothing happens
    job = _job(ctx, job_id)
    assert (job.kind, job.state, job.bytes_done) == ("image.import", "queued", 0)
    assert _images(ctx) == []
    runner.start()
    job = _wait(ctx, job_id)
    assert job.state == "succeeded", job.outcome
    assert job.bytes_done == job.bytes_total == len(data)
    assert hashlib.sha256(data).hexdigest() in job.outcome and job.outcome in job.log
    assert _images(ctx) == ["disk"]
    with ctx.db.reader() as s:
        assert s.get(Image, job.image_id).name == "disk"


def test_a_failing_import_fails_its_job_with_the_reason(world):
    ctx, api, runner, imports = world
    (imports / "gone.raw").write_bytes(b"x" * 4096)
    r = api("POST", "/images", json={"name": "gone", "source": str(imports / "gone.raw")})
    assert r.status_code == 202, r.get_json()
    (imports / "gone.raw").unlink()  # vanishes before the runner reads it
    runner.start()
    job = _wait(ctx, r.get_json()["id"])
    assert job.state == "failed" and "gone.raw" in job.outcome, job.outcome
    assert _images(ctx) == []
    # refused at once: nothing queued
    with ctx.db.reader() as s:
        before = s.scalar(select(Job.id).order_by(Job.id.desc()).limit(1))
    bad = api("POST", "/images", json={"name": "shadow", "source": "/etc/shadow"})
    assert bad.status_code == 400 and bad.get_json()["field"] == "source"
    with ctx.db.reader() as s:
        assert s.scalar(select(Job.id).order_by(Job.id.desc()).limit(1)) == before


def test_a_cancelled_import_is_never_run(world):
    ctx, api, runner, imports = world
    (imports / "disk.raw").write_bytes(b"y" * 8192)
    r = api("POST", "/images", json={"name": "later", "source": str(imports / "disk.raw")})
    job_id = r.get_json()["id"]
    assert api("POST", f"/jobs/{job_id}/cancel").status_code == 200
    runner.start()
    time.sleep(0.5)
    job = _job(ctx, job_id)
    assert job.state == "cancelled" and job.bytes_done == 0
    assert _images(ctx) == []


# --- a URL's password is kept in memory only while its job is queued or running --------

PASSWORD = "hunter2-sekrit"


@pytest.fixture
def basic_auth_server():
    """A real HTTP server on loopback that serves one disk only with user:PASSWORD."""
    import base64
    import http.server
    import threading

    data = os.urandom(32 * 1024)
    want = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.headers.get("Authorization") != want:
                self.send_response(401)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://user:{PASSWORD}@127.0.0.1:{srv.server_address[1]}/disk.raw", data
    srv.shutdown()
    srv.server_close()


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://user:{PASSWORD}@127.0.0.1:{port}/disk.raw"


@pytest.mark.parametrize("end", ["succeeded", "failed", "cancelled"])
def test_an_import_password_is_forgotten_when_its_job_ends(world, basic_auth_server, end):
    ctx, api, runner, _ = world
    url, data = basic_auth_server
    source = _closed_port_url() if end == "failed" else url
    r = api("POST", "/images", json={"name": f"pw-{end}", "source": source})
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["id"]
    assert PASSWORD not in str(r.get_json())
    assert images.SOURCES.held() == [job_id]  # queued: the runner will need it
    if end == "cancelled":
        assert api("POST", f"/jobs/{job_id}/cancel").status_code == 200
    runner.start()
    job = _wait(ctx, job_id) if end != "cancelled" else _job(ctx, job_id)
    assert job.state == end, job.outcome
    assert job_id not in images.SOURCES.held()
    if end == "succeeded":
        assert hashlib.sha256(data).hexdigest() in job.outcome
    with ctx.db.reader() as s:
        row = s.get(Job, job_id)
        assert PASSWORD not in f"{row.params} {row.outcome} {row.log}"


def test_a_source_of_a_job_ended_by_another_instance_is_pruned(world):
    ctx, api, _runner, _ = world
    r = api("POST", "/images", json={"name": "elsewhere", "source": _closed_port_url()})
    job_id = r.get_json()["id"]
    with ctx.db.transaction() as s:  # another instance cancels it: no hook runs here
        s.get(Job, job_id).state = "cancelled"
    with ctx.db.reader() as s:
        images.SOURCES.prune(s)  # too fresh: may be another request's uncommitted job
        assert job_id in images.SOURCES.held()
        images.SOURCES.prune(s, settle=0)
    assert job_id not in images.SOURCES.held()
