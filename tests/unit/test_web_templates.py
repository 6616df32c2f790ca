"""Install templates through the API, the UI preview and the CLI: one preview, three faces."""

# ruff: noqa: F811  (pytest fixtures imported from tests.unit.weblab / test_cli)
from __future__ import annotations

import json

import pytest

from provisiond import resources
from tests.unit.clilab import cli, db  # noqa: F401
from tests.unit.weblab import api, app, ctx, login, tokens  # noqa: F401


@pytest.fixture(autouse=True)
def empty_rootfs_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISIOND_ROOTFS_CACHE", str(tmp_path / "rootfs-cache"))


@pytest.fixture
def machine(ctx):
    with ctx.db.transaction() as s:
        r = resources.ensure(s, "52:54:00:12:34:56")
        r.name, r.inventory = "web1", {"disks": [{"name": "vda"}], "firmware": "uefi"}


def test_api_lists_shows_and_renders(api, machine):
    names = {t["name"] for t in api("GET", "/templates").get_json()["items"]}
    assert {"fai-debian-12", "debian-preseed", "windows-unattend"} <= names
    src = api("GET", "/templates/fai-debian-12/target/etc/hostname").get_json()
    assert src["files"] == {"target/etc/hostname": "{{ params.hostname }}\n"}
    out = api("POST", "/templates/fai-debian-12/render", "operator",
              json={"resource": "web1", "params": {"hostname": "db1"}}).get_json()  # fmt: skip
    assert out["files"]["target/etc/hostname"] == "db1\n"
    assert "label: gpt" in out["files"]["partitions.sfdisk"]  # firmware from the inventory


@pytest.mark.parametrize(
    "path,payload,status,fragment",
    [("/templates/../etc/render", {"resource": "web1"}, 400, "template name"),
     ("/templates/Bad_Name/render", {"resource": "web1"}, 400, "template name"),
     ("/templates/nothing/render", {"resource": "web1"}, 404, "known:"),
     ("/templates/fai-debian-12/render", {"resource": "nobody"}, 404, "nobody"),
     ("/templates/fai-debian-12/render", {"resource": "web1", "params": {"network": "static"}},
      400, "variable 'address' is undefined"),
     ("/templates/fai-debian-12/render", {"resource": "web1", "params": {"hostname": "a\nb"}},
      400, "hostname")],
)  # fmt: skip
def test_api_render_errors(api, machine, path, payload, status, fragment):
    res = api("POST", path, "operator", json=payload)
    assert res.status_code == status
    if fragment:
        assert fragment in res.get_json()["error"]


def test_api_render_needs_operator(api, machine):
    res = api("POST", "/templates/fai-debian-12/render", "viewer", json={"resource": "web1"})
    assert res.status_code == 403


def test_ui_preview_shows_files_and_errors(app, machine):
    client = app.test_client()
    login(client, "operator")
    page = client.get("/templates?template=fai-debian-12&resource=web1&params=hostname%3Dui1")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "target/etc/hostname" in html and "ui1" in html
    bad = client.get("/templates?template=fai-debian-12&resource=web1&params=network%3Dstatic")
    assert "variable &#39;address&#39; is undefined" in bad.get_data(as_text=True)


def test_cli_template_list_show_render(cli, db):
    with db.transaction() as s:
        r = resources.ensure(s, "52:54:00:aa:bb:01")
        r.name = "web2"
    assert "fai-debian-12" in cli("template", "list").output
    assert "{{ params.hostname }}" in cli("template", "show", "fai-debian-12").output
    out = cli("template", "render", "debian-preseed", "--resource", "web2",
              "--param", "mirror_host=mirror.example").output  # fmt: skip
    assert "==> kernel command line <==" in out and "auto=true" in out
    assert "d-i netcfg/get_hostname string web2" in out
    data = json.loads(cli("template", "render", "fai-debian-12", "--resource", "web2",
                          "--json").output)  # fmt: skip
    assert data["files"]["target/etc/hostname"] == "web2\n"
    bad = cli("template", "render", "/etc/passwd", "--resource", "web2", ok=False)
    assert bad.exit_code == 1 and "template name" in bad.output
    missing = cli("template", "render", "debian-preseed", "--resource", "web2", ok=False)
    assert "variable 'mirror_host' is undefined" in missing.output


def test_a_preview_never_opens_a_stored_secret(api, ctx, machine):
    """The machine's rendered answer file carries its sealed password; an operator's preview
    shows ``***`` (the API answer is no way around the sealing)."""
    from provisiond import appliances, installs

    with ctx.db.transaction() as s:
        res = resources.find(s, "web1")
        app = appliances.create(s, name="win1", resource=res, mode="template")
        app.params = installs.protect_params(
            {"template": "windows-unattend", "windows_admin_password": "Adm1n-Secret",
             "windows_share": "\\\\10.0.0.1\\win"}, ctx.config.state_dir)  # fmt: skip
    out = api("POST", "/templates/windows-unattend/render", "operator",
              json={"resource": "web1"})  # fmt: skip
    assert out.status_code == 200, out.get_json()
    text = json.dumps(out.get_json())
    assert "Adm1n-Secret" not in text and "sealed:v1:" not in text
    assert "<Value>***</Value>" in text
    with ctx.db.reader() as s:  # what the machine gets: opened
        res = resources.find(s, "web1")
        app = s.get(type(app), app.id)
        v = installs.variables(ctx.config, res, app, "windows-unattend")
    assert v["params"]["windows_admin_password"] == "Adm1n-Secret"
