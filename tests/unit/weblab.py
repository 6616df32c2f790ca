"""Shared fixtures for the web tests: a real app on a real SQLite file, users per role."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from provisiond import config as configmod
from provisiond import lookup, resources, users
from provisiond.app import build_context
from provisiond.model import User
from tests.conftest import write_config
from web import create_app

PASSWORD = "correct horse battery"
ROLES = ("viewer", "operator", "admin")


_seeded: dict[Path, Path] = {}  # the session's base temp dir -> its seeded database


def seeded_db(tmp_path_factory) -> Path:
    """A database migrated to head with one user per role, made once per session.

    Every ``app`` starts from a copy: the migrations and the three password hashes
    (deliberately slow) cost about half a second per web test otherwise.
    """
    key = tmp_path_factory.getbasetemp()
    if key not in _seeded:
        tmp = tmp_path_factory.mktemp("seeded-db")
        ctx = build_context(configmod.load(write_config(tmp)))
        try:
            ctx.db.migrate()
            with ctx.db.transaction() as s:
                for role in ROLES:
                    users.create(s, role, PASSWORD, role, "test")
        finally:
            ctx.db.dispose()
        _seeded[key] = tmp / "state" / "provisiond.db"
    return _seeded[key]


def copy_db(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite database (its WAL included), by SQLite's backup API."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(src)) as a, closing(sqlite3.connect(dst)) as b:
        a.backup(b)


@pytest.fixture
def app(tmp_path, tmp_path_factory):
    cfg = configmod.load(write_config(tmp_path))
    copy_db(seeded_db(tmp_path_factory), Path(cfg.database_url[len("sqlite:///") :]))
    ctx = build_context(cfg)
    flask_app = create_app(ctx)
    flask_app.testing = True
    yield flask_app
    ctx.db.dispose()


@pytest.fixture
def ctx(app):
    return app.extensions["provisiond"]


def csrf_of(client) -> str:
    html = client.get("/login").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, name: str, password: str = PASSWORD):
    token = csrf_of(client)
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token})


@pytest.fixture
def tokens(app):
    """One API token per role."""
    out = {}
    with app.extensions["provisiond"].db.transaction() as s:
        for role in ROLES:
            _, secret = users.create_token(s, lookup.find(s, User, role), "t", "test")
            out[role] = secret
    return out


@pytest.fixture
def api(app, tokens):
    client = app.test_client()

    def call(method: str, path: str, role: str = "admin", **kw):
        headers = {"Authorization": f"Bearer {tokens[role]}"}
        return client.open("/api/v1" + path, method=method, headers=headers, **kw)

    return call


def add_node(ctx, n: int, state: str = "idle") -> str:
    """A resource ``node<n>`` (MAC 52:54:00:00:30:<n>) in ``state``; returns its name."""
    with ctx.db.transaction() as s:
        r = resources.ensure(s, f"52:54:00:00:30:{n:02x}")
        r.name, r.state = f"node{n}", state
    return f"node{n}"
