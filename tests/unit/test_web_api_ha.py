"""HA through the REST API and the UI: create with a pool, spares, status, reporter heartbeats."""

# ruff: noqa: F811  (pytest fixtures imported from tests.unit.weblab)
from __future__ import annotations

import pytest
from sqlalchemy import select

from provisiond import resources
from provisiond.model import Appliance, Event, Image
from tests.unit.weblab import api, app, ctx, login, tokens  # noqa: F401

MACS = ("52:54:00:aa:00:01", "52:54:00:aa:00:02", "52:54:00:aa:00:03")


@pytest.fixture
def lab(ctx):
    with ctx.db.transaction() as s:
        for mac in MACS:
            resources.ensure(s, mac).state = "idle"
        s.add(Image(name="img", size=1))
    return ctx


def create(api, name="web1", resource=MACS[0], **extra):
    body = {"name": name, "resource": resource, "mode": "sanboot", "image": "img", **extra}
    return api("POST", "/appliances", json=body)


def test_create_with_ha_and_pool_shows_ha_fields(api, lab):
    resp = create(api, ha=True, ha_pool="rack1")
    assert resp.status_code == 201, resp.get_json()
    got = resp.get_json()
    assert (got["ha"], got["ha_pool"], got["ha_state"]) == (True, "rack1", "watching")
    assert got["ha_failover_at"] is None and got["ha_heartbeat_at"] is None
    shown = api("GET", "/appliances/web1").get_json()
    assert shown["ha_pool"] == "rack1"


@pytest.mark.parametrize(
    "extra, status, field",
    [
        ({"ha": True}, 400, "ha_pool"),  # HA without a pool has no spares
        ({"ha": True, "ha_pool": "Rack 1"}, 400, "ha_pool"),
        ({"ha": True, "ha_pool": 7}, 400, "ha_pool"),
    ],
)
def test_bad_ha_input_is_refused_and_changes_nothing(api, lab, extra, status, field):
    resp = create(api, **extra)
    assert resp.status_code == status, resp.get_json()
    assert resp.get_json()["field"] == field
    with lab.db.reader() as s:
        assert s.scalars(select(Appliance)).first() is None


def test_spares_status_and_pool_removal(api, lab):
    create(api, ha=True, ha_pool="rack1")
    r = api("PUT", f"/resources/{MACS[1]}/ha-pool", json={"pool": "rack1"})
    assert r.status_code == 200 and r.get_json()["ha_pool"] == "rack1"
    assert api("PUT", f"/resources/{MACS[2]}/ha-pool", json={"pool": "rack1"}).status_code == 200
    st = api("GET", "/ha", "viewer").get_json()
    assert [a["name"] for a in st["appliances"]] == ["web1"]
    assert {s["name"]: s["standby"] for s in st["spares"]} == {
        "r-525400aa0002": True,
        "r-525400aa0003": True,
    }
    assert api("PUT", f"/resources/{MACS[2]}/ha-pool", json={"pool": None}).status_code == 200
    assert [s["name"] for s in api("GET", "/ha").get_json()["spares"]] == ["r-525400aa0002"]
    # a viewer may look but not change
    assert (
        api("PUT", f"/resources/{MACS[1]}/ha-pool", "viewer", json={"pool": "x"}).status_code == 403
    )
    bad = api("PUT", f"/resources/{MACS[1]}/ha-pool", json={"pool": "no spaces"})
    assert bad.status_code == 400 and bad.get_json()["field"] == "ha_pool"
    assert api("PUT", f"/resources/{MACS[1]}/ha-pool", json={}).status_code == 400
    with lab.db.reader() as s:
        assert s.scalars(select(Event).where(Event.action == "ha.spare")).all()


def test_reporter_token_and_heartbeats(api, app, lab):
    create(api, ha=True, ha_pool="rack1")
    create(api, name="plain", resource=MACS[1])
    refused = api("POST", "/appliances/plain/ha-token")
    assert refused.status_code == 400 and refused.get_json()["field"] == "ha"
    assert api("POST", "/appliances/web1/ha-token", "viewer").status_code == 403

    minted = api("POST", "/appliances/web1/ha-token")
    assert minted.status_code == 201
    token = minted.get_json()["token"]
    assert minted.get_json()["url"].endswith("/ha/v1/heartbeat")
    client = app.test_client()
    assert client.post("/ha/v1/heartbeat").status_code == 401
    assert (
        client.post("/ha/v1/heartbeat", headers={"Authorization": "Bearer " + "x" * 40}).status_code
        == 401
    )
    ok = client.post("/ha/v1/heartbeat", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 204
    assert api("GET", "/appliances/web1").get_json()["ha_heartbeat_at"] is not None
    # a new token replaces the old one
    api("POST", "/appliances/web1/ha-token")
    assert (
        client.post("/ha/v1/heartbeat", headers={"Authorization": f"Bearer {token}"}).status_code
        == 401
    )
    with lab.db.reader() as s:
        detail = " ".join(e.detail for e in s.scalars(select(Event)))
    assert token not in detail  # the token is never in the audit trail


def test_appliance_page_shows_ha_state(app, lab, api):
    create(api, ha=True, ha_pool="rack1")
    with lab.db.transaction() as s:
        a = s.scalars(select(Appliance)).one()
        a.ha_state, a.ha_reason = "waiting", "waiting: no standby available in HA pool 'rack1'"
    client = app.test_client()
    login(client, "viewer")
    html = client.get("/appliances/web1").get_data(as_text=True)
    assert 'id="ha-state">waiting<' in html
    assert "no standby available in HA pool &#39;rack1&#39;" in html
    assert "rack1" in html


def test_appliance_list_shows_ha_state_and_pool(app, lab, api):
    create(api, ha=True, ha_pool="rack1")
    create(api, name="plain", resource=MACS[1])
    client = app.test_client()
    login(client, "viewer")
    html = client.get("/appliances").get_data(as_text=True)
    assert "state-ha-watching" in html and "(rack1)" in html
    assert html.count("state-ha-") == 1  # the appliance without HA shows none
