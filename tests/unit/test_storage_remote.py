"""Storage hosts: host-key pinning, [[storage]] host keys, the LIO helper, remote LVM checks.

The LIO helper test really runs the shipped bootstrap with this machine's
python3 (the same command a storage host runs over SSH); this machine has no
configfs, so it must answer "unavailable" with the reason. The storage VM
test (tests/testbed/test_storage_host_vm.py) runs it against a real LIO.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import paramiko
import pytest

from provisiond import config as cfg
from storage.backends import BackendUnavailable, LvmBackend, StorageError
from storage.exporters import ExporterUnavailable, ExportSpec, lio_helper
from storage.exporters.lio_remote import RemoteLioExporter, payload
from storage.runner import FakeRunner, Result, Runner
from storage.ssh import HostKeyMismatch, HostKeyPins, SshTarget, key_line, verify_host_key
from tests.unit.lvmfixtures import load as load_fixture

FIX = Path(__file__).parent / "fixtures" / "storage"


def _key() -> paramiko.PKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    kind, b64 = pub.decode().split()
    return paramiko.PKey.from_type_string(kind, base64.b64decode(b64))


A, B = _key(), _key()


def target(tmp_path: Path, host_key: str = "", pins: bool = True) -> SshTarget:
    return SshTarget("192.0.2.9", tmp_path / "id", host_key=host_key,
                     pins_path=tmp_path / "pins.json" if pins else None)  # fmt: skip


@pytest.mark.parametrize(
    "configured, pinned, presented, outcome",
    [
        ("A", None, A, "configured"),
        ("A", None, B, "mismatch"),
        ("A", "B", A, "configured"),  # a configured key wins over an old pin
        ("", None, A, "pinned now"),
        ("", "A", A, "pinned"),
        ("", "A", B, "mismatch"),
    ],
)
def test_host_key_rules(tmp_path, configured, pinned, presented, outcome):
    keys = {"A": A, "B": B}
    t = target(tmp_path, key_line(keys[configured]) + " c" if configured else "")
    if pinned:
        HostKeyPins(t.pins_path).pin(t.host, t.port, key_line(keys[pinned]))
    before = t.pins_path.read_text() if t.pins_path.exists() else None
    if outcome == "mismatch":
        with pytest.raises(HostKeyMismatch, match="refusing to run anything"):
            verify_host_key(t, presented)
        assert (t.pins_path.read_text() if t.pins_path.exists() else None) == before
        return
    assert verify_host_key(t, presented) == outcome
    if outcome == "pinned now":
        assert json.loads(t.pins_path.read_text()) == {"192.0.2.9:22": key_line(A)}
        assert os.stat(t.pins_path).st_mode & 0o777 == 0o600


def test_no_key_and_nowhere_to_pin_is_refused(tmp_path):
    with pytest.raises(HostKeyMismatch, match="set host_key"):
        verify_host_key(target(tmp_path, pins=False), A)


def test_bad_configured_key_is_a_clear_error(tmp_path):
    with pytest.raises(StorageError, match="not a valid SSH public key"):
        verify_host_key(target(tmp_path, "ssh-ed25519 AAAAnotbase64"), A)


BASE = 'address = "10.77.0.1"\n'


def test_storage_host_config():
    c = cfg.parse(
        BASE
        + """
[[storage]]
name = "san1"
backend = "lvm"
path = "pvsan"
thin_pool = "pool0"
host = "10.77.0.50"
port = 2222
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0 storage"
devices = ["/dev/vdb"]
thin_pool_size = 1073741824
"""
    )
    st = c.storages[0]
    assert (st.host, st.port, st.user, st.devices, st.thin_pool_size) == (
        "10.77.0.50", 2222, "root", ("/dev/vdb",), 1 << 30)  # fmt: skip
    assert st.host_key.startswith("ssh-ed25519 ")


@pytest.mark.parametrize(
    "extra, key, why",
    [
        ('backend = "file"\npath = "/srv/x"\nhost = "h"', "host", "needs backend"),
        ('backend = "lvm"\npath = "vg"\nhost = "h"\ndevices = ["vdb"]', "devices", "/dev/vdb"),
        ('backend = "lvm"\npath = "vg"\nhost = "h"\nhost_key = "junk"', "host_key", "ssh-ed25519"),
        ('backend = "lvm"\npath = "vg"\ndevices = ["/dev/vdb"]', "host", "need a storage host"),
        ('backend = "lvm"\npath = "vg"\nhost = "h"\nport = 0', "port", "1 to 65535"),
    ],
)
def test_storage_host_config_errors(extra, key, why):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse(BASE + f'[[storage]]\nname = "s"\n{extra}\n')
    assert key in str(err.value) and why in str(err.value)


def test_lio_helper_runs_and_reports_missing_configfs():
    """The real bootstrap + shipped modules under python3: no LIO here -> unavailable, why."""
    exp = RemoteLioExporter(Runner(), "10.77.0.50", host="this machine")
    with pytest.raises(ExporterUnavailable, match=r"/sys/kernel/config/target missing"):
        exp.check()


def test_lio_helper_payload_carries_secret_on_stdin_only():
    runner = FakeRunner().on(["python3"], Result(0, '{"ok": true, "export": {}}\n', ""))
    exp = RemoteLioExporter(runner, "10.77.0.50")
    spec = ExportSpec("iqn.2025-01.test:a1", "/dev/pv/a1", "iqn.2025-01.test:r1", "a1",
                      "s3cretS3cret16ch")  # fmt: skip
    exp.export(spec)
    assert all("s3cretS3cret16ch" not in a for call in runner.calls for a in call)
    sent = json.loads(payload({"op": "x"}))
    assert [m for m, _ in sent["modules"]][-1] == "storage.exporters.lio_helper"
    assert lio_helper.spec_dict(spec)["chap_secret"] is None


def test_lio_helper_error_reply_becomes_storage_error():
    reply = '{"ok": false, "unavailable": false, "error": "RTSLibError: no such device"}\n'
    exp = RemoteLioExporter(FakeRunner().on(["python3"], Result(1, reply, "")), "h")
    with pytest.raises(StorageError, match="export failed: RTSLibError: no such device"):
        exp.export(ExportSpec("iqn.2025-01.test:a1", "/dev/x", "iqn.2025-01.test:r1"))


class RemoteFake(FakeRunner):
    remote = True


@pytest.mark.parametrize(
    "out, problem",
    [("nodm\n", "device-mapper missing on the storage host"),
     ("nolvm\n", "lvm2 tools missing on the storage host")],
)  # fmt: skip
def test_remote_lvm_check_runs_on_the_host(out, problem):
    r = RemoteFake().on(["sh", "-c"], out)
    with pytest.raises(BackendUnavailable, match=problem):
        LvmBackend("pv", runner=r, dm_control="/nonexistent-here-too").check()
    assert r.calls[0][:2] == ["sh", "-c"]


def test_ensure_vg_creates_vg_and_pool_once():
    lvs = load_fixture("lvs-empty.json").output
    r = RemoteFake().on(["vgs"], '{"report": [{"vg": []}]}').on(["lvs"], lvs)
    done = LvmBackend("pv", thin_pool="pool0", runner=r).ensure_vg(("/dev/vdb",), 1 << 30)
    assert ["vgcreate", "-y", "pv", "/dev/vdb"] in r.calls
    assert ["lvcreate", "-y", "-L", f"{1 << 30}b", "-T", "pv/pool0"] in r.calls
    assert len(done) == 2


def test_ensure_vg_without_devices_says_what_to_configure():
    r = RemoteFake().on(["vgs"], '{"report": [{"vg": []}]}')
    with pytest.raises(StorageError, match="no devices are configured"):
        LvmBackend("pv", runner=r).ensure_vg((), 0)


class FlakyHost(RemoteFake):
    """A storage host that is unreachable while ``down`` (as SshRunner reports it)."""

    down = True

    def run(self, argv, *, input=None, timeout=120.0, check=True):
        from storage.ssh import HostDown

        if self.down:
            raise HostDown("storage host root@192.0.2.50:22: cannot connect (timed out)")
        return super().run(argv, input=input, timeout=timeout, check=check)


def san_db(tmp_path):
    """A config with one LVM storage ``san`` on host 192.0.2.50, and its migrated database."""
    from provisiond.db import Database

    c = cfg.parse(BASE + f'state_dir = "{tmp_path}"\n'
                  f'database_url = "sqlite:///{tmp_path}/db.sqlite"\n'
                  '[[storage]]\nname = "san"\nbackend = "lvm"\npath = "pv"\n'
                  'host = "192.0.2.50"\n')  # fmt: skip
    db = Database(c.database_url)
    db.migrate()
    return c, db


def down_host(tmp_path):
    """A storage service whose one storage host ``san`` (192.0.2.50) is down (first poll failed)."""
    from provisiond.storages import StorageManager, StorageService

    c, db = san_db(tmp_path)
    manager = StorageManager(c)
    host = FlakyHost()
    manager._ssh["san"] = host
    service = StorageService(c, db, manager)
    with db.transaction() as s:
        manager.sync_rows(s)
    assert not service.connect_host("san")
    return c, db, host, service


def test_service_marks_a_host_down_with_the_reason_then_up(tmp_path):
    _c, _db, host, service = down_host(tmp_path)
    host.on(["lvs"], load_fixture("lvs-empty.json").output)
    host.on(["python3"], '{"ok": true, "added": [], "removed": []}\n')
    assert "cannot connect (timed out)" in service.host_down_reason("san")
    assert service.exporter_for("san") is None
    host.down = False
    assert service.connect_host("san")
    assert service.host_down_reason("san") is None
    assert service.portal_for("san") == "192.0.2.50"
    assert isinstance(service.exporter_for("san"), RemoteLioExporter)


@pytest.mark.parametrize(
    "name, attr, origin, pool",
    [("app-c", "swi-a-s---", "master-c", ""),  # classic snapshot
     ("app-t", "Vwi-a-tz--", "master-t", "pool0"),  # thin snapshot taken with -kn
     ("master-c", "owi-a-s---", None, ""),  # origin of a classic snapshot
     ("master-t", "Vwi-a-tz--", None, "pool0")],
)  # fmt: skip
def test_lvs_recorded_on_the_storage_vm(name, attr, origin, pool):
    from storage.backends.lvm import parse_lvs

    rows = {v.name: (v, a, p) for v, a, p in parse_lvs((FIX / "lvs-vm.json").read_text(), "pv")}
    assert "pool0" not in rows  # the pool itself is not a volume
    vol, got_attr, got_pool = rows[name]
    assert (got_attr, vol.origin, got_pool, vol.size) == (attr, origin, pool, 64 << 20)
    assert vol.path == f"/dev/pv/{name}"


def test_clone_of_a_recorded_thin_origin_is_a_thin_snapshot():
    r = RemoteFake().on(["lvs"], (FIX / "lvs-vm.json").read_text())
    vol = LvmBackend("pvsan", thin_pool="pool0", runner=r).clone("master-t", "app-new")
    assert ["lvcreate", "-s", "-kn", "-n", "app-new", "pvsan/master-t"] in r.calls
    assert (vol.origin, vol.size) == ("master-t", 64 << 20)


def test_appliance_start_on_a_down_host_fails_with_the_reason_and_the_host_shows_down(tmp_path):
    """SanbootStart refuses before touching the host; present.storage shows state and reason."""
    from types import SimpleNamespace

    from provisiond import present
    from provisiond.jobrunner import JobFailed
    from provisiond.model import Appliance, Image, Job, Resource, Storage, Volume
    from provisiond.sanboot import SanbootStart

    c, db, host, service = down_host(tmp_path)
    with db.transaction() as s:
        st = s.query(Storage).filter_by(name="san").one()
        shown = present.storage(st)
        vol = Volume(storage_id=st.id, name="image-deb", path="/dev/pv/image-deb", size=1 << 20)
        s.add(vol)
        s.flush()
        img = Image(name="deb", format="raw", size=1 << 20, sha256="0" * 64, volume_id=vol.id,
                    state="ready")  # fmt: skip
        res = Resource(mac="52:54:00:00:00:01", state="idle")
        s.add_all([img, res])
        s.flush()
        app = Appliance(name="a1", resource_id=res.id, image_id=img.id, mode="sanboot")
        s.add(app)
        s.flush()
        job = Job(kind="appliance.start", state="running", appliance_id=app.id)
        s.add(job)
        s.flush()
        job_id = job.id
    assert (shown["host"], shown["host_state"]) == ("192.0.2.50", "down")
    assert "cannot connect (timed out)" in shown["host_reason"]
    host.down = False  # reachable again, but not yet polled: the recorded state decides
    calls = len(host.calls)
    start = SanbootStart(SimpleNamespace(db=db, config=c), service.manager, service)
    with pytest.raises(JobFailed, match=r"storage host of san is down: .*cannot connect"):
        start.run(job_id)
    assert len(host.calls) == calls  # nothing was tried on the host


def test_capture_onto_a_storage_host_needs_the_tcp_transport(tmp_path):
    """The http transport writes chunks into a local file: refused for a storage host."""
    from types import SimpleNamespace

    from provisiond.capture import CaptureJob
    from provisiond.jobrunner import JobFailed
    from provisiond.model import Job, Resource
    from provisiond.storages import StorageManager

    c, db = san_db(tmp_path)
    manager = StorageManager(c)
    manager._ssh["san"] = RemoteFake().on(["lvs"], load_fixture("lvs-empty.json").output)
    with db.transaction() as s:
        res = Resource(mac="52:54:00:00:00:02", state="idle",
                       inventory={"disks": [{"name": "sda", "size_bytes": 8 << 20}]})  # fmt: skip
        s.add(res)
        s.flush()
        job = Job(kind="image.capture", state="running", resource_id=res.id,
                  params={"disk": "/dev/sda", "name": "cap", "storage": "san",
                          "transport": "http"})  # fmt: skip
        s.add(job)
        s.flush()
        job_id = job.id
    with pytest.raises(JobFailed, match="needs the tcp transport"):
        CaptureJob(SimpleNamespace(db=db, config=c), manager).run(job_id)
    assert not any(call[0] == "lvcreate" for call in manager._ssh["san"].calls)  # nothing made
