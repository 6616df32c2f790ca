"""The template deployer's server side: bundle, boot policy, the one-time report-in."""

# ruff: noqa: F811  (pytest fixtures imported from tests.unit.weblab)
from __future__ import annotations

import io
import tarfile

import pytest

from provisiond import appliances, lookup, resources
from provisiond.model import Appliance, Job
from provisiond.policy import DatabasePolicy
from provisiond.security import hash_token
from provisiond.templatedeploy import make_bundle
from pxe.boot import BootAction, Machine
from tests.unit.weblab import app, ctx  # noqa: F401

MAC = "52:54:00:7e:00:09"
HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG2p8LXb0mYI1tV8Hq3rP8mW0Y1qk3X1mZ0Yp2wq7Q9b"


def test_bundle_is_a_tar_with_the_declared_modes():
    files = {"target/root/.ssh/authorized_keys": "ssh-ed25519 AAAA k\n", "filesystems": "1\n"}
    modes = {"target/root/.ssh": 0o700, "target/root/.ssh/authorized_keys": 0o600}
    data = make_bundle(files, modes)
    assert data == make_bundle(files, modes)  # reproducible
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: (m.type, m.mode) for m in tar.getmembers()}
        key = tar.extractfile("target/root/.ssh/authorized_keys").read()
    assert got["target/root/.ssh"] == (tarfile.DIRTYPE, 0o700)
    assert got["target/root/.ssh/authorized_keys"] == (tarfile.REGTYPE, 0o600)
    assert got["target"] == (tarfile.DIRTYPE, 0o755) and got["filesystems"][1] == 0o644
    assert key == b"ssh-ed25519 AAAA k\n"


@pytest.fixture
def starting(ctx):
    """A template appliance being started: its job runs with a callback token."""
    with ctx.db.transaction() as s:
        res = resources.ensure(s, MAC)
        app = appliances.create(s, name="tpl1", resource=res, mode="template",
                                params={"hostname": "tpl1"})  # fmt: skip
        job = appliances.start(s, app)
        job.state = "running"
        job.params = {"callback_hash": hash_token("one-time-token-123456")}
        ids = {"job": job.id, "resource": res.id}
    ctx.inventory.refresh()
    return ids


def spec_of(ctx):
    ctx.inventory.refresh()
    return DatabasePolicy(ctx.config, ctx.inventory).boot_spec(Machine(mac=MAC))


def test_policy_agent_while_installing_disk_after(ctx, starting):
    assert spec_of(ctx).action == BootAction.DEPLOY  # the agent runs the install
    with ctx.db.transaction() as s:
        app = lookup.find(s, Appliance, "tpl1")
        app.params = {**app.params, "installed": "2026-01-01T00:00:00Z"}
    assert spec_of(ctx).action == BootAction.LOCAL_DISK  # the agent's reboot
    with ctx.db.transaction() as s:
        app = lookup.find(s, Appliance, "tpl1")
        app.params = {"hostname": "tpl1"}
        appliances.booted(s, app.resource_id)
    assert spec_of(ctx).action == BootAction.LOCAL_DISK  # active


def done(client, token: str, **form):
    return client.post("/install/v1/done", headers={"Authorization": f"Bearer {token}"},
                       data={"hostname": "tpl1", "hostkey": HOSTKEY, **form})  # fmt: skip


def test_report_in_once_with_the_token(app, ctx, starting):
    client = app.test_client()
    assert done(client, "wrong-token-wrong-token").status_code == 401
    assert client.post("/install/v1/done").status_code == 401
    with ctx.db.reader() as s:
        assert lookup.find(s, Appliance, "tpl1").state == "starting"
    ok = done(client, "one-time-token-123456")
    assert ok.status_code == 200 and ok.get_json()["state"] == "active"
    with ctx.db.reader() as s:
        app_ = lookup.find(s, Appliance, "tpl1")
        res = resources.find(s, MAC)
        job = s.get(Job, starting["job"])
        assert (app_.state, res.state, res.hostkey) == ("active", "active", HOSTKEY)
        assert job.params == {"reported": "tpl1"}  # the hash is gone: one time only
    assert done(client, "one-time-token-123456").status_code == 401


@pytest.mark.parametrize(
    "path,status,fragment",
    [("/install/v1/rootfs/debian-12.tar.zst", 404, "provisiond rootfs build debian-12"),
     ("/install/v1/rootfs/solaris.tar.zst", 404, "known recipes"),
     ("/install/v1/rootfs/Bad_Name.tar.zst", 400, "rootfs name"),
     ("/install/v1/bundle/1", 401, "")],
)  # fmt: skip
def test_install_endpoints_refuse(app, tmp_path, monkeypatch, path, status, fragment):
    monkeypatch.setenv("PROVISIOND_ROOTFS_CACHE", str(tmp_path / "empty"))
    res = app.test_client().get(path)
    assert res.status_code == status
    assert fragment in res.get_data(as_text=True)
