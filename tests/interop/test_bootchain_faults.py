"""Faults in the SAN-boot chain against real daemons: tgtd, provisiond serve, libiscsi.

Exporter identity: a stale tgtd on our control port, in another network
namespace and on another address, makes ``provisiond serve`` fail fast with a
message naming the control port, both portals and the fix; the exporter never
exports onto it; a tgtd of ours left by an earlier run is adopted. LIO's
configfs check runs where the kernel has LIO (skips with the reason here).
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from storage.backends import FileBackend
from storage.exporters import (
    CONFIGFS,
    ExporterIdentityError,
    ExportSpec,
    LioExporter,
    TgtDaemon,
    TgtExporter,
    new_chap_secret,
)
from storage.exporters.identity import check_lio_portal, netns_named, owner_pid
from storage.runner import Runner
from tests.daemonlab import LabDaemon, free_control_port, lab_config
from tests.netlab import Lab

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]
MiB = 1 << 20
TARGET = "iqn.2025-01.test.provisiond:bc01"
INITIATOR = "iqn.2025-01.test.provisiond:bcinit"


def _needs(*programs: str) -> None:
    for p in programs:
        if not shutil.which(p):
            pytest.skip(reason=f"needs {p} (make test installs it with apt-get)")


@pytest.fixture
def stale_tgtd(tmp_path):
    """A tgtd on a control port of its own, serving another namespace and address."""
    _needs("tgtd", "tgtadm", "nsenter")
    with Lab("bcold") as other:
        port = free_control_port()
        d = TgtDaemon(other.server_ip, control_port=port, netns=other.server.name,
                      log_path=str(tmp_path / "stale-tgtd.log"))  # fmt: skip
        d.start()
        try:
            yield other, d
        finally:
            d.stop()


def _storage_extra(tmp_path) -> str:
    return f'[[storage]]\nname = "local"\nbackend = "file"\npath = "{tmp_path / "images"}"\n'


def test_serve_fails_fast_on_a_foreign_tgtd(stale_tgtd, tmp_path):
    other, stale = stale_tgtd
    with Lab("bcsrv") as lab:
        d = LabDaemon(lab, tmp_path, lab_config(lab, tmp_path / "state", _storage_extra(tmp_path),
                                                stale.control_port))  # fmt: skip
        d.cli("init")
        t0 = time.monotonic()
        res = d.serve_again(timeout=60)
        took = time.monotonic() - t0
        out = res.stdout + res.stderr
        assert res.returncode != 0, out
        assert took < 30, f"serve took {took:.1f} s to give up"
        assert f"the tgtd on control port {stale.control_port} is not ours" in out, out
        assert f"portals {other.server_ip}:3260" in out and f"wanted {lab.server_ip}:3260" in out
        assert "iscsi.tgt_control_port" in out and "--op delete --mode system" in out
        assert "started tgtd" not in out
    assert stale.running() and stale.exporter().targets() == []  # the stranger is untouched


def test_start_does_not_take_a_port_another_tgtd_owns(stale_tgtd, tmp_path):
    _other, stale = stale_tgtd
    with Lab("bcown") as lab:
        ours = TgtDaemon(lab.server_ip, control_port=stale.control_port, netns=lab.server.name,
                         log_path=str(tmp_path / "ours.log"))  # fmt: skip
        with pytest.raises(
            Exception, match=f"already answers on control port {stale.control_port}"
        ):
            ours.start()
        assert ours.proc is None
        free = TgtDaemon(lab.server_ip, control_port=free_control_port(), netns=lab.server.name,
                         log_path=str(tmp_path / "free.log"))  # fmt: skip
        free.start()
        try:
            assert owner_pid(free.control_port) == free.proc.pid  # started = owns the port
            assert free.verify().netns == netns_named(lab.server.name)
        finally:
            free.stop()
    assert owner_pid(stale.control_port) == stale.proc.pid


def test_exporter_never_exports_onto_a_foreign_tgtd(stale_tgtd, tmp_path):
    _other, stale = stale_tgtd
    vol = FileBackend(tmp_path).create("bc01", 8 * MiB)
    with Lab("bcexp") as lab:
        ex = TgtExporter(Runner(), control_port=stale.control_port,
                         expect_portal=f"{lab.server_ip}:3260",
                         expect_netns=netns_named(lab.server.name))  # fmt: skip
        spec = ExportSpec(TARGET, vol.path, INITIATOR, "bc01", new_chap_secret())
        with pytest.raises(ExporterIdentityError, match="not ours"):
            ex.export(spec)
        with pytest.raises(ExporterIdentityError, match="not ours"):
            ex.check()
    assert stale.exporter().targets() == []


def test_own_tgtd_from_an_earlier_run_is_adopted(tmp_path):
    _needs("tgtd", "tgtadm", "nsenter", "curl")
    with Lab("bcadp") as lab:
        port = free_control_port()
        earlier = TgtDaemon(lab.server_ip, control_port=port, netns=lab.server.name,
                            log_path=str(tmp_path / "earlier.log"))  # fmt: skip
        earlier.start()
        try:
            d = LabDaemon(lab, tmp_path, lab_config(lab, tmp_path / "state",
                                                    _storage_extra(tmp_path), port))  # fmt: skip
            d.cli("init")
            d.start()
            d.stop()
            log = d.log.read_text()
            assert f"tgtd already serves {lab.server_ip}:3260 (control port {port}, pid " in log
            assert "start-up failed" not in log
        finally:
            earlier.stop()


def test_serve_starts_its_own_tgtd_and_says_so_only_once_it_owns_the_port(tmp_path):
    _needs("tgtd", "tgtadm", "nsenter", "curl")
    with Lab("bcnew") as lab:
        port = free_control_port()
        d = LabDaemon(lab, tmp_path, lab_config(lab, tmp_path / "state",
                                                _storage_extra(tmp_path), port))  # fmt: skip
        d.cli("init")
        d.start()
        try:
            pid = owner_pid(port)
            assert pid is not None
            assert f"started tgtd on {lab.server_ip}:3260 (control port {port}, pid {pid})" in (
                d.log.read_text()
            )
            assert os.readlink(f"/proc/{pid}/ns/net") == netns_named(lab.server.name)
        finally:
            d.stop()
            TgtDaemon(lab.server_ip, control_port=port).stop()


def test_lio_target_portal_is_checked_in_configfs(tmp_path):
    if not os.path.isdir(CONFIGFS):
        pytest.skip(reason=f"{CONFIGFS} missing: this kernel has no LIO (configfs target_core_mod)")
    ex = LioExporter("127.0.0.1", 3260)
    ex.check()
    vol = FileBackend(tmp_path).create("bc01", 8 * MiB)
    ex.export(ExportSpec(TARGET, vol.path, INITIATOR, "bc01", new_chap_secret()))
    try:
        check_lio_portal(CONFIGFS, TARGET, "127.0.0.1:3260")
        with pytest.raises(ExporterIdentityError, match=r"not 127\.0\.0\.2:3260"):
            check_lio_portal(CONFIGFS, TARGET, "127.0.0.2:3260")
    finally:
        ex.unexport(TARGET)
