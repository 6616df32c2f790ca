"""The HA commands through click's runner against a real SQLite file."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from provisiond import resources
from provisiond.db import Database
from provisiond.model import Appliance, Image
from provisiond.security import hash_token
from tests.unit.clilab import cli as cli  # fixtures
from tests.unit.clilab import db as db


@pytest.fixture
def machines(db) -> Database:
    """The lab database with three idle machines and an image."""
    with db.transaction() as s:
        for i in (1, 2, 3):
            resources.ensure(s, f"52:54:00:cc:00:0{i}").state = "idle"
        s.add(Image(name="img", size=1))
    return db


def test_create_spare_status_token(cli, machines):
    cli("appliance", "create", "--resource", "52:54:00:cc:00:01", "--image", "img",
        "--mode", "sanboot", "--name", "web1", "--ha", "--ha-pool", "rack1")  # fmt: skip
    shown = json.loads(cli("appliance", "show", "web1", "--json").output)
    assert (shown["ha"], shown["ha_pool"], shown["ha_state"]) == (True, "rack1", "watching")
    assert (
        "spare of HA pool rack1"
        in cli("ha", "spare", "52:54:00:cc:00:02", "--pool", "rack1").output
    )
    st = json.loads(cli("ha", "status", "--json").output)
    assert [a["name"] for a in st["appliances"]] == ["web1"]
    assert st["spares"] == [{"name": "r-525400cc0002", "ha_pool": "rack1", "state": "idle",
                             "appliance": None, "standby": True}]  # fmt: skip
    table = cli("ha", "status").output
    assert "web1" in table and "r-525400cc0002" in table and "STANDBY" in table
    assert "in no HA pool" in cli("ha", "spare", "52:54:00:cc:00:02", "--pool", "").output
    assert json.loads(cli("ha", "status", "--json").output)["spares"] == []

    token = cli("ha", "token", "web1").stdout.strip()
    with machines.reader() as s:
        app = s.scalars(select(Appliance).where(Appliance.name == "web1")).one()
        assert app.ha_token_hash == hash_token(token) and token not in str(app.ha_token_hash)


@pytest.mark.parametrize(
    "args, words",
    [
        (("--ha",), "--ha needs --ha-pool"),
        (("--ha", "--ha-pool", "Rack_1"), "HA pool 'Rack_1'"),
    ],
)
def test_bad_ha_input_is_refused(cli, machines, args, words):
    res = cli("appliance", "create", "--resource", "52:54:00:cc:00:01", "--image", "img",
              "--mode", "sanboot", "--name", "web1", *args, ok=False)  # fmt: skip
    assert res.exit_code != 0 and words in res.output
    with machines.reader() as s:
        assert s.scalars(select(Appliance)).first() is None


def test_token_needs_ha_and_spare_needs_a_known_resource(cli, machines):
    cli("appliance", "create", "--resource", "52:54:00:cc:00:01", "--image", "img",
        "--mode", "sanboot", "--name", "plain")  # fmt: skip
    res = cli("ha", "token", "plain", ok=False)
    assert res.exit_code != 0 and "has no HA" in res.output
    res = cli("ha", "spare", "52:54:00:cc:00:99", "--pool", "rack1", ok=False)
    assert res.exit_code != 0 and "not found" in res.output
