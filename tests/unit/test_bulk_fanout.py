"""The bulk "assign one image to many" action marks local-mode starts as one fan-out group."""

# ruff: noqa: F811  (pytest fixtures imported from tests.unit.weblab)
from __future__ import annotations

import pytest

from provisiond.fanout import settings
from provisiond.model import Appliance, Image, Job
from tests.unit.weblab import add_node, api, app, csrf_of, ctx, login, tokens  # noqa: F401


@pytest.mark.parametrize(
    ("n", "mode", "grouped"),
    [(3, "local", True), (2, "local", True), (1, "local", False), (2, "template", False)],
)
def test_bulk_assign_groups_local_starts_of_one_image(api, ctx, n, mode, grouped):
    with ctx.db.transaction() as s:
        s.add(Image(name="img", size=1))
    names = [add_node(ctx, 40 + i) for i in range(n)]
    body = {"resources": names, "action": "assign", "mode": mode}
    if mode == "local":
        body["image"] = "img"
    out = api("POST", "/resources/bulk", json=body).get_json()
    assert out["ok"] == n, out
    with ctx.db.reader() as s:
        fans = [(j.params or {}).get("fanout") for j in s.query(Job).order_by(Job.id)]
    assert len(fans) == n
    if grouped:
        assert len({f["group"] for f in fans}) == 1 and all(f["size"] == n for f in fans)
        assert fans[0]["group"].startswith("bulk-")
    else:
        assert fans == [None] * n


def _fans(ctx) -> list:
    with ctx.db.reader() as s:
        return [(j.params or {}).get("fanout") for j in s.query(Job).order_by(Job.id)]


@pytest.mark.parametrize(
    ("fanout", "n", "want"),
    [
        ({"transport": "auto"}, 2, {"size": 2}),
        ({"transport": "mcast", "max_wait": 45, "rate": "100m"}, 3,
         {"size": 3, "max_wait": 45, "rate": "100m"}),
        ({"max_wait": "7", "rate": "1G"}, 2, {"size": 2, "max_wait": 7, "rate": "1000m"}),
        ({"rate": "2500k"}, 2, {"size": 2, "rate": "2500k"}),
        ({"transport": "unicast", "rate": "100m"}, 3, None),
        ({"transport": "auto"}, 1, None),
    ],
)  # fmt: skip
def test_bulk_assign_passes_fanout_settings_into_the_group(api, ctx, fanout, n, want):
    with ctx.db.transaction() as s:
        s.add(Image(name="img", size=1))
    names = [add_node(ctx, 60 + i) for i in range(n)]
    body = {"resources": names, "action": "assign", "mode": "local", "image": "img",
            "fanout": fanout}  # fmt: skip
    r = api("POST", "/resources/bulk", json=body)
    assert r.status_code == 200 and r.get_json()["ok"] == n, r.get_json()
    fans = _fans(ctx)
    if want is None:
        assert fans == [None] * n
        return
    assert all({k: v for k, v in f.items() if k != "group"} == want for f in fans), fans


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"fanout": {"transport": "carrier-pigeon"}}, "use one of auto, mcast, unicast"),
        ({"fanout": {"max_wait": 0}}, "whole seconds from 1 to 3600"),
        ({"fanout": {"max_wait": 3601}}, "whole seconds from 1 to 3600"),
        ({"fanout": {"max_wait": True}}, "whole seconds"),
        ({"fanout": {"max_wait": "soon"}}, "whole seconds"),
        ({"fanout": {"rate": "fast"}}, "bits per second with k, m or g"),
        ({"fanout": {"rate": "500k"}}, "from 1m to 100g"),
        ({"fanout": {"rate": "200g"}}, "from 1m to 100g"),
        ({"fanout": {"rate": 100}}, "bits per second"),
        ({"fanout": {"colour": "red"}}, "unknown settings colour"),
        ({"fanout": "mcast"}, "fanout must be a dict"),
        ({"fanout": {"transport": "mcast"}, "resources": ["node70"]}, "at least two resources"),
        ({"fanout": {"transport": "mcast"}, "mode": "template"}, "needs action assign, mode local"),
        ({"fanout": {"rate": "10m"}, "action": "release"}, "for action assign only"),
    ],
)  # fmt: skip
def test_bulk_fanout_bad_settings_change_nothing(api, ctx, body, message):
    with ctx.db.transaction() as s:
        s.add(Image(name="img", size=1))
    names = [add_node(ctx, 70 + i) for i in range(2)]
    full = {"resources": names, "action": "assign", "mode": "local", "image": "img", **body}
    r = api("POST", "/resources/bulk", json=full)
    assert r.status_code == 400, r.get_json()
    assert message in r.get_json()["error"], r.get_json()
    assert _fans(ctx) == []  # no appliance, no job
    with ctx.db.reader() as s:
        assert s.query(Appliance).count() == 0


def test_ui_bulk_form_sends_fanout_settings(app, ctx):
    with ctx.db.transaction() as s:
        s.add(Image(name="img", size=1))
    names = [add_node(ctx, 80 + i) for i in range(2)]
    client = app.test_client()
    login(client, "admin")
    token = csrf_of(client)
    listing = client.get("/resources").get_data(as_text=True)
    assert 'name="fanout_transport"' in listing and 'name="fanout_rate"' in listing
    form = {"csrf_token": token, "action": "assign", "mode": "local", "image": "img",
            "resource": names, "fanout_transport": "mcast", "fanout_max_wait": "30",
            "fanout_rate": "300m"}  # fmt: skip
    page = client.post("/resources/bulk", data={**form, "fanout_rate": "lots"},
                       follow_redirects=True).get_data(as_text=True)  # fmt: skip
    assert "fanout rate &#39;lots&#39;" in page or "fanout rate 'lots'" in page, page
    assert _fans(ctx) == []
    page = client.post("/resources/bulk", data=form, follow_redirects=True).get_data(as_text=True)
    assert "assign: 2 of 2 done" in page
    fans = _fans(ctx)
    assert len(fans) == 2 and fans[0] == fans[1]
    assert (fans[0]["max_wait"], fans[0]["rate"], fans[0]["size"]) == (30, "300m", 2)


def test_fanout_session_settings_prefer_the_bulk_mark():
    params = {"fanout_max_wait": 5, "fanout_bitrate": "10m", "workers": 2}
    assert settings({"group": "g", "size": 2}, params) == params
    got = settings({"group": "g", "size": 2, "max_wait": 40, "rate": "200m"}, params)
    assert got == {"fanout_max_wait": 40, "fanout_bitrate": "200m", "workers": 2}
