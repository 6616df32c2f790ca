"""Every route of the app: authentication, roles and CSRF, enumerated from the URL map."""

# ruff: noqa: F811  (pytest fixtures imported from tests.unit.weblab)
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from provisiond import lookup, users
from provisiond.model import User
from tests.unit.weblab import PASSWORD, api, app, csrf_of, ctx, login, tokens  # noqa: F401

#: endpoints reachable without a user: each has its own protection or none is needed
ALLOW_LIST = {"static", "healthz", "ui.login"}
# per-boot agent tokens and one-time install tokens: tests/interop, test_template_deploy.py
ALLOW_BLUEPRINTS = {"boot", "agent", "install", "hareport"}  # each checks its own token
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def routes(app):
    """(endpoint, method, concrete path) for every rule, arguments filled with '1'."""
    out = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((rule.endpoint, method, path))
    return out


def test_route_table_is_not_empty_and_covers_api_and_ui(app):
    eps = {ep for ep, _, _ in routes(app)}
    assert {"api.resource_list", "ui.resource_list", "ui.assign", "api.openapi"} <= eps
    assert len(eps) > 60


def test_without_authentication_api_is_401_and_ui_redirects_to_login(app):
    client = app.test_client()
    checked = 0
    for endpoint, method, path in routes(app):
        if endpoint in ALLOW_LIST or endpoint.split(".")[0] in ALLOW_BLUEPRINTS:
            continue
        resp = client.open(path, method=method)
        if path.startswith("/api/"):
            assert resp.status_code == 401, (method, path)
            assert "error" in resp.get_json()
        else:
            assert resp.status_code == 302, (method, path, resp.status_code)
            assert resp.headers["Location"].startswith("/login"), (method, path)
        checked += 1
    assert checked > 50


def test_allow_list_answers_without_a_session(app):
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/login").status_code == 200
    assert client.get("/static/app.css").status_code == 200
    # chunk streams: their own agent token, not a session
    assert client.get("/agent/v1/stream/1/manifest").status_code == 401


def test_a_bad_api_token_is_401(app):
    resp = app.test_client().get("/api/v1/resources", headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401


@pytest.mark.parametrize("via", ["session", "token"])
def test_viewer_cannot_change_anything(app, tokens, via):
    client = app.test_client()
    headers = {}
    if via == "session":
        login(client, "viewer")
        headers["X-CSRF-Token"] = csrf_of(client)
    else:
        headers["Authorization"] = f"Bearer {tokens['viewer']}"
    n = 0
    for endpoint, method, path in routes(app):
        if method not in UNSAFE or endpoint in ALLOW_LIST | {"ui.logout"}:
            continue
        if endpoint.split(".")[0] in ALLOW_BLUEPRINTS:
            continue
        if via == "token" and not path.startswith("/api/"):
            continue
        resp = client.open(path, method=method, headers=headers, json={})
        assert resp.status_code == 403, (via, method, path, resp.status_code)
        n += 1
    assert n > 15


def test_viewer_can_read(app):
    client = app.test_client()
    login(client, "viewer")
    for path in ("/", "/resources", "/jobs", "/events", "/api/v1/resources", "/api/v1/events"):
        assert client.get(path).status_code == 200, path


def test_operator_cannot_manage_users(app, tokens):
    client = app.test_client()
    login(client, "operator")
    csrf = csrf_of(client)
    for endpoint, method, path in routes(app):
        if "user" not in endpoint:
            continue
        resp = client.open(path, method=method, headers={"X-CSRF-Token": csrf}, json={})
        assert resp.status_code == 403, (method, path)
    api_resp = app.test_client().post(
        "/api/v1/users",
        json={"name": "x", "password": PASSWORD},
        headers={"Authorization": f"Bearer {tokens['operator']}"},
    )
    assert api_resp.status_code == 403
    assert "admin" in api_resp.get_json()["error"]


def test_operator_changes_inventory(api):
    assert (
        api("POST", "/resources", "operator", json={"mac": "52:54:00:aa:00:01"}).status_code == 201
    )


@pytest.mark.parametrize("token", [None, "", "wrong"])
def test_form_without_the_csrf_token_is_refused(app, ctx, token):
    client = app.test_client()
    login(client, "admin")
    data = {"name": "mallory", "password": PASSWORD, "role": "admin"}
    if token is not None:
        data["csrf_token"] = token
    resp = client.post("/users", data=data)
    assert resp.status_code == 400
    assert "CSRF" in resp.get_data(as_text=True)
    with ctx.db.reader() as s:
        assert s.scalars(select(User).where(User.name == "mallory")).first() is None
    data["csrf_token"] = csrf_of(client)
    assert client.post("/users", data=data).status_code == 302


def test_login_form_needs_csrf_too(app):
    resp = app.test_client().post("/login", data={"name": "admin", "password": PASSWORD})
    assert resp.status_code == 400


def test_session_cookie_is_httponly_and_samesite(app):
    resp = login(app.test_client(), "admin")
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert resp.status_code == 302 and resp.headers["Location"] == "/"


def test_login_rotates_the_session_and_logout_ends_it(app):
    client = app.test_client()
    before = csrf_of(client)
    login(client, "admin")
    assert csrf_of(client) != before
    client.post("/logout", data={"csrf_token": csrf_of(client)})
    assert client.get("/").status_code == 302


def test_repeated_failures_are_slowed_down(app, ctx):
    client = app.test_client()
    codes = [login(client, "admin", "wrong-password").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    assert login(client, "admin").status_code == 429  # even the right password must wait
    assert "Wait" in login(client, "admin").get_data(as_text=True)
    with ctx.db.reader() as s:
        from provisiond.model import Event

        fails = s.scalars(select(Event).where(Event.action == "user.login_failed")).all()
        assert len(fails) == 3


def test_role_change_ends_the_session_and_applies_at_the_next_login(app, ctx):
    client = app.test_client()
    login(client, "operator")
    assert client.get("/users").status_code == 403
    with ctx.db.transaction() as s:
        users.update(s, lookup.find(s, User, "operator"), "test", role="admin")
    assert client.get("/users").status_code == 302  # issue 11 finding 6: session ended
    login(client, "operator")
    assert client.get("/users").status_code == 200


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "failures, elapsed, must_wait",
    [
        (2, 0, 0.0),  # under the free allowance
        (3, 0, 1.0),  # first slow-down: base
        (4, 0, 2.0),  # doubles
        (5, 1.5, 2.5),  # 4 s minus what passed
        (20, 0, 60.0),  # capped
    ],
)
def test_login_throttle_table(failures, elapsed, must_wait):
    clock = FakeClock()
    t = users.LoginThrottle(free=3, base=1.0, cap=60.0, clock=clock, name_free=100)
    for i in range(failures):
        while t.admit("10.0.0.1", "a") > 0:  # admitted attempts are the counted ones
            clock.now += 0.25
        if i == failures - 1:
            last = clock.now
    clock.now = last + elapsed
    assert t.admit("10.0.0.1", "a") == pytest.approx(must_wait)
    assert t.admit("10.0.0.9", "a") == 0.0  # another address: its own count
    t.succeeded("10.0.0.9", "a")
    clock.now += 900.1  # an idle record is forgotten
    assert t.admit("10.0.0.1", "a") == 0.0


def test_login_throttle_own_success_does_not_reset_the_address():
    clock = FakeClock()
    t = users.LoginThrottle(free=3, base=1.0, cap=60.0, clock=clock, name_free=100)
    for _ in range(10):  # guess, guess, then log in to one's own account, again and again
        for name in ("admin", "admin", "mallory"):
            if t.admit("10.0.0.1", name) == 0.0 and name == "mallory":
                t.succeeded("10.0.0.1", name)
        clock.now += 0.5
    assert t.admit("10.0.0.1", "admin") > 0.0


def test_login_throttle_names_have_a_larger_allowance():
    clock = FakeClock()
    t = users.LoginThrottle(free=3, base=1.0, cap=60.0, clock=clock, name_free=5)
    admitted = [t.admit(f"10.0.0.{i}", "admin") == 0.0 for i in range(8)]  # a spray
    assert admitted == [True] * 5 + [False] * 3
    assert t.admit("10.0.0.1", "other") == 0.0


def test_accept_key_is_for_admins_in_api_and_ui(app, api, ctx):
    """A key-changed resource: operators may not accept its key; an admin may (API and UI)."""
    from provisiond import resources

    key_a = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDk7nSx0ucIm2yZ0FuvAOZSnD0LNZ7v1zJ6Ju2Kb2W5X"
    key_b = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZ1dGhlaXJzLWtleS1pcy1ub3Qtb3Vycy0wMDAwMDAw"
    with ctx.db.transaction() as s:
        res, _ = resources.enroll(s, "52:54:00:00:0c:01", "boot", "test")
        resources.register(s, res, {"mac": res.mac, "hostkey": key_a, "inventory": {}}, "10.0.0.5")
        resources.register(s, res, {"mac": res.mac, "hostkey": key_b, "inventory": {}}, "10.0.0.5")
        rid = res.id
    assert api("POST", f"/resources/{rid}/accept-key", role="operator").status_code == 403
    page = app.test_client()
    login(page, "operator")
    csrf = csrf_of(page)
    assert (
        page.post(f"/resources/{rid}/accept-key", headers={"X-CSRF-Token": csrf}).status_code == 403
    )
    login(page, "admin")
    html = page.get(f"/resources/{rid}").get_data(as_text=True)
    assert "key-changed" in html and "Accept new host key" in html
    resp = api("POST", f"/resources/{rid}/accept-key")
    assert resp.status_code == 200 and resp.get_json()["state"] == "idle"
    assert api("POST", f"/resources/{rid}/accept-key").status_code == 409
