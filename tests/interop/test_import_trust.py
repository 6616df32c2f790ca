"""Issue 11, findings 3, 4 and 12, replayed against a real daemon over HTTP.

An operator tried to import host files (``/etc/shadow``, the daemon's SSH key,
its session secret, its database), internal URLs (loopback, a redirect to
loopback) and a qcow2 whose backing file is the SSH key. Every one of them
must be refused with a 400 naming the rule, nothing imported; what is allowed
(a file in an import folder, a URL the allow-list admits) still works, the
volume is 0600, ``state_dir`` 0700, the database 0600, and a password in a
URL appears nowhere: not in the API, the UI, the events or the log.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import signal
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from storage.exporters import TgtDaemon
from tests.conftest import free_port
from tests.daemonlab import Daemon, free_control_port
from tests.webclient import Browser, init_and_start, kill

pytestmark = pytest.mark.interop
SECRET = "hunter2-url-password"


def _config(tmp: Path, port: int, control_port: int, extra: str = "") -> Path:
    text = f"""
address = "127.0.0.1"
http_port = {port}
state_dir = "{tmp / "state"}"
[services]
dhcp = false
tftp = false
dns = false
[images]
import_dirs = ["{tmp / "imports"}"]
allow_networks = ["127.0.0.2/32"]
[iscsi]
tgt_control_port = {control_port}
[[storage]]
name = "local"
backend = "file"
path = "{tmp / "volumes"}"
{extra}
"""
    path = tmp / "provisiond.toml"
    path.write_text(text)
    return path


class _Served(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; /redirect sends a 302 to the URL in the query string."""

    seen_auth: list[str] = []

    def do_GET(self):
        _Served.seen_auth.append(self.headers.get("Authorization", ""))
        if self.path.startswith("/redirect?"):
            self.send_response(302)
            self.send_header("Location", self.path.split("?", 1)[1])
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *a):
        pass


@pytest.fixture
def web(tmp_path):
    (tmp_path / "imports").mkdir()
    (tmp_path / "imports" / "disk.raw").write_bytes(os.urandom(4096) + b"\0" * 4096)
    control_port = free_control_port()  # never the system's tgtd on port 0
    d = Daemon(_config(tmp_path, free_port(), control_port))
    password = init_and_start(d)
    b = Browser(d.base)
    assert b.login("admin", password).status == 302
    yield d, b, tmp_path
    kill(d)
    TgtDaemon("127.0.0.1", control_port=control_port).stop()  # it outlives provisiond on purpose


@pytest.fixture
def www(tmp_path):
    """A plain HTTP server on 127.0.0.2 (admitted by allow_networks) and one on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "img.raw").write_bytes(b"\x01" * 8192)
    handler = functools.partial(_Served, directory=str(root))
    servers = [
        http.server.ThreadingHTTPServer((ip, 0), handler) for ip in ("127.0.0.2", "127.0.0.1")
    ]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield {
        ip: f"http://{ip}:{srv.server_address[1]}"
        for ip, srv in zip(("127.0.0.2", "127.0.0.1"), servers, strict=False)
    }
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _import(b: Browser, name: str, source: str):
    return b.api("POST", "/images", {"name": name, "source": source})


def _images(d: Daemon) -> list[str]:
    return [i["name"] for i in json.loads(d.cli("image", "list", "--json").stdout)]


def _wait_job(d: Daemon, job_id: int) -> dict:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = json.loads(d.cli("job", "show", str(job_id), "--json").stdout)
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_host_files_and_state_files_are_refused(web):
    d, b, tmp = web
    state = tmp / "state"
    links = tmp / "imports"
    (links / "shadow").symlink_to("/etc/shadow")
    (links / "key").symlink_to(state / "ssh" / "id_ed25519")
    (links / "secret").symlink_to(state / "web-secret")
    (links / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(links / "fifo")
    os.link(state / "web-secret", links / "hardlink")  # same file system as state_dir
    attacks = {
        "shadow": "/etc/shadow",
        "sshkey": str(state / "ssh" / "id_ed25519"),
        "secret": str(state / "web-secret"),
        "db": str(state / "provisiond.db"),
        "via-link-shadow": str(links / "shadow"),
        "via-link-key": str(links / "key"),
        "via-link-secret": str(links / "secret"),
        "dotdot": str(links / ".." / "state" / "web-secret"),
        "fifo": str(links / "fifo"),
        "hardlink": str(links / "hardlink"),
        "dir": str(links),
        "relative": "disk.raw",
    }
    for name, source in attacks.items():
        r = _import(b, name, source)
        assert r.status == 400, (name, r.status, r.text)
        assert r.json()["field"] == "source", r.text
    assert _images(d) == []
    # the folder's own regular file is fine, and its volume is private
    r = _import(b, "good", str(links / "disk.raw"))
    assert r.status == 202, r.text
    assert _wait_job(d, r.json()["id"])["state"] == "succeeded"
    assert _images(d) == ["good"]
    vol = next((tmp / "volumes").glob("image-good*"))
    assert stat.S_IMODE(vol.stat().st_mode) == 0o600


def test_cli_import_applies_the_same_rule(web):
    d, _b, _tmp = web
    res = d.cli("image", "import", "/etc/shadow", "--name", "shadow")
    assert res.returncode != 0 and "import_dirs" in (res.stdout + res.stderr)
    assert _images(d) == []


def test_own_database_is_refused_and_data_survives_kill9(tmp_path):
    """Finding 4: the database outside state_dir but inside an import folder."""
    (tmp_path / "imports").mkdir()
    db = tmp_path / "imports" / "inventory.db"
    control_port = free_control_port()
    d = Daemon(_config(tmp_path, free_port(), control_port))
    text = d.cfg_path.read_text().replace(
        'state_dir = ', f'database_url = "sqlite:///{db}"\nstate_dir = ', 1)  # fmt: skip
    d.cfg_path.write_text(text)
    d = Daemon(d.cfg_path)
    password = init_and_start(d)
    try:
        b = Browser(d.base)
        assert b.login("admin", password).status == 302
        for source in (str(db), str(db) + "-wal"):
            r = _import(b, "dbcopy", source)
            assert r.status == 400 and "database" in r.json()["error"], r.text
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        r = b.api(
            "POST", "/users", {"name": "later", "password": "long enough pw", "role": "viewer"}
        )
        assert r.status == 201, r.text
        d.stop(signal.SIGKILL)
        d.proc = None
        # the CLI reads the same database the daemon wrote, nothing lost
        d.start()
        assert Browser(d.base).login("later", "long enough pw").status == 302
        assert _images(d) == []
    finally:
        kill(d)
        TgtDaemon("127.0.0.1", control_port=control_port).stop()


def test_internal_urls_are_refused(web, www):
    d, b, _tmp = web
    inside, loop = www["127.0.0.2"], www["127.0.0.1"]
    attacks = {
        "loop": f"{loop}/img.raw",
        "localhost": f"http://localhost:{loop.rsplit(':', 1)[1]}/img.raw",
        "own": f"http://127.0.0.1:{d.cfg.http_port}/healthz",
        "v6loop": f"http://[::1]:{d.cfg.http_port}/healthz",
        "linklocal": "http://169.254.169.254/latest/meta-data/",
        "redirect": f"{inside}/redirect?{loop}/img.raw",
        "file": "file:///etc/shadow",
        "ftp": f"ftp://{inside[7:]}/img.raw",
    }
    for name, source in attacks.items():
        r = _import(b, name, source)
        if r.status == 202:  # refused only once the connection is attempted
            job = _wait_job(d, r.json()["id"])
            assert job["state"] == "failed", (name, job)
            assert re.search(r"loopback|link-local|own address|refused", job["outcome"]), job
        else:
            assert r.status == 400, (name, r.status, r.text)
    assert _images(d) == []


def test_allowed_url_imports_and_its_password_is_redacted(web, www):
    d, b, _tmp = web
    url = www["127.0.0.2"].replace("http://", f"http://ops:{SECRET}@") + "/img.raw"
    r = _import(b, "fromurl", url)
    assert r.status == 202, r.text
    job = _wait_job(d, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert _images(d) == ["fromurl"]
    want = "Basic " + base64.b64encode(f"ops:{SECRET}".encode()).decode()
    assert want in _Served.seen_auth
    # a failing one too (its error message names the URL)
    bad = _import(b, "missing", url.replace("img.raw", "nope.raw"))
    if bad.status == 202:
        assert _wait_job(d, bad.json()["id"])["state"] == "failed"
    seen = [
        b.api("GET", "/jobs").text,
        b.api("GET", f"/jobs/{job['id']}").text,
        b.api("GET", "/events").text,
        b.get("/jobs").text,
        b.get(f"/jobs/{job['id']}").text,
        b.get("/events").text,
        d.cli("job", "list", "--json").stdout,
        d.cli("event", "list", "--json").stdout,
        d.log.read_text(),
    ]
    for text in seen:
        assert SECRET not in text
    assert any("ops:***@" in t for t in seen)


def test_qcow2_with_backing_file_is_refused(web):
    d, b, tmp = web
    key = tmp / "state" / "ssh" / "id_ed25519"
    q = tmp / "imports" / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", str(key), str(q)],
                   check=True, capture_output=True)  # fmt: skip
    r = _import(b, "evil", str(q))
    if r.status == 202:
        job = _wait_job(d, r.json()["id"])
        assert job["state"] == "failed" and "backing" in job["outcome"], job
    else:
        assert r.status == 400 and "backing" in r.json()["error"], r.text
    assert _images(d) == []
    # a self-contained qcow2 in the folder still imports
    plain = tmp / "imports" / "plain.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                    str(tmp / "imports" / "disk.raw"), str(plain)], check=True)  # fmt: skip
    r = _import(b, "plain", str(plain))
    assert r.status == 202 and _wait_job(d, r.json()["id"])["state"] == "succeeded"


def test_state_dir_database_and_secrets_are_private(web):
    _d, _b, tmp = web
    state = tmp / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "provisiond.db").stat().st_mode) == 0o600
    for extra in ("provisiond.db-wal", "provisiond.db-shm"):
        if (state / extra).exists():
            assert stat.S_IMODE((state / extra).stat().st_mode) & 0o077 == 0, extra
    assert stat.S_IMODE((state / "web-secret").stat().st_mode) == 0o600
