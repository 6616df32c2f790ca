"""The REST API through Flask's test client on a real SQLite file."""

# ruff: noqa: F811  (pytest fixtures imported from tests.unit.weblab)
from __future__ import annotations

import pytest
from sqlalchemy import select

from provisiond import resources
from provisiond.model import Event, Image, Resource
from tests.unit.weblab import PASSWORD, api, app, ctx, tokens  # noqa: F401


@pytest.fixture
def many(ctx):
    with ctx.db.transaction() as s:
        for i in range(120):
            r = resources.ensure(s, f"52:54:00:00:{i // 256:02x}:{i % 256:02x}")
            r.state = "idle" if i % 3 == 0 else "new"
            r.ip = f"10.0.{i // 256}.{i % 256}"
    return 120


def test_list_paginates_and_filters(api, many):
    page = api("GET", "/resources?limit=50&offset=100").get_json()
    assert page["total"] == many and len(page["items"]) == 20 and page["offset"] == 100
    idle = api("GET", "/resources?state=idle&limit=500").get_json()
    assert idle["total"] == 40 and {r["state"] for r in idle["items"]} == {"idle"}
    found = api("GET", "/resources?q=10.0.0.7").get_json()["items"]
    assert [r["ip"] for r in found] == ["10.0.0.7", "10.0.0.70", "10.0.0.71", "10.0.0.72",
                                        "10.0.0.73", "10.0.0.74", "10.0.0.75", "10.0.0.76",
                                        "10.0.0.77", "10.0.0.78", "10.0.0.79"]  # fmt: skip
    by_mac = api("GET", "/resources?q=52-54-00-00-00-05").get_json()["items"]
    assert [r["mac"] for r in by_mac] == ["52:54:00:00:00:05"]


@pytest.mark.parametrize(
    "method, path, body, status, field",
    [
        ("GET", "/resources?limit=0", None, 400, "limit"),
        ("GET", "/resources?limit=abc", None, 400, "limit"),
        ("GET", "/resources?offset=-1", None, 400, "offset"),
        ("POST", "/resources", {"mac": "nonsense"}, 400, "mac"),
        ("POST", "/resources", {}, 400, "mac"),
        ("POST", "/resources", {"mac": "52:54:00:00:00:01", "colour": "red"}, 400, "colour"),
        ("POST", "/resources", {"mac": "52:54:00:00:00:01", "name": "Bad Name"}, 400, "name"),
        ("GET", "/resources/nosuch", None, 404, None),
        ("POST", "/appliances", {"resource": "nosuch", "mode": "sanboot"}, 404, None),
        ("POST", "/kernels", {"name": "k", "kernel_path": "/etc/passwd"}, 400, "kernel_path"),
        ("POST", "/storages", {"name": "s", "backend": "zfs", "path": "/x"}, 409, "name"),
        ("POST", "/users", {"name": "bob", "password": "short"}, 400, "password"),
        ("POST", "/users", {"name": "bob", "password": PASSWORD, "role": "god"}, 400, "role"),
        ("POST", "/tokens", {"name": ""}, 400, "name"),
        ("GET", "/jobs/999", None, 404, None),
        ("GET", "/nowhere", None, 404, None),
    ],
)
def test_errors_are_json_with_the_field_at_fault(api, method, path, body, status, field):
    resp = api(method, path, json=body) if body is not None else api(method, path)
    assert resp.status_code == status, resp.get_data(as_text=True)
    data = resp.get_json()
    assert data["error"]
    assert data.get("field") == field


def test_non_json_body_names_the_body(api):
    resp = api("POST", "/resources", data="mac=1", content_type="text/plain")
    assert resp.status_code == 400 and resp.get_json()["field"] == "body"


def test_resource_create_show_rename_delete(api, ctx):
    r = api("POST", "/resources", json={"mac": "52-54-00-AB-CD-EF", "name": "web1"})
    assert r.status_code == 201 and r.get_json()["mac"] == "52:54:00:ab:cd:ef"
    assert api("GET", "/resources/52:54:00:ab:cd:ef").get_json()["name"] == "web1"
    assert api("PATCH", "/resources/web1", json={"name": "web2"}).get_json()["name"] == "web2"
    other = api("POST", "/resources", json={"mac": "52:54:00:00:00:99"}).get_json()
    clash = api("PATCH", f"/resources/{other['id']}", json={"name": "web2"})
    assert clash.status_code == 409 and clash.get_json()["field"] == "name"
    assert api("DELETE", "/resources/web2").status_code == 204
    assert api("GET", "/resources/web2").status_code == 404
    with ctx.db.reader() as s:
        actions = [e.action for e in s.scalars(select(Event).order_by(Event.id))]
        actors = {e.actor for e in s.scalars(select(Event).where(Event.action.like("resource.%")))}
    assert "resource.renamed" in actions and "resource.removed" in actions
    assert actors == {"api:admin"}


def test_reboot_queues_an_agent_command(api, ctx):
    api("POST", "/resources", json={"mac": "52:54:00:00:00:01"})
    resp = api("POST", "/resources/52:54:00:00:00:01/reboot")
    assert resp.status_code == 202 and resp.get_json()["kind"] == "agent.reboot"
    jobs = api("GET", "/jobs?kind=agent.reboot").get_json()
    assert jobs["total"] == 1 and jobs["items"][0]["state"] == "queued"
    job_id = jobs["items"][0]["id"]
    assert api("POST", f"/jobs/{job_id}/cancel").get_json()["state"] == "cancelled"
    again = api("POST", f"/jobs/{job_id}/cancel")
    assert again.status_code == 400 and again.get_json()["field"] == "state"


def test_run_queues_a_shell_command_for_admins_only(api, ctx):
    api("POST", "/resources", json={"mac": "52:54:00:00:00:02"})
    path = "/resources/52:54:00:00:00:02/run"
    assert api("POST", path, "operator", json={"command": "true"}).status_code == 403
    bad = api("POST", path, json={})
    assert bad.status_code == 400 and bad.get_json()["field"] == "command"
    assert api("POST", path, json={"command": 3}).status_code == 400
    resp = api("POST", path, json={"command": "uname -r"})
    assert resp.status_code == 202 and resp.get_json()["kind"] == "agent.run"
    assert resp.get_json()["state"] == "queued"


def test_release_erase_and_capture_are_jobs_or_clear_refusals(api, ctx):
    api("POST", "/resources", json={"mac": "52:54:00:00:00:01"})
    ref = "/resources/52:54:00:00:00:01"
    bad = api("POST", f"{ref}/release", json={"erase": "shred"})
    assert bad.status_code == 400 and bad.get_json()["field"] == "erase"
    bad = api("POST", f"{ref}/capture", json={"disk": "/dev/vda"})
    assert bad.status_code == 400 and bad.get_json()["field"] == "name"
    with ctx.db.reader() as s:
        assert s.scalars(select(Resource)).one().state == "new"
    # no agent runs on it (it never booted): erase and capture are refused, nothing changes
    resp = api("POST", f"{ref}/erase", json={"mode": "quick"})
    assert resp.status_code == 409 and "runs no agent" in resp.get_json()["error"]
    resp = api("POST", f"{ref}/capture", json={"disk": "/dev/vda", "name": "golden"})
    assert resp.status_code == 409, resp.get_json()
    with ctx.db.reader() as s:
        assert s.scalars(select(Resource)).one().state == "new"
    resp = api("POST", f"{ref}/release")
    assert resp.status_code == 202 and resp.get_json() == {"status": "idle"}


def test_kernel_crud_and_storages_are_read_only(api):
    k = {"name": "agent", "kernel_path": "kernels/agent/vmlinuz", "is_default": True}
    assert api("POST", "/kernels", json=k).status_code == 201
    assert api("POST", "/kernels", json=k).status_code == 409
    assert (
        api("PATCH", "/kernels/agent", json={"cmdline": "quiet"}).get_json()["cmdline"] == "quiet"
    )
    assert api("GET", "/kernels").get_json()["items"][0]["is_default"] is True
    assert api("DELETE", "/kernels/agent").status_code == 204
    st = {"name": "local", "backend": "file", "path": "/srv/images"}
    assert api("POST", "/storages", json=st).status_code == 409  # tests/unit/test_storage_source.py
    assert api("GET", "/storages").get_json()["items"] == []
    assert api("GET", "/storages/local").status_code == 404


def test_appliance_create_validates_and_lists(api, ctx):
    api("POST", "/resources", json={"mac": "52:54:00:00:00:01"})
    with ctx.db.transaction() as s:
        s.add(Image(name="debian", size=1024))
    bad = api("POST", "/appliances", json={"resource": "52:54:00:00:00:01", "mode": "floppy"})
    assert bad.status_code == 400 and bad.get_json()["field"] == "mode"
    no_image = api("POST", "/appliances", json={"resource": "52:54:00:00:00:01", "mode": "local"})
    assert no_image.get_json()["field"] == "image"
    req = {"resource": "52:54:00:00:00:01", "mode": "sanboot", "image": "debian", "name": "web"}
    ok = api("POST", "/appliances", json={**req, "params": {"a": 1}})
    assert ok.status_code == 201 and ok.get_json()["params"] == {"a": "1"}
    assert api("GET", "/appliances?mode=sanboot").get_json()["total"] == 1
    assert api("GET", "/images/debian").get_json()["used_by"] == ["web"]
    assert api("PATCH", "/appliances/web", json={"ha": True}).get_json()["ha"] is True
    assert api("DELETE", "/appliances/web").status_code == 204


def test_users_and_tokens(app, api):
    made = api("POST", "/users", json={"name": "carol", "password": PASSWORD, "role": "operator"})
    assert made.status_code == 201 and "password_hash" not in made.get_json()
    tok = api("POST", "/tokens", json={"name": "ci", "user": "carol"}).get_json()
    client = app.test_client()
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {tok['token']}"}).get_json()
    assert me == {"id": made.get_json()["id"], "name": "carol", "role": "operator", "via": "token"}
    mine = api("GET", "/tokens", "operator").get_json()["items"]
    assert {t["user"] for t in mine} == {"operator"}  # an operator sees only their own
    assert api("DELETE", f"/tokens/{tok['id']}", "operator").status_code == 404
    assert api("DELETE", f"/tokens/{tok['id']}").status_code == 204
    gone = client.get("/api/v1/me", headers={"Authorization": f"Bearer {tok['token']}"})
    assert gone.status_code == 401
    last = api("DELETE", "/users/admin")
    assert last.status_code == 409 and "last admin" in last.get_json()["error"]


def test_events_filter_and_paginate(api):
    for i in range(5):
        api("POST", "/resources", json={"mac": f"52:54:00:00:00:{i:02x}"})
    page = api("GET", "/events?action=resource.discovered&limit=2").get_json()
    assert page["total"] == 5 and len(page["items"]) == 2
    assert page["items"][0]["id"] > page["items"][1]["id"]  # newest first
