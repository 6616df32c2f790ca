"""The daemon as a real subprocess on loopback: health, boot scripts, agent API, stop.

Everything here talks real HTTP to ``provisiond serve`` (waitress) through
urllib, against a real SQLite file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from provisiond import jobs, resources
from provisiond.db import Database
from tests.daemonlab import Daemon, _enroll, _register_kernel  # noqa: F401
from tests.daemonlab import daemon as daemon  # a fixture

pytestmark = pytest.mark.interop
PROVISIOND = str(Path(sys.executable).with_name("provisiond"))
HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDk7nSx0ucIm2yZ0FuvAOZSnD0LNZ7v1zJ6Ju2Kb2W5X agent"


def test_health_stop_within_5s_and_restart_recovery(daemon):
    daemon.start()
    assert json.loads(daemon.get("/healthz")[1]) == {"status": "ok"}
    assert daemon.stop() < 5
    assert daemon.proc.returncode == 0
    db = Database(daemon.cfg.database_url)
    with db.transaction() as s:
        r = resources.ensure(s, "52:54:00:00:00:01")
        r.state = "deploying"
    daemon.start()
    assert daemon.stop() < 5
    with db.transaction() as s:
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
    with db.transaction() as s:
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
