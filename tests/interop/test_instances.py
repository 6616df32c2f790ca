"""Two racks on one PostgreSQL: each fails only its own leftovers and expired racks' work.

Two ``provisiond serve`` instances (``r1``, ``r2``), each in its own Lab
namespace with its own state_dir, share a private PostgreSQL cluster
(tests/pg.py, unix socket only). A machine registers with r2 through the
real boot script and agent API (curl), and r2 claims its local deploy: the
job waits for the agent's result, so it is in flight for as long as the test
needs. Then r1 starts and is killed and restarted (r2's job is untouched); a
third daemon claiming to be r2 is refused by r2's advisory lock; at last r2
is killed and, once its lease expires, a restart of r1 fails r2's work with
"rack r2 stopped heartbeating during ...".
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time

import pytest
from sqlalchemy import select

from provisiond.db import Database
from provisiond.model import Appliance, Instance, Job, Resource, utcnow
from tests.daemonlab import LabDaemon, lab_config
from tests.netlab import Lab
from tests.pg import private_cluster

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]
MAC = "52:54:00:1a:00:02"
LEASE = "[lease]\nheartbeat_interval = 1\nexpiry = 3\n[agent]\nheartbeat_timeout = 600\n"


def _rack(lab: Lab, work, url: str, name: str) -> LabDaemon:
    work.mkdir(parents=True, exist_ok=True)
    images = work.parent / "images"  # one storage, as racks sharing an NFS export would
    extra = f'[[storage]]\nname = "local"\nbackend = "file"\npath = "{images}"\n{LEASE}'
    extra += f'[images]\nimport_dirs = ["{work.parent}"]\n'
    head = f'instance = "{name}"\ndatabase_url = "{url}"\n'
    return LabDaemon(lab, work, head + lab_config(lab, work / "state", extra))


@pytest.fixture
def racks(tmp_path):
    if not shutil.which("curl"):
        pytest.skip(reason="needs curl (make test installs it with apt-get)")
    with private_cluster() as url, Lab("rka") as lab1, Lab("rkb") as lab2:
        r1 = _rack(lab1, tmp_path / "r1", url, "r1")
        r2 = _rack(lab2, tmp_path / "r2", url, "r2")
        r1.cli("init")
        r2.cli("init")
        db = Database(url)
        try:
            yield r1, r2, db, url
        finally:
            db.dispose()
            r1.stop()
            r2.stop()


def _in_flight(db: Database) -> dict[str, tuple[str, str, str | None]]:
    with db.reader() as s:
        job = s.scalars(select(Job).where(Job.kind == "appliance.start")).one()
        app, res = s.get(Appliance, job.appliance_id), s.get(Resource, job.resource_id)
        return {
            "job": (job.state, job.outcome, job.owner),
            "appliance": (app.state, app.state_reason, app.owner),
            "resource": (res.state, res.state_reason, res.owner),
        }


def test_restarting_one_rack_leaves_the_others_deploy_alone(racks, tmp_path):
    r1, r2, db, url = racks
    r2.add_fake_kernel()
    r2.start()
    client = r2.lab.add_client(mac=MAC, address=f"{r2.lab.net}.50")
    r2.register(client, MAC, f"{r2.lab.net}.50")
    image = tmp_path / "img.raw"
    image.write_bytes(os.urandom(1 << 20))
    r2.cli("image", "import", str(image), "--name", "img")
    r2.cli("appliance", "create", "--resource", MAC, "--image", "img", "--mode", "local",
           "--name", "loc", "--disk", "/dev/vda")  # fmt: skip
    r2.cli("appliance", "start", "loc")
    deadline = time.monotonic() + 60
    while _in_flight(db)["job"][0] != "running":
        assert time.monotonic() < deadline, r2.log.read_text()
        time.sleep(0.3)
    in_flight = {
        "job": ("running", "", "r2"),
        "appliance": ("starting", "", "r2"),
        "resource": ("deploying", "appliance loc", "r2"),
    }
    assert _in_flight(db) == in_flight

    # r1 starts, is killed, starts again: r2's lease holds, its deploy is untouched
    r1.start()
    assert _in_flight(db) == in_flight
    r1.stop(signal.SIGKILL)
    r1.start()
    assert _in_flight(db) == in_flight
    assert "caught mid-work" not in r1.log.read_text()

    # a second daemon calling itself r2 is refused by r2's lock and changes nothing
    twin = _rack(r1.lab, tmp_path / "r2-twin", url, "r2")
    refused = twin.serve_again()
    assert refused.returncode != 0
    assert "provisiond is already running with this state (instance 'r2'" in refused.stderr
    assert f"pid {r2.proc.pid} on " in refused.stderr
    assert "another process holds the lock of instance 'r2'" in refused.stderr
    assert _in_flight(db) == in_flight
    with db.reader() as s:
        assert s.get(Instance, "r2").pid == r2.proc.pid

    # r2 dies; once its lease (3 x 1 s) has expired, r1's next start fails its work
    r2.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        with db.reader() as s:
            if s.get(Instance, "r2").expires_at < utcnow():
                break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    r1.stop()
    r1.start()
    assert _in_flight(db) == {
        "job": ("failed", "rack r2 stopped heartbeating during running", "r2"),
        "appliance": ("failed", "rack r2 stopped heartbeating during starting", "r2"),
        "resource": ("failed", "rack r2 stopped heartbeating during deploying", "r2"),
    }
    assert re.search(
        r"rack r2 stopped heartbeating during deploying: resource r-", r1.log.read_text()
    )
