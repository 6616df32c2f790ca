"""The daemon as a real subprocess on loopback: health, boot scripts, agent API, stop.

Everything here talks real HTTP to ``provisiond serve`` (waitress) through
urllib, against a real SQLite file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from provisiond import config as configmod
from provisiond import jobs, resources
from provisiond.db import Database
from provisiond.model import Kernel
from tests.conftest import write_config

pytestmark = pytest.mark.interop
PROVISIOND = str(Path(sys.executable).with_name("provisiond"))
HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDk7nSx0ucIm2yZ0FuvAOZSnD0LNZ7v1zJ6Ju2Kb2W5X agent"


class Daemon:
    def __init__(self, cfg_path: Path) -> None:
        self.cfg_path = cfg_path
        self.cfg = configmod.load(cfg_path)
        self.base = self.cfg.http_base
        self.agent_base = self.cfg.agent_base
        self.proc: subprocess.Popen | None = None
        self.log = cfg_path.parent / "daemon.log"

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PROVISIOND, "--config", str(self.cfg_path), *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [PROVISIOND, "--config", str(self.cfg_path), "serve"], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("daemon did not answer /healthz:\n" + self.log.read_text())

    def stop(self, sig=signal.SIGTERM) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(10)
        return time.monotonic() - t0

    def request(self, method: str, path: str, body=None, token=None, headers=None):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        control = path.startswith("/agent/v1/") and not path.startswith("/agent/v1/stream/")
        base = self.agent_base if control else self.base
        req = urllib.request.Request(base + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if isinstance(body, dict):
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=40) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get(self, path, token=None):
        return self.request("GET", path, token=token)


@pytest.fixture
def daemon(tmp_path):
    cfg = write_config(tmp_path, agent={"heartbeat_interval": 1, "heartbeat_timeout": 8})
    d = Daemon(cfg)
    assert d.cli("init").returncode == 0
    yield d
    if d.proc and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()
    log = d.log.read_text() if d.log.exists() else ""
    assert "provisiond.token=" not in log.replace("provisiond.token=***", "")


def _register_kernel(d: Daemon) -> None:
    db = Database(d.cfg.database_url)
    with db.session() as s:
        s.add(Kernel(name="agent", kernel_path="kernels/agent/vmlinuz",
                     initrd_path="kernels/agent/initrd.img", is_default=True))  # fmt: skip
    db.dispose()


def _enroll(d: Daemon, mac: str) -> str:
    """An agent token the operator's way (no DHCP on loopback: scripts carry no token)."""
    out = d.cli("resource", "enroll", mac, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["token"]


def test_health_stop_within_5s_and_restart_recovery(daemon):
    daemon.start()
    assert json.loads(daemon.get("/healthz")[1]) == {"status": "ok"}
    assert daemon.stop() < 5
    assert daemon.proc.returncode == 0
    db = Database(daemon.cfg.database_url)
    with db.session() as s:
        r = resources.ensure(s, "52:54:00:00:00:01")
        r.state = "deploying"
    daemon.start()
    assert daemon.stop() < 5
    with db.session() as s:
        r = resources.find(s, "52:54:00:00:00:01")
        assert (r.state, r.state_reason) == ("failed", "daemon restarted during deploying")


def test_boot_script_register_commands_and_tokens(daemon):
    _register_kernel(daemon)
    daemon.start()
    mac = "52:54:00:12:34:56"
    assert daemon.get("/boot/not-a-mac.ipxe")[0] == 400
    # no DHCP boot of this MAC was seen: the script is refused, with the reason, and no
    # resource is created
    status, text = daemon.get(f"/boot/{mac.replace(':', '-')}.ipxe")
    assert status == 403 and b"provisiond.token" not in text and b"has not seen" in text
    assert json.loads(daemon.cli("resource", "list", "--json").stdout) == []
    token = _enroll(daemon, mac)
    listed = json.loads(daemon.cli("resource", "list", "--json").stdout)
    assert [(r["mac"], r["state"]) for r in listed] == [(mac, "new")]

    # every agent endpoint refuses a missing or wrong token, and nothing changes
    for method, path in [("POST", "/agent/v1/register"), ("POST", "/agent/v1/heartbeat"),
                         ("GET", "/agent/v1/commands"), ("GET", "/agent/v1/authorized_keys"),
                         ("POST", "/agent/v1/commands/1/result")]:  # fmt: skip
        for bad in (None, "wrong-token-wrong-token", token + "x"):
            assert daemon.request(method, path, body=b"", token=bad)[0] == 401, (path, bad)
    assert json.loads(daemon.cli("resource", "list", "--json").stdout)[0]["state"] == "new"

    inventory = {"cpu": {"model": "QEMU", "count": 2}, "memory_bytes": 512 * 2**20,
                 "disks": [], "nics": [{"name": "eth0", "mac": mac}]}  # fmt: skip
    body = {"mac": mac, "ip": "10.77.0.100", "hostkey": HOSTKEY, "inventory": inventory}
    assert daemon.request("POST", "/agent/v1/register", {**body, "mac": "52:54:00:99:99:99"},
                          token)[0] == 400  # fmt: skip
    status, out = daemon.request("POST", "/agent/v1/register", body, token)
    assert status == 200 and json.loads(out)["state"] == "idle"
    shown = json.loads(daemon.cli("resource", "show", mac, "--json").stdout)
    assert shown["state"] == "idle" and shown["cpus"] == 2
    assert shown["ip"] == "127.0.0.1"  # the request's source, not the claimed 10.77.0.100
    assert shown["hostkey_fingerprint"].startswith("SHA256:")
    status, key = daemon.get("/agent/v1/authorized_keys", token)
    assert status == 200 and key.startswith(b"ssh-ed25519 ")

    # a new enrolment (as a new boot) mints a new token; the old one stops working
    new_token = _enroll(daemon, mac)
    assert daemon.request("POST", "/agent/v1/heartbeat", b"", token)[0] == 401
    assert daemon.request("POST", "/agent/v1/heartbeat", b"", new_token)[0] == 204

    # long poll: nothing queued -> 204 after the wait; queued run -> handed out
    t0 = time.monotonic()
    assert daemon.get("/agent/v1/commands?wait=1", new_token)[0] == 204
    assert time.monotonic() - t0 >= 0.9
    db = Database(daemon.cfg.database_url)
    with db.session() as s:
        job = jobs.enqueue_command(s, resources.find(s, mac), "run", "uname -r")
        job_id = job.id
    status, cmd = daemon.get("/agent/v1/commands?wait=5", new_token)
    assert status == 200
    lines = dict(line.split("=", 1) for line in cmd.decode().split())
    assert lines["id"] == str(job_id) and lines["kind"] == "run"
    assert daemon.request("POST", f"/agent/v1/commands/{job_id}/result", b"6.1.0\n", new_token,
                          {"X-Exit-Code": "0"})[0] == 204  # fmt: skip
    shown = json.loads(daemon.cli("job", "show", str(job_id), "--json").stdout)
    assert shown["state"] == "succeeded" and shown["log"] == "6.1.0\n"

    # heartbeats stop -> offline after the timeout; a heartbeat brings it back
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = json.loads(daemon.cli("resource", "show", mac, "--json").stdout)["state"]
        if state == "offline":
            break
        time.sleep(0.5)
    assert state == "offline"
    assert daemon.request("POST", "/agent/v1/heartbeat", b"", new_token)[0] == 204
    assert json.loads(daemon.cli("resource", "show", mac, "--json").stdout)["state"] == "idle"


def test_assets_served_with_range_and_confined(daemon):
    daemon.start()
    full = (daemon.cfg.boot_assets_dir / "undionly.kpxe").read_bytes()
    assert daemon.get("/assets/undionly.kpxe") == (200, full)
    status, part = daemon.request("GET", "/assets/undionly.kpxe", headers={"Range": "bytes=10-19"})
    assert status == 206 and part == full[10:20]
    for path in ("/assets/../provisiond.db", "/assets/%2e%2e/provisiond.db", "/assets/nope"):
        assert daemon.get(path)[0] == 404
