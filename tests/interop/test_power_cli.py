"""The power CLI as an operator runs it: the real ``provisiond`` program, a real SQLite
state, a Redfish simulator as the BMC. Checks what is stored (sealed), shown (never the
password) and done (the BMC's power really changes), and that bad input changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from provisiond import config as configmod
from provisiond import powerctl, resources
from provisiond.db import Database
from provisiond.model import Event, Resource
from tests.conftest import free_port
from tests.redfish_sim import RedfishSim

pytestmark = pytest.mark.interop
PROVISIOND = str(Path(sys.executable).with_name("provisiond"))
MAC = "52:54:00:aa:bb:07"
PASSWORD = "Tr0ub4dor&3-pw"


@pytest.fixture
def env(config_file, tmp_path):
    def run(*args, ok=True, stdin=None):
        p = subprocess.run([PROVISIOND, "--config", str(config_file), *args], input=stdin,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        if ok:
            assert p.returncode == 0, p.stdout + p.stderr
        return p

    run("init")
    cfg = configmod.load(config_file)
    db = Database(cfg.database_url)
    with db.transaction() as s:
        resources.ensure(s, MAC).name = "node7"
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    yield run, db, cfg, tmp_path / "pw"
    db.dispose()


def test_set_power_act_and_show(env):
    run, db, cfg, pwfile = env
    with RedfishSim(1, password=PASSWORD) as sim:
        bmc, url = sim.bmcs[0], sim.urls()[0]
        out = run("resource", "set-power", "node7", "--driver", "redfish", "--address", url,
                  "--user", "admin", "--password-file", str(pwfile)).stdout  # fmt: skip
        assert "power driver redfish" in out and "sealed" in out and PASSWORD not in out
        with db.reader() as s:
            row = s.get(Resource, resources.find(s, "node7").id)
            assert row.power_secret.startswith("sealed:v1:") and PASSWORD not in row.power_secret
            assert powerctl.box(cfg).open(row.power_secret) == PASSWORD
        assert run("resource", "power", "node7", "status").stdout.strip() == (
            "resource node7: power off"
        )
        run("resource", "power", "node7", "on")
        assert bmc.power == "On"
        shown = json.loads(run("resource", "show", "node7", "--json").stdout)
        assert shown["power_state"] == "on" and shown["power"]["password_set"] is True
        assert PASSWORD not in json.dumps(shown) and "sealed:" not in json.dumps(shown)
        run("resource", "power", "node7", "cycle")
        run("resource", "power", "node7", "off")
        assert bmc.resets == ["On", "PowerCycle", "ForceOff"]
        listing = run("resource", "list", "--json").stdout
        assert json.loads(listing)[0]["power_state"] == "off"
    with db.reader() as s:
        details = [e.detail for e in s.query(Event).filter(Event.action.like("resource.%power%"))]
    assert any("driver redfish" in d for d in details) and len(details) >= 4
    assert all(PASSWORD not in d for d in details)


def test_unreachable_and_refused_are_clear_and_recorded(env):
    run, db, _cfg, pwfile = env
    url = f"http://127.0.0.1:{free_port()}"
    run("resource", "set-power", "node7", "--driver", "redfish", "--address", url,
        "--user", "admin", "--password-file", str(pwfile))  # fmt: skip
    p = run("resource", "power", "node7", "on", ok=False)
    assert p.returncode == 1 and "unreachable: redfish" in p.stderr and "cannot connect" in p.stderr
    with db.reader() as s:
        assert "cannot connect" in resources.find(s, "node7").power_error
    with RedfishSim(1, password="another") as sim:
        run("resource", "set-power", "node7", "--driver", "redfish", "--address", sim.urls()[0],
            "--user", "admin", "--password-file", "-", stdin="not-it\n")  # fmt: skip
        p = run("resource", "power", "node7", "status", ok=False)
        assert "credentials: redfish" in p.stderr and "not-it" not in p.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--driver", "telnet"], "power driver 'telnet' is unknown"),
        (["--driver", "ipmi"], "needs the BMC address"),
        (["--driver", "ipmi", "--address", "10.0.0.9", "--option", "colour=red"],
         "unknown ipmi option(s) colour"),
        (["--driver", "redfish", "--address", "ftp://bmc"], "use host[:port] or a URL"),
        (["--driver", "ipmi", "--address", "10.0.0.9", "--password-file", "/nonexistent"],
         "cannot read the password file"),
    ],
)  # fmt: skip
def test_bad_settings_change_nothing(env, args, message):
    run, db, _cfg, _pw = env
    p = run("resource", "set-power", "node7", *args, ok=False)
    assert p.returncode in (1, 2) and message in p.stderr
    with db.reader() as s:
        assert resources.find(s, "node7").power_driver is None


def test_power_without_driver_and_clear_power(env):
    run, db, _cfg, _pw = env
    p = run("resource", "power", "node7", "on", ok=False)
    assert "has no power driver" in p.stderr and "set-power node7" in p.stderr
    run("resource", "set-power", "node7", "--driver", "wol")
    run("resource", "clear-power", "node7")
    with db.reader() as s:
        r = resources.find(s, "node7")
        assert r.power_driver is None and r.power_secret is None
