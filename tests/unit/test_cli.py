"""The CLI through click's runner against a real SQLite file."""

from __future__ import annotations

import json
import stat

import pytest

from provisiond import config as configmod
from provisiond import resources
from provisiond.model import Image
from tests.unit.clilab import cli as cli  # fixtures
from tests.unit.clilab import db as db


def test_init_twice_keeps_keys_and_password(cli, config_file):
    first = cli("init").output
    assert "admin password (shown once" in first
    cfg = configmod.load(config_file)
    key = cfg.ssh_key_path.read_bytes()
    assert stat.S_IMODE(cfg.ssh_key_path.stat().st_mode) == 0o600
    second = cli("init").output
    assert "admin password" not in second and "admin user exists" in second
    assert cfg.ssh_key_path.read_bytes() == key
    assert (cfg.boot_assets_dir / "undionly.kpxe").is_file()


def test_resource_list_show_rm_and_json(cli, db):
    with db.transaction() as s:
        resources.ensure(s, "52:54:00:aa:bb:01")
        r = resources.ensure(s, "52:54:00:aa:bb:02")
        r.name, r.ip = "web1", "10.77.0.50"
    table = cli("resource", "list").output
    assert "r-525400aabb01" in table and "web1" in table and "STATE" in table
    rows = json.loads(cli("resource", "list", "--json").output)
    assert [r["mac"] for r in rows] == ["52:54:00:aa:bb:01", "52:54:00:aa:bb:02"]
    for ref in ("web1", "10.77.0.50", "52-54-00-AA-BB-02", "r-525400aabb02"):
        shown = json.loads(cli("resource", "show", ref, "--json").output)
        assert shown["name"] == "web1"
    cli("resource", "rm", "web1")
    assert len(json.loads(cli("resource", "list", "--json").output)) == 1
    assert "web1" in cli("event", "list").output


def test_errors_name_the_object_and_what_to_do(cli, db):
    res = cli("resource", "show", "nosuch", ok=False)
    assert res.exit_code == 1
    assert "resource 'nosuch' not found" in res.output and "provisiond resource list" in res.output
    res = cli("appliance", "start", "ghost", ok=False)
    assert "appliance 'ghost' not found" in res.output
    res = cli("job", "show", "99", ok=False)
    assert "job 99 not found" in res.output


def test_appliance_create_refuses_bad_input_and_changes_nothing(cli, db):
    with db.transaction() as s:
        resources.ensure(s, "52:54:00:aa:bb:03")
        s.add(Image(name="debian", size=1))
    r = cli("appliance", "create", "--resource", "r-525400aabb03", "--mode", "sanboot", ok=False)
    assert "needs --image" in r.output
    r = cli("appliance", "create", "--resource", "r-525400aabb03", "--mode", "local",
            "--image", "nope", ok=False)  # fmt: skip
    assert "image 'nope' not found" in r.output
    assert json.loads(cli("appliance", "list", "--json").output) == []
    cli("appliance", "create", "--resource", "r-525400aabb03", "--mode", "local",
        "--image", "debian", "--disk", "/dev/vda", "--name", "web")  # fmt: skip
    r = cli("appliance", "create", "--resource", "r-525400aabb03", "--mode", "sanboot",
            "--image", "debian", ok=False)  # fmt: skip
    assert "already belongs to appliance 'web'" in r.output
    shown = json.loads(cli("appliance", "show", "web", "--json").output)
    assert shown["params"] == {"disk": "/dev/vda"} and shown["state"] == "stopped"
    # a machine that is busy elsewhere is refused, and nothing changes
    with db.transaction() as s:
        resources.ensure(s, "52:54:00:aa:bb:05").state = "releasing"
    cli("appliance", "create", "--resource", "r-525400aabb05", "--mode", "template",
        "--name", "inst")  # fmt: skip
    r = cli("appliance", "start", "inst", ok=False)
    assert "is releasing; it must be idle" in r.output
    assert json.loads(cli("appliance", "show", "inst", "--json").output)["state"] == "stopped"
    assert json.loads(cli("job", "list", "--json").output) == []
    # a deployable mode queues a job for the daemon's runner
    out = cli("appliance", "start", "web").output
    assert "starting (job 1;" in out
    assert json.loads(cli("resource", "show", "r-525400aabb03", "--json").output)["state"] == (
        "deploying"
    )
    r = cli("appliance", "rm", "web", ok=False)
    assert "stop it first" in r.output
    cli("appliance", "rm", "inst")
    assert [a["name"] for a in json.loads(cli("appliance", "list", "--json").output)] == ["web"]


def test_config_check(cli, config_file, tmp_path):
    assert "OK" in cli("config", "check").output
    bad = tmp_path / "bad.toml"
    bad.write_text("http_port = -1\n")
    r = cli("config", "check", str(bad), ok=False)
    assert r.exit_code == 1 and "http_port = -1" in r.output and "1 to 65535" in r.output


KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDk7nSx0ucIm2yZ0FuvAOZSnD0LNZ7v1zJ6Ju2Kb2W5X"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZ1dGhlaXJzLWtleS1pcy1ub3Qtb3Vycy0wMDAwMDAw"


@pytest.mark.parametrize(
    ("pinning", "new_boot_state"), [("boot", "idle"), ("resource", "key-changed")]
)
def test_host_key_pinning_per_boot_or_per_resource(db, cli, pinning, new_boot_state):
    """'boot': a new boot's first key is pinned; 'resource': any other key needs accept-key."""
    mac = "52:54:00:00:0b:01"
    body = {"mac": mac, "hostkey": KEY_A, "inventory": {}}
    with db.transaction() as s:
        res, _token = resources.enroll(s, mac, pinning, "test")
        resources.register(s, res, body, "10.0.0.5")
        assert (res.state, res.ip) == ("idle", "10.0.0.5")
        # the same boot, another key: held, whatever the pinning
        resources.register(s, res, {**body, "hostkey": KEY_B}, "10.0.0.6")
        assert res.state == "key-changed" and res.hostkey == KEY_A and res.ip == "10.0.0.5"
        with pytest.raises(resources.Conflict, match="accept-key"):
            resources.remote_target(res)
    out = cli("resource", "accept-key", mac).output
    assert "accepted; idle" in out
    with db.transaction() as s:
        res = resources.find(s, mac)
        assert (res.state, res.hostkey, res.ip) == ("idle", KEY_B, "10.0.0.6")
        assert resources.remote_target(res) == (res.display_name, "10.0.0.6", KEY_B)
        # a reboot (a new token) with a fresh initrd key
        resources.enroll(s, mac, pinning, "test")
        resources.register(s, res, {**body, "hostkey": KEY_A}, "10.0.0.6")
        assert res.state == new_boot_state
    assert cli("resource", "accept-key", "52:54:00:00:0b:99", ok=False).exit_code == 1
