"""The HA watcher with real parts: QEMU machines behind QMP, a real tgtd, SQLite, hooks.

Machines are diskless QEMUs (their QMP socket is the BMC, ``qemu`` driver);
SAN exports live in a private ``tgtd`` in a lab namespace; the notification
hook is a real shell command and a real HTTP server on loopback. The
watcher's sweep (:meth:`HaWatcher.tick`) runs in the test's thread with
``[ha] timeout = 4``. What the spare does after it is handed the appliance
(its agent reboots into the SAN target, tgt sees its login) is the test
bed's part (tests/testbed/test_ha_vm.py); here the login is recorded the way
the sanboot job records it.

Scenarios, in order, on one shared world:
1. power trigger: A's QEMU is killed -> suspect, then after the timeout
   fenced (QMP/pidfile say off, its target is gone from tgt), moved to the
   spare B, its start queued, hooks called; once B is seen booted: watching.
2. N-to-1: web2's machine D dies while the only spare is taken ->
   ``waiting: no standby available``; a new spare C joins the pool -> taken.
3. heartbeat trigger + fencing failure: web3's OS reports heartbeats over
   HTTP and stops; its BMC is unreachable -> ``fence-failed``, no takeover.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from provisiond import appliances, hapools, resources
from provisiond import config as configmod
from provisiond.app import build_context
from provisiond.hawatch import HaWatcher
from provisiond.lifecycle import JobState as JS
from provisiond.model import Appliance, Event, Image, Job, Resource
from storage.backends import FileBackend
from storage.exporters import ExportSpec, TgtDaemon, new_chap_secret
from tests.conftest import write_config
from tests.netlab import Lab
from tests.qmpmachine import QEMU, Machine
from web import create_app

pytestmark = pytest.mark.interop
TIMEOUT = 4  # [ha] timeout; a heartbeat older than half of it is "suspect"
PREFIX = "iqn.2025-01.test.ha"
INV = {"cpu": {"count": 1}, "memory_bytes": 64 << 20, "firmware": "bios"}


class Hook(BaseHTTPRequestHandler):
    got: list[dict] = []

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        Hook.got.append(json.loads(self.rfile.read(n)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    for tool in (QEMU, "tgtd", "tgtadm", "nsenter"):
        if not shutil.which(tool):
            pytest.skip(reason=f"needs {tool} (apt-get install qemu-system-x86 tgt util-linux)")
    tmp = tmp_path_factory.mktemp("hawatch")
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    notify_log = tmp / "notify.log"
    cfg_path = write_config(tmp)
    cfg_path.write_text(
        cfg_path.read_text()
        + f"\n[ha]\ntimeout = {TIMEOUT}\nhold_down = 300\npower_timeout = 10\n"
        + f"notify_command = \"sh -c 'env | grep ^HA_ | sort >> {notify_log}; echo --- >> "
        + f"{notify_log}'\"\n"
        + f'notify_url = "http://127.0.0.1:{hook.server_port}/ha"\n'
        + f'\n[iscsi]\niqn_prefix = "{PREFIX}"\n'
    )
    ctx = build_context(configmod.load(cfg_path))
    ctx.db.migrate()
    machines = {}
    with Lab("hawat") as lab:
        tgt = TgtDaemon(lab.server_ip, 3260, control_port=200 + os.getpid() % 700,
                        netns=lab.server.name, log_path=str(tmp / "tgtd.log"))  # fmt: skip
        tgt.start()
        try:
            for name in ("a", "d"):
                (tmp / name).mkdir()
                machines[name] = Machine(tmp / name)
            (tmp / "vols").mkdir()
            yield ctx, tgt.exporter(), FileBackend(tmp / "vols"), machines, notify_log
        finally:
            for m in machines.values():
                m.stop()
            tgt.stop()
            hook.shutdown()
            ctx.db.dispose()


def add_machine(s, mac: str, state: str, pool: str | None = None, qmp: Machine | None = None):
    r = resources.ensure(s, mac)
    r.state, r.inventory, r.ha_pool = state, dict(INV), pool
    if qmp is not None:
        r.power_driver, r.power_address = "qemu", str(qmp.sock)
        r.power_options = {"pidfile": str(qmp.pidfile)}
    return r


def running_appliance(ctx, exporter, vols, name: str, res: Resource, s) -> None:
    if s.scalars(select(Image).where(Image.name == "img")).first() is None:
        s.add(Image(name="img", size=1))
        s.flush()
    app = appliances.create(s, name=name, resource=res, mode="sanboot", image="img", ha=True,
                            ha_pool="p")  # fmt: skip
    vol = vols.create(f"app-{name}", 8 << 20)
    target, initiator = f"{PREFIX}:{name}", f"{PREFIX}:{res.display_name}"
    exporter.export(ExportSpec(target, vol.path, initiator, name, new_chap_secret()))
    app.state, app.params = "active", {"target_iqn": target, "initiator_iqn": initiator}


def app_row(ctx, name: str) -> Appliance:
    with ctx.db.reader() as s:
        app = s.scalars(select(Appliance).where(Appliance.name == name)).one()
        s.expunge(app)
        return app


def res_of(ctx, mac: str) -> Resource:
    with ctx.db.reader() as s:
        r = s.scalars(select(Resource).where(Resource.mac == mac)).one()
        s.expunge(r)
        return r


def targets(exporter) -> set[str]:
    return {e.target_iqn for e in exporter.list_exports()}


A, B, C, D, E, F = (f"52:54:00:4a:00:0{i}" for i in range(1, 7))


def test_power_off_is_fenced_and_taken_over_by_the_spare(world):
    ctx, exporter, vols, m, notify_log = world
    with ctx.db.transaction() as s:
        a = add_machine(s, A, "active", qmp=m["a"])
        add_machine(s, B, "idle", "p")
        running_appliance(ctx, exporter, vols, "web1", a, s)
    w = HaWatcher(ctx, exporter=lambda: exporter)
    assert w.tick()["web1"].state == "watching"
    assert app_row(ctx, "web1").ha_reason == "power on"
    assert f"{PREFIX}:web1" in targets(exporter)

    os.kill(m["a"].proc.pid, signal.SIGKILL)
    m["a"].proc.wait(10)
    d = w.tick()["web1"]
    assert d.state == "suspect" and "power is off for 0 s" in d.reason
    assert app_row(ctx, "web1").resource_id == res_of(ctx, A).id
    time.sleep(TIMEOUT + 0.2)
    d = w.tick()["web1"]
    assert d.action == "failover" and d.spare.name == "r-5254004a0002"

    app, a_row, b_row = app_row(ctx, "web1"), res_of(ctx, A), res_of(ctx, B)
    assert app.resource_id == b_row.id and app.state == "starting"
    assert app.ha_state == "failing-over" and app.ha_failover_at is not None
    assert "powered off r-5254004a0001" in app.ha_reason
    assert a_row.state == "failed" and "fenced" in a_row.state_reason
    assert b_row.state == "deploying"
    assert f"{PREFIX}:web1" not in targets(exporter)  # A can never write to it again
    with ctx.db.reader() as s:
        job = s.scalars(select(Job).where(Job.kind == "appliance.start")).one()
        assert (job.state, job.resource_id) == (JS.QUEUED, b_row.id)
        actions = [e.action for e in s.scalars(select(Event).where(Event.target == "web1"))]
    assert "ha.failover" in actions and "appliance.moved" in actions

    assert w.tick()["web1"].state == "failing-over"  # in flight: no second move
    assert app_row(ctx, "web1").resource_id == b_row.id
    with ctx.db.transaction() as s:  # what the sanboot job records when tgt sees B log in
        assert appliances.booted(s, b_row.id, "iSCSI login (recorded by the test)")
    w.tick()
    app = app_row(ctx, "web1")
    assert app.ha_state == "watching" and "failed over to r-5254004a0002" in app.ha_reason

    text = notify_log.read_text()
    assert "HA_EVENT=failover" in text and "HA_FROM=r-5254004a0001" in text
    assert "HA_TO=r-5254004a0002" in text and "HA_EVENT=recovered" in text
    assert [h["event"] for h in Hook.got][:2] == ["failover", "recovered"]
    assert Hook.got[0]["appliance"] == "web1" and Hook.got[0]["to"] == "r-5254004a0002"


def test_second_failure_waits_for_a_standby(world):
    ctx, exporter, vols, m, _ = world
    with ctx.db.transaction() as s:
        d_res = add_machine(s, D, "active", qmp=m["d"])
        running_appliance(ctx, exporter, vols, "web2", d_res, s)
    w = HaWatcher(ctx, exporter=lambda: exporter)
    assert w.tick()["web2"].state == "watching"
    os.kill(m["d"].proc.pid, signal.SIGKILL)
    m["d"].proc.wait(10)
    w.tick()
    time.sleep(TIMEOUT + 0.2)
    d = w.tick()["web2"]
    assert d.state == "waiting"
    app = app_row(ctx, "web2")
    assert app.ha_reason.startswith("waiting: no standby available in HA pool 'p'")
    assert app.resource_id == res_of(ctx, D).id and app.state == "active"
    assert any(h["event"] == "waiting" for h in Hook.got)

    with ctx.db.transaction() as s:  # a standby joins the pool
        hapools.set_pool(s, add_machine(s, C, "idle"), "p")
    d = w.tick()["web2"]
    assert d.action == "failover" and d.spare.name == "r-5254004a0003"
    assert app_row(ctx, "web2").resource_id == res_of(ctx, C).id
    assert f"{PREFIX}:web2" not in targets(exporter)


def test_silent_os_with_unreachable_bmc_is_not_taken_over(world, tmp_path):
    ctx, exporter, vols, _, _ = world
    alive_pid = tmp_path / "bmc.pid"
    alive_pid.write_text(f"{os.getpid()}\n")  # the machine may well run: nothing proves it off
    with ctx.db.transaction() as s:
        e = add_machine(s, E, "active")
        e.power_driver, e.power_address = "qemu", str(tmp_path / "no-bmc.sock")
        e.power_options = {"pidfile": str(alive_pid)}
        add_machine(s, F, "idle", "p")
        running_appliance(ctx, exporter, vols, "web3", e, s)
        token = hapools.new_reporter_token(s, s.scalars(
            select(Appliance).where(Appliance.name == "web3")).one())  # fmt: skip
    client = create_app(ctx).test_client()
    w = HaWatcher(ctx, exporter=lambda: exporter)
    beat = client.post("/ha/v1/heartbeat", headers={"Authorization": f"Bearer {token}"})
    assert beat.status_code == 204
    d = w.tick()["web3"]
    assert d.state == "watching" and d.reason == "heartbeats arrive"
    time.sleep(TIMEOUT + 0.2)  # the OS stops reporting
    d = w.tick()["web3"]
    assert d.action == "failover"  # the rules want a takeover ...
    app = app_row(ctx, "web3")
    assert app.ha_state == "fence-failed"  # ... but without a fence there is none
    assert "no heartbeat for" in d.reason
    assert "fencing r-5254004a0005 failed" in app.ha_reason and "no-bmc.sock" in app.ha_reason
    assert "no takeover" in app.ha_reason
    assert app.resource_id == res_of(ctx, E).id and app.state == "active"
    assert res_of(ctx, F).state == "idle"
    assert f"{PREFIX}:web3" in targets(exporter)  # its disk was not taken away either
    assert any(h["event"] == "fence-failed" for h in Hook.got)
