"""powerctl against Redfish simulators: the sweep (bounded, batched, failures recorded),
boot() for deploys without agent, and the poller service's schedule."""

from __future__ import annotations

import time

import pytest

from provisiond import config as configmod
from provisiond import powerctl, resources
from provisiond.db import Database
from provisiond.model import Resource
from provisiond.power import PowerError, redfish
from tests.conftest import free_port, write_config
from tests.redfish_sim import RedfishSim

pytestmark = pytest.mark.interop


@pytest.fixture
def world(tmp_path):
    path = write_config(tmp_path)
    path.write_text(path.read_text() + "[power]\ninterval = 1\ntimeout = 2\nconcurrency = 4\n")
    cfg = configmod.load(path)
    db = Database(cfg.database_url)
    db.migrate()
    redfish.forget_sessions()
    yield cfg, db
    db.dispose()


def add(cfg, db, n: int, url: str, password: str = "s3cret") -> int:
    with db.transaction() as s:
        r = resources.ensure(s, f"52:54:00:00:10:{n:02x}")
        powerctl.set_power(s, cfg, r, "redfish", url, "admin", password, {}, "test")
        s.flush()
        return r.id


def test_sweep_reads_every_bmc_and_records_failures(world):
    cfg, db = world
    with RedfishSim(12) as sim:
        for i, bmc in enumerate(sim.bmcs):
            bmc.power = "On" if i % 3 == 0 else "Off"
        ids = [add(cfg, db, i, url) for i, url in enumerate(sim.urls())]
        dead = add(cfg, db, 50, f"http://127.0.0.1:{free_port()}")
        refused = add(cfg, db, 51, sim.urls()[0], password="wrong")
        with db.transaction() as s:
            resources.ensure(s, "52:54:00:00:10:ff")  # no driver: not polled
        out = powerctl.sweep(cfg, db)
    assert out.count == 14 and out.states == {"on": 4, "off": 8} and out.errors == 2
    assert "14 resources" in out.summary() and "2 failed" in out.summary()
    with db.reader() as s:
        states = [s.get(Resource, i).power_state for i in ids]
        assert states == ["on" if i % 3 == 0 else "off" for i in range(12)]
        assert "cannot connect" in s.get(Resource, dead).power_error
        assert "refused user" in s.get(Resource, refused).power_error
        assert all(s.get(Resource, i).power_checked_at is not None for i in [*ids, dead])


def test_boot_switches_on_or_cycles(world):
    cfg, db = world
    with RedfishSim(2) as sim:
        off, on = sim.bmcs
        on.power = "On"
        a, b = (add(cfg, db, i, url) for i, url in enumerate(sim.urls()))
        assert powerctl.boot(cfg, db, a) == "switched on r-525400001000 via redfish"
        assert powerctl.boot(cfg, db, b) == "power-cycled r-525400001001 via redfish"
        assert off.resets == ["On"] and on.resets == ["PowerCycle"]


def test_boot_without_driver_falls_back_and_failure_is_advice(world):
    cfg, db = world
    with db.transaction() as s:
        bare = resources.ensure(s, "52:54:00:00:20:01")
        s.flush()
        bare_id = bare.id
    assert powerctl.boot(cfg, db, bare_id) is None
    assert powerctl.boot_or_advise(cfg, db, bare_id, "boot the SAN target") == (
        "no agent is running: power-cycle the machine to boot the SAN target"
    )
    dead = add(cfg, db, 3, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PowerError):
        powerctl.boot(cfg, db, dead)
    advice = powerctl.boot_or_advise(cfg, db, dead, "boot the SAN target")
    assert "power driver failed" in advice and "by hand" in advice


def test_poller_service_sweeps_on_its_interval(world):
    cfg, db = world
    with RedfishSim(1) as sim:
        rid = add(cfg, db, 1, sim.urls()[0])
        poller = powerctl.PowerPoller(cfg, db)
        poller.start()
        try:
            deadline = time.monotonic() + 10
            while (poller.last is None or poller.last.count == 0) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert poller.last and poller.last.count == 1
            sim.bmcs[0].power = "On"
            first = poller.last
            while poller.last is first and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            poller.stop()
    with db.reader() as s:
        assert s.get(Resource, rid).power_state == "on"
