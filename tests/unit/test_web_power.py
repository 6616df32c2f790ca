"""The power API and bulk actions through Flask's test client, a real SQLite file and a
scripted in-process power driver (the real drivers are tested against real BMC peers in
tests/interop/test_power_*.py)."""

# ruff: noqa: F811  (pytest fixtures imported from tests.unit.weblab)
from __future__ import annotations

import json

import pytest

from provisiond import power, resources
from provisiond.model import Appliance, Event, Resource
from provisiond.power import BadCredentials, BmcUnreachable, PowerAction, PowerState
from tests.unit.weblab import add_node, api, app, ctx, tokens  # noqa: F401

SECRET = "bmc-Pa55word!"


class ScriptedDriver:
    """Keeps a power state per address; addresses starting with 'dead' or 'refuse' fail."""

    states: dict[str, str] = {}
    calls: list[tuple[str, str]] = []

    def __init__(self, settings):
        self.s = settings

    def _check(self):
        if self.s.address.startswith("dead"):
            raise BmcUnreachable(f"scripted {self.s.address}: cannot connect")
        if self.s.address.startswith("refuse") or self.s.password != SECRET:
            raise BadCredentials(f"scripted {self.s.address}: refused user {self.s.user!r}")

    def status(self):
        self.calls.append((self.s.address, "status"))
        self._check()
        return PowerState(self.states.get(self.s.address, "off"))

    def act(self, action):
        self.calls.append((self.s.address, str(action)))
        self._check()
        self.states[self.s.address] = "off" if action == PowerAction.OFF else "on"


@pytest.fixture(autouse=True)
def scripted():
    power.register("scripted")(ScriptedDriver)
    ScriptedDriver.states, ScriptedDriver.calls = {}, []
    yield ScriptedDriver
    power.DRIVERS.pop("scripted", None)


def configure(api, name: str, address: str, password: str = SECRET):
    body = {"driver": "scripted", "address": address, "user": "admin", "password": password}
    return api("PUT", f"/resources/{name}/power", json=body)


def test_settings_are_admin_only_and_the_password_never_comes_back(api, ctx):
    name = add_node(ctx, 1)
    assert configure_as(api, "operator", name).status_code == 403
    r = configure(api, name, "bmc1")
    assert r.status_code == 200, r.get_json()
    for text in (r.get_data(as_text=True),
                 api("GET", f"/resources/{name}/power", "viewer").get_data(as_text=True),
                 api("GET", f"/resources/{name}").get_data(as_text=True),
                 api("GET", "/resources").get_data(as_text=True),
                 api("GET", "/events").get_data(as_text=True)):  # fmt: skip
        assert SECRET not in text and "sealed:" not in text
    shown = api("GET", f"/resources/{name}/power").get_json()
    assert shown["driver"] == "scripted" and shown["password_set"] is True
    with ctx.db.reader() as s:
        assert s.query(Resource).filter_by(name=name).one().power_secret.startswith("sealed:v1:")
    # omitting the password keeps it; "" removes it
    api("PUT", f"/resources/{name}/power", json={"driver": "scripted", "address": "bmc1b"})
    assert api("GET", f"/resources/{name}/power").get_json()["password_set"] is True
    body = {"driver": "scripted", "address": "bmc1b", "password": ""}
    api("PUT", f"/resources/{name}/power", json=body)
    assert api("GET", f"/resources/{name}/power").get_json()["password_set"] is False


def configure_as(api, role, name):
    body = {"driver": "scripted", "address": "x", "password": SECRET}
    return api("PUT", f"/resources/{name}/power", role, json=body)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"driver": "telnet"}, "driver", "unknown"),
        ({"driver": "ipmi"}, "address", "needs the BMC address"),
        ({"driver": "ipmi", "address": "b", "options": {"x": 1}}, "options", "unknown ipmi option"),
        ({"driver": "redfish", "address": "gopher://b"}, "address", "host[:port]"),
        ({"driver": "ipmi", "address": "b", "password": "a\nb"}, "password", "line break"),
        ({"driver": "ipmi", "address": "b", "colour": "red"}, "colour", "unknown field"),
        ({"driver": "ipmi", "address": 7}, "address", "must be a str"),
    ],
)
def test_bad_settings_are_refused_and_change_nothing(api, ctx, body, field, message):
    name = add_node(ctx, 2)
    r = api("PUT", f"/resources/{name}/power", json=body)
    assert r.status_code == 400 and message in r.get_json()["error"]
    assert r.get_json()["field"] == field
    assert api("GET", f"/resources/{name}/power").get_json()["driver"] is None


def test_actions_record_state_and_failures_are_told_apart(api, ctx, scripted):
    good, dead, refused, bare = (
        add_node(ctx, 3),
        add_node(ctx, 4),
        add_node(ctx, 5),
        add_node(ctx, 6),
    )
    configure(api, good, "bmc3")
    configure(api, dead, "dead4")
    configure(api, refused, "refuse5")
    r = api("POST", f"/resources/{good}/power", "operator", json={"action": "on"})
    assert r.status_code == 200 and r.get_json() == {
        "resource": good,
        "action": "on",
        "state": "on",
    }
    assert (
        api("POST", f"/resources/{good}/power", json={"action": "status"}).get_json()["state"]
        == "on"
    )
    assert api("GET", "/resources?q=node3").get_json()["items"][0]["power_state"] == "on"
    assert (
        api("POST", f"/resources/{good}/power", "viewer", json={"action": "on"}).status_code == 403
    )
    r = api("POST", f"/resources/{dead}/power", json={"action": "off"})
    assert r.status_code == 504 and r.get_json()["kind"] == "unreachable"
    assert "cannot connect" in api("GET", f"/resources/{dead}/power").get_json()["error"]
    r = api("POST", f"/resources/{refused}/power", json={"action": "status"})
    assert r.status_code == 502 and r.get_json()["kind"] == "credentials"
    r = api("POST", f"/resources/{bare}/power", json={"action": "on"})
    assert r.status_code == 409 and "has no power driver" in r.get_json()["error"]
    r = api("POST", f"/resources/{good}/power", json={"action": "explode"})
    assert r.status_code == 400 and "use on, off, cycle or status" in r.get_json()["error"]
    with ctx.db.reader() as s:
        actions = {e.action for e in s.query(Event)}
    assert {"resource.set_power", "resource.power_on", "resource.power_off"} <= actions


def test_clear_power(api, ctx):
    name = add_node(ctx, 7)
    configure(api, name, "bmc7")
    assert api("DELETE", f"/resources/{name}/power", "operator").status_code == 403
    assert api("DELETE", f"/resources/{name}/power").status_code == 204
    assert api("GET", f"/resources/{name}/power").get_json()["driver"] is None


def test_bulk_power_reports_each_resource(api, ctx, scripted):
    names = [add_node(ctx, n) for n in (10, 11, 12)]
    configure(api, names[0], "bmc10")
    configure(api, names[1], "dead11")
    r = api("POST", "/resources/bulk", "operator",
            json={"resources": [*names, names[0]], "action": "on"})  # fmt: skip
    assert r.status_code == 200
    out = r.get_json()
    assert (out["ok"], out["failed"]) == (1, 2)
    by = {i["resource"]: i for i in out["results"]}
    assert list(by) == names  # in order, the duplicate once
    assert by["node10"]["ok"] and "via scripted" in by["node10"]["detail"]
    assert "cannot connect" in by["node11"]["detail"]
    assert "has no power driver" in by["node12"]["detail"]
    assert scripted.states == {"bmc10": "on"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"resources": ["node20", "nosuch", "ghost"], "action": "on"},
         "unknown resources: nosuch, ghost; nothing was changed"),
        ({"resources": [], "action": "on"}, "non-empty list"),
        ({"resources": "node20", "action": "on"}, "non-empty list"),
        ({"resources": ["node20"], "action": "explode"}, "use one of on, off, cycle"),
        ({"resources": ["node20"], "action": "assign"}, "assign needs a mode"),
        ({"resources": ["node20"], "action": "release", "erase": "shred"}, "quick or full"),
        ({"action": "on"}, "non-empty list"),
    ],
)  # fmt: skip
def test_bulk_bad_input_changes_nothing(api, ctx, scripted, body, message):
    configure(api, add_node(ctx, 20), "bmc20")
    r = api("POST", "/resources/bulk", json=body)
    assert r.status_code == 400 and message in r.get_json()["error"]
    assert scripted.calls == []


def test_bulk_viewer_may_not(api, ctx):
    add_node(ctx, 21)
    r = api(
        "POST", "/resources/bulk", "viewer", json={"resources": ["node21"], "action": "release"}
    )
    assert r.status_code == 403


def test_bulk_release_and_assign(api, ctx):
    a, b, c = add_node(ctx, 30, "failed"), add_node(ctx, 31, "offline"), add_node(ctx, 32)
    out = api("POST", "/resources/bulk", json={"resources": [a, b], "action": "release"}).get_json()
    assert out["ok"] == 2 and all(i["detail"] == "idle" for i in out["results"])
    with ctx.db.reader() as s:
        assert {r.state for r in s.query(Resource).filter(Resource.name.in_([a, b]))} == {"idle"}
    api("POST", "/appliances", json={"resource": c, "mode": "template", "name": "taken"})
    body = {"resources": [a, b, c], "action": "assign", "mode": "template"}
    out = api("POST", "/resources/bulk", json=body).get_json()
    assert (out["ok"], out["failed"]) == (2, 1), json.dumps(out)
    by = {i["resource"]: i for i in out["results"]}
    assert "appliance app-node30 starting" in by[a]["detail"]
    assert "already belongs to appliance 'taken'" in by[c]["detail"]
    with ctx.db.reader() as s:
        apps = {x.name: x.state for x in s.query(Appliance)}
    assert apps == {"taken": "stopped", "app-node30": "starting", "app-node31": "starting"}


# --- the UI forms -------------------------------------------------------------


def ui(app, role: str):
    from tests.unit.weblab import csrf_of, login

    client = app.test_client()
    login(client, role)
    return client, csrf_of(client)


def rid_of(ctx, name: str) -> int:
    with ctx.db.reader() as s:
        return resources.find(s, name).id


def test_ui_power_settings_form_is_admin_only_and_write_only(app, ctx):
    name = add_node(ctx, 40)
    rid = rid_of(ctx, name)
    client, token = ui(app, "operator")
    page = client.get(f"/resources/{rid}").get_data(as_text=True)
    assert "no power driver" in page and 'id="power-settings"' not in page
    r = client.post(
        f"/resources/{rid}/power/settings", data={"csrf_token": token, "driver": "ipmi"}
    )
    assert r.status_code == 403
    client, token = ui(app, "admin")
    form = {"csrf_token": token, "driver": "scripted", "address": "bmc40", "user": "root",
            "password": SECRET, "options": "mode=fast\nretries=3\n"}  # fmt: skip
    r = client.post(f"/resources/{rid}/power/settings", data=form, follow_redirects=True)
    page = r.get_data(as_text=True)
    assert "power settings saved" in page and "password stored sealed" in page
    assert SECRET not in page and "sealed:v1" not in page
    assert "retries=3" in page and "bmc40" in page
    bad = {**form, "driver": "ipmi", "address": ""}
    page = client.post(f"/resources/{rid}/power/settings", data=bad,
                       follow_redirects=True).get_data(as_text=True)  # fmt: skip
    assert "power settings not saved: the ipmi driver needs the BMC address" in page
    assert api_state(ctx, name)["driver"] == "scripted"


def api_state(ctx, name):
    from provisiond import powerctl

    with ctx.db.reader() as s:
        return powerctl.describe(resources.find(s, name))


def test_ui_power_buttons_and_failures(app, ctx, scripted):
    good, dead = add_node(ctx, 41), add_node(ctx, 42)
    client, token = ui(app, "admin")
    for name, address in ((good, "bmc41"), (dead, "dead42")):
        client.post(f"/resources/{rid_of(ctx, name)}/power/settings",
                    data={"csrf_token": token, "driver": "scripted", "address": address,
                          "password": SECRET})  # fmt: skip
    client, token = ui(app, "operator")
    page = client.post(f"/resources/{rid_of(ctx, good)}/power/on", data={"csrf_token": token},
                       follow_redirects=True).get_data(as_text=True)  # fmt: skip
    assert "power on: on (via scripted)" in page and 'id="power-actions"' in page
    page = client.post(f"/resources/{rid_of(ctx, dead)}/power/cycle", data={"csrf_token": token},
                       follow_redirects=True).get_data(as_text=True)  # fmt: skip
    assert "power cycle failed (unreachable)" in page and 'id="power-error"' in page
    listing = client.get("/resources").get_data(as_text=True)
    assert 'class="power power-on">on<' in listing


def test_ui_bulk_form(app, ctx, scripted):
    names = [add_node(ctx, n) for n in (50, 51)]
    client, token = ui(app, "admin")
    client.post(f"/resources/{rid_of(ctx, names[0])}/power/settings",
                data={"csrf_token": token, "driver": "scripted", "address": "bmc50",
                      "password": SECRET})  # fmt: skip
    listing = client.get("/resources").get_data(as_text=True)
    assert 'id="bulk-actions"' in listing and 'name="resource" value="node50"' in listing
    r = client.post("/resources/bulk", follow_redirects=True,
                    data={"csrf_token": token, "action": "on", "resource": names})  # fmt: skip
    page = r.get_data(as_text=True)
    assert "on: 1 of 2 done" in page and "node51: resource node51 has no power driver" in page
    r = client.post("/resources/bulk", follow_redirects=True,
                    data={"csrf_token": token, "action": "on"})  # fmt: skip
    assert "non-empty list" in r.get_data(as_text=True)
    r = client.post("/resources/bulk", data={"action": "on", "resource": names})
    assert r.status_code in (400, 403)  # no CSRF token: refused
