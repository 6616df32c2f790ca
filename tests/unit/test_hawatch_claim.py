"""Daemons sharing one database: exactly one of them takes an appliance's failover."""

from __future__ import annotations

from sqlalchemy import select

from provisiond import appliances, resources
from provisiond import config as configmod
from provisiond.app import build_context
from provisiond.hawatch import HaWatcher
from provisiond.model import Appliance, Image
from tests.conftest import write_config


def test_only_one_watcher_claims_a_failover(tmp_path):
    ctx = build_context(configmod.load(write_config(tmp_path)))
    ctx.db.migrate()
    try:
        with ctx.db.transaction() as s:
            res = resources.ensure(s, "52:54:00:dd:00:01")
            res.state = "active"
            s.add(Image(name="img", size=1))
            s.flush()
            app = appliances.create(s, name="web1", resource=res, mode="sanboot", image="img",
                                    ha=True, ha_pool="p")  # fmt: skip
            app.state = "active"
        one, two = HaWatcher(ctx), HaWatcher(ctx)
        try:
            (w,) = one._read()
            assert one._claim(w, "power is off for 31 s") is True
            assert two._claim(w, "power is off for 31 s") is False  # same snapshot, too late
            assert two._read()[0].ha_state == "fencing"
            decisions = two.tick()  # a claimed appliance is in flight for everyone
            assert decisions == {}
            with ctx.db.reader() as s:
                row = s.scalars(select(Appliance)).one()
                assert row.ha_reason == "fencing r-525400dd0001: power is off for 31 s"
        finally:
            one.stop()
            two.stop()
    finally:
        ctx.db.dispose()
