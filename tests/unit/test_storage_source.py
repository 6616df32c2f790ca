"""Storages have one source: the configuration's [[storage]] tables.

The backends (StorageManager) read only the configuration. Before, ``POST``
and ``PATCH /api/v1/storages`` wrote rows no backend read. Now the API, the
CLI (``provisiond storage list``) and the UI list what the configuration
declares, and every write through the API is refused with the edit to make,
leaving the database as it was.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from provisiond import config as configmod
from provisiond import users
from provisiond.app import build_context
from provisiond.cli import main
from provisiond.errors import NotFound
from provisiond.model import Storage
from provisiond.storages import StorageManager
from tests.conftest import write_config
from web import create_app

PASSWORD = "correct horse battery"


@pytest.fixture
def lab(tmp_path):
    config = write_config(tmp_path)
    with config.open("a") as fh:
        for name in ("fast", "bulk"):
            fh.write(
                f'[[storage]]\nname = "{name}"\nbackend = "file"\npath = "{tmp_path / name}"\n'
            )
    runner = CliRunner()
    init = runner.invoke(main, ["--config", str(config), "init"])  # syncs the rows
    assert init.exit_code == 0, init.output
    ctx = build_context(configmod.load(config))
    with ctx.db.transaction() as s:  # a row left from before: declared no more
        s.add(Storage(name="old", backend="file", path="/srv/old", exporter="auto"))
        user = users.create(s, "ops", PASSWORD, "operator", "test")
        _, secret = users.create_token(s, user, "t", "test")
    app = create_app(ctx)
    client = app.test_client()

    def api(method: str, path: str, **kw):
        headers = {"Authorization": f"Bearer {secret}"}
        return client.open("/api/v1" + path, method=method, headers=headers, **kw)

    def cli(*args: str):
        result = runner.invoke(main, ["--config", str(config), *args])
        assert result.exit_code == 0, result.output
        return result.output

    def ui(path: str):
        web = app.test_client()
        html = web.get("/login").get_data(as_text=True)
        csrf = html.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        web.post("/login", data={"name": "ops", "password": PASSWORD, "csrf_token": csrf})
        return web.get(path).get_data(as_text=True)

    yield ctx, api, cli, ui
    ctx.db.dispose()


def _rows(ctx) -> list[tuple]:
    with ctx.db.reader() as s:
        return [
            (r.id, r.name, r.backend, r.path, r.exporter)
            for r in s.scalars(select(Storage).order_by(Storage.id))
        ]


def test_api_cli_ui_and_backends_list_the_same_storages(lab):
    ctx, api, cli, ui = lab
    backends = [st.name for st in ctx.config.storages]
    manager = StorageManager(ctx.config)
    assert [manager.settings(name).name for name in backends] == ["fast", "bulk"]
    items = api("GET", "/storages").get_json()["items"]
    listed = json.loads(cli("storage", "list", "--json"))
    for shown in (items, listed):
        assert [d["name"] for d in shown if d["declared"]] == backends
        assert [d["name"] for d in shown if not d["declared"]] == ["old"]
    page = ui("/storages")
    assert all(name in page for name in backends)
    assert "not declared any more: no backend serves it" in page
    with pytest.raises(NotFound):
        manager.settings("old")  # listed as undeclared because no backend serves it
    one = api("GET", "/storages/fast").get_json()
    assert one["declared"] and one["path"].endswith("/fast") and one["volumes"] == []
    assert api("GET", "/storages/nope").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "says"),
    [
        ("POST", "/storages", {"name": "new", "backend": "file", "path": "/x"},
         "add a [[storage]] table there"),
        ("POST", "/storages", {}, "add a [[storage]] table there"),
        ("PATCH", "/storages/fast", {"exporter": "tgt"},
         "storage fast is declared in provisiond.toml"),
        ("PATCH", "/storages/fast", {"path": "/elsewhere"}, "edit [[storage]] there"),
        ("DELETE", "/storages/bulk", None, "storage bulk is declared in provisiond.toml"),
        ("DELETE", "/storages/old", None, "storage old is not declared in provisiond.toml"),
    ],
)  # fmt: skip
def test_writes_are_refused_with_the_edit_to_make_and_change_nothing(lab, method, path, body, says):
    ctx, api, _cli, _ui = lab
    before = _rows(ctx)
    resp = api(method, path, json=body) if body is not None else api(method, path)
    assert resp.status_code == 409, resp.get_data(as_text=True)
    assert says in resp.get_json()["error"]
    assert _rows(ctx) == before
    assert [st.name for st in ctx.config.storages] == ["fast", "bulk"]
