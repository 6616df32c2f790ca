"""Template sets stored in the database: checked in the sandbox at save time, then rendered
like the shipped ones — through the API, the UI form and the CLI (one set of rules)."""

# ruff: noqa: F811  (pytest fixtures imported from tests.unit.weblab / test_cli)
from __future__ import annotations

import json

import pytest

from provisiond import resources
from provisiond.model import Template
from tests.unit.clilab import cli, db  # noqa: F401
from tests.unit.weblab import api, app, csrf_of, ctx, login, tokens  # noqa: F401

PRESEED = ("d-i netcfg/get_hostname string {{ params.hostname }}\n"
           "d-i mirror/http/hostname string {{ params.mirror_host }}\n")  # fmt: skip
GOOD = {"name": "my-preseed", "kind": "preseed", "description": "site preseed",
        "answer": "preseed.cfg", "files": {"preseed.cfg": PRESEED},
        "cmdline": "auto=true url={{ server.answer_url }}"}  # fmt: skip


@pytest.fixture(autouse=True)
def empty_rootfs_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISIOND_ROOTFS_CACHE", str(tmp_path / "rootfs-cache"))


@pytest.fixture
def machine(ctx):
    with ctx.db.transaction() as s:
        r = resources.ensure(s, "52:54:00:12:34:57")
        r.name, r.inventory = "web3", {"disks": [{"name": "vda"}], "firmware": "bios"}


def stored(ctx) -> list[str]:
    with ctx.db.reader() as s:
        return [t.name for t in s.query(Template).all()]


def test_api_stores_renders_replaces_and_removes(api, ctx, machine):
    res = api("POST", "/templates", "operator", json=GOOD)
    assert res.status_code == 201, res.get_json()
    assert res.get_json()["origin"] == "stored"
    items = {t["name"]: t for t in api("GET", "/templates").get_json()["items"]}
    assert (
        items["my-preseed"]["kind"] == "preseed" and items["debian-preseed"]["origin"] == "shipped"
    )
    assert api("GET", "/templates/my-preseed").get_json()["files"] == {"preseed.cfg": PRESEED}
    body = {"resource": "web3", "params": {"mirror_host": "m.example"}}
    out = api("POST", "/templates/my-preseed/render", "operator", json=body).get_json()
    assert out["files"]["preseed.cfg"].startswith("d-i netcfg/get_hostname string web3\n")
    assert out["cmdline"].startswith("auto=true url=http://")
    # the same name again is a conflict; PUT replaces
    assert api("POST", "/templates", "operator", json=GOOD).status_code == 409
    new = {**GOOD, "files": {"preseed.cfg": "d-i x string {{ params.hostname }}-v2\n"}}
    new.pop("name")
    assert api("PUT", "/templates/my-preseed", "operator", json=new).status_code == 200
    out = api("POST", "/templates/my-preseed/render", "operator", json={"resource": "web3"})
    assert out.get_json()["files"]["preseed.cfg"] == "d-i x string web3-v2\n"
    assert api("DELETE", "/templates/my-preseed", "operator").status_code == 204
    assert "my-preseed" not in stored(ctx)
    assert api("DELETE", "/templates/my-preseed", "operator").status_code == 404


@pytest.mark.parametrize(
    "change,status,fragment",
    [({"files": {"preseed.cfg": "ok\n{% if %}\n"}}, 400, "line 2"),
     ({"files": {"preseed.cfg": "{{ ''.__class__.__mro__ }}"}}, 400, "refused by the sandbox"),
     ({"files": {"preseed.cfg": "{{ params.__class__ }}"}}, 400, "refused by the sandbox"),
     ({"files": {"preseed.cfg": "{% for x in ().__class__.__base__.__subclasses__() %}"
                                "{{ x }}{% endfor %}"}}, 400, "refused by the sandbox"),
     ({"cmdline": "url={{ server.answer_url "}, 400, "syntax error"),
     ({"files": {"../etc/passwd": "x"}}, 400, "file path"),
     ({"files": {"/abs": "x"}}, 400, "file path"),
     ({"files": {}}, 400, "at least one file"),
     ({"name": "../x"}, 400, "template name"),
     ({"name": "debian-preseed"}, 409, "shipped set"),
     ({"kind": "nope"}, 400, "kind"),
     ({"answer": "other.cfg"}, 400, "answer file"),
     ({"answer": ""}, 400, "answer file"),
     ({"files": {"preseed.cfg": "a\0b"}}, 400, "NUL"),
     ({"files": {"preseed.cfg": "x" * 300_000}}, 400, "KiB"),
     ({"modes": {"preseed.cfg": "999"}}, 400, "octal"),
     ({"files": "text"}, 400, "files must be a dict")],
)  # fmt: skip
def test_api_refuses_bad_templates_and_stores_nothing(api, ctx, change, status, fragment):
    res = api("POST", "/templates", "operator", json={**GOOD, **change})
    assert res.status_code == status, res.get_json()
    assert fragment in res.get_json()["error"], res.get_json()
    assert stored(ctx) == []


def test_syntax_error_names_file_line_and_message(api):
    res = api("POST", "/templates", "operator",
              json={**GOOD, "files": {"preseed.cfg": "line1\nline2 {{ params.x \n"}})  # fmt: skip
    msg = res.get_json()["error"]
    assert "my-preseed/preseed.cfg" in msg and "line 2" in msg and "expected" in msg, msg


def test_viewer_cannot_store_and_shipped_sets_cannot_change(api, ctx):
    assert api("POST", "/templates", "viewer", json=GOOD).status_code == 403
    body = {k: v for k, v in GOOD.items() if k != "name"}
    res = api("PUT", "/templates/debian-preseed", "operator", json=body)
    assert res.status_code == 409 and "shipped" in res.get_json()["error"]
    assert api("DELETE", "/templates/fai-debian-12", "operator").status_code == 409


def test_a_set_in_use_is_not_removed(api, ctx, machine):
    assert api("POST", "/templates", "operator", json=GOOD).status_code == 201
    res = api("POST", "/appliances", "operator", json={
        "resource": "web3", "mode": "template", "name": "uses-it",
        "params": {"template": "my-preseed"}})  # fmt: skip
    assert res.status_code == 201, res.get_json()
    res = api("DELETE", "/templates/my-preseed", "operator")
    assert res.status_code == 409 and "uses-it" in res.get_json()["error"]
    assert stored(ctx) == ["my-preseed"]


def test_ui_form_stores_and_shows_errors(app, ctx, machine):
    client = app.test_client()
    login(client, "operator")
    form = {"name": "ui-ks", "kind": "kickstart", "path": "ks.cfg", "answer": "ks.cfg",
            "text": "network --hostname={{ params.hostname }}\n", "description": "from the UI",
            "cmdline": "inst.ks={{ server.answer_url }}"}  # fmt: skip
    bad = client.post("/templates", data={**form, "text": "{{ ''.__class__ }}",
                                          "csrf_token": csrf_of(client)})  # fmt: skip
    assert bad.status_code == 400
    assert "refused by the sandbox" in bad.get_data(as_text=True)
    assert stored(ctx) == []
    ok = client.post("/templates", data={**form, "csrf_token": csrf_of(client)})
    assert ok.status_code == 302, ok.get_data(as_text=True)
    page = client.get("/templates?template=ui-ks&resource=web3").get_data(as_text=True)
    assert "network --hostname=web3" in page and "from the UI" in page
    gone = client.post("/templates/ui-ks/delete", data={"csrf_token": csrf_of(client)})
    assert gone.status_code == 302 and stored(ctx) == []


def test_cli_add_update_rm(cli, db, tmp_path):
    with db.transaction() as s:
        resources.ensure(s, "52:54:00:aa:bb:09").name = "web9"
    src = tmp_path / "myset"
    (src / "target" / "etc").mkdir(parents=True)
    (src / "set.toml").write_text('kind = "fai"\ndescription = "a dir set"\n')
    (src / "target" / "etc" / "hostname.j2").write_text("{{ params.hostname }}\n")
    assert "template mine stored (fai, 1 files)" in cli("template", "add", "mine", "--from",
                                                         str(src)).output  # fmt: skip
    assert "mine" in cli("template", "list").output
    data = json.loads(cli("template", "render", "mine", "--resource", "web9", "--json").output)
    assert data["files"] == {"target/etc/hostname": "web9\n"}
    local = tmp_path / "h.j2"
    local.write_text("{{ params.hostname }}.lab\n")
    cli("template", "update", "mine", "--kind", "fai", "--file", f"target/etc/hostname={local}")
    data = json.loads(cli("template", "render", "mine", "--resource", "web9", "--json").output)
    assert data["files"] == {"target/etc/hostname": "web9.lab\n"}
    local.write_text("{% for %}")
    bad = cli("template", "update", "mine", "--kind", "fai", "--file",
              f"target/etc/hostname={local}", ok=False)  # fmt: skip
    assert bad.exit_code == 1 and "line 1" in bad.output
    data = json.loads(cli("template", "render", "mine", "--resource", "web9", "--json").output)
    assert data["files"] == {"target/etc/hostname": "web9.lab\n"}  # the bad one was not stored
    assert "removed" in cli("template", "rm", "mine").output
    assert cli("template", "rm", "mine", ok=False).exit_code == 1


def test_stored_set_with_extra_initrds(api, machine):
    """A WinPE-style set: its answer file comes as an extra initrd (checked, previewed)."""
    body = {"name": "my-winpe", "kind": "unattend", "answer": "autounattend.xml",
            "files": {"autounattend.xml": "<unattend>{{ params.hostname }}</unattend>\n"},
            "initrds": ["{{ server.answer_dir_url }}/autounattend.xml"]}  # fmt: skip
    bad = api("POST", "/templates", "operator",
              json={**body, "initrds": ["{{ server.__class__ }}"]})  # fmt: skip
    assert bad.status_code == 400 and "refused by the sandbox" in bad.get_json()["error"]
    assert api("POST", "/templates", "operator", json=body).status_code == 201
    out = api("POST", "/templates/my-winpe/render", "operator", json={"resource": "web3"})
    (url,) = out.get_json()["initrds"]
    assert url.startswith("http://") and url.endswith("/autounattend.xml"), url
