"""tgt exports seen by a real userspace initiator (libiscsi's iscsi-ls / iscsi-readcapacity16).

A private tgtd (own control port) serves the lab bridge address from inside
the lab's server namespace; the initiator runs in a client namespace. Checks:
the right initiator + CHAP logs in and sees LUN 1 of the right size; a wrong
secret is refused; another initiator IQN neither discovers nor logs in; an
unexported target is gone. (open-iscsi needs the kernel's iscsi_tcp module,
which this host lacks, hence libiscsi.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from storage.backends import FileBackend
from storage.exporters import ExportSpec, IscsiSession, TgtDaemon, new_chap_secret, reconcile
from tests.netlab import Lab

pytestmark = pytest.mark.interop
MiB = 1 << 20
TARGET = "iqn.2025-01.test.provisiond:host01"
INITIATOR = "iqn.2025-01.test.provisiond:init01"


@pytest.fixture
def san(tmp_path):
    for tool in ("tgtd", "tgtadm", "iscsi-ls", "iscsi-readcapacity16", "nsenter"):
        if not shutil.which(tool):
            pytest.skip(reason=f"needs {tool} (apt-get install tgt libiscsi-bin util-linux)")
    with Lab("iscsi") as lab:
        cl = lab.add_client()
        cl.run(["ip", "addr", "add", f"{lab.net}.2/24", "dev", "eth0"])
        daemon = TgtDaemon(lab.server_ip, 3260, control_port=200 + os.getpid() % 700,
                           netns=lab.server.name, log_path=str(tmp_path / "tgtd.log"))  # fmt: skip
        daemon.start()
        try:
            yield lab, cl, daemon, FileBackend(tmp_path)
        finally:
            daemon.stop()
            assert daemon.proc is None


def url(lab: Lab, user: str, secret: str, path: str = "") -> str:
    return f"iscsi://{user}%{secret}@{lab.server_ip}:3260/{path}"


def test_export_acl_and_chap_enforced(san):
    lab, cl, daemon, fb = san
    vol = fb.create("host01", 48 * MiB)
    secret = new_chap_secret()
    ex = daemon.exporter()
    spec = ex.export(ExportSpec(TARGET, vol.path, INITIATOR, "host01", secret))
    assert spec.lun == 1
    assert [s.key() for s in ex.list_exports()] == [spec.key()]

    ok = cl.run(["iscsi-ls", "-s", "-i", INITIATOR, url(lab, "host01", secret)], check=False)
    assert ok.returncode == 0, ok.stderr
    assert f"Target:{TARGET}" in ok.stdout and "Lun:1" in ok.stdout and "DIRECT_ACCESS" in ok.stdout

    cap = cl.run(["iscsi-readcapacity16", "-i", INITIATOR,
                  url(lab, "host01", secret, f"{TARGET}/1")], check=False)  # fmt: skip
    assert cap.returncode == 0, cap.stderr
    assert f"Total size:{48 * MiB}" in cap.stdout

    wrong = cl.run(["iscsi-readcapacity16", "-i", INITIATOR,
                    url(lab, "host01", "WrongSecret123", f"{TARGET}/1")], check=False)  # fmt: skip
    assert wrong.returncode != 0 and "Authentication failure" in wrong.stderr + wrong.stdout

    other = "iqn.2025-01.test.provisiond:intruder"
    disc = cl.run(["iscsi-ls", "-i", other, url(lab, "host01", secret)], check=False)
    assert TARGET not in disc.stdout
    login = cl.run(["iscsi-readcapacity16", "-i", other,
                    url(lab, "host01", secret, f"{TARGET}/1")], check=False)  # fmt: skip
    assert login.returncode != 0 and "Total size" not in login.stdout

    # idempotent export, then reconcile to nothing removes it
    ex.export(ExportSpec(TARGET, vol.path, INITIATOR, "host01", secret))
    assert len(ex.targets()) == 1
    assert reconcile(ex, []) == ([], [TARGET])
    gone = cl.run(["iscsi-readcapacity16", "-i", INITIATOR,
                   url(lab, "host01", secret, f"{TARGET}/1")], check=False)  # fmt: skip
    assert gone.returncode != 0


def test_stop_with_live_targets_terminates_tgtd(san):
    _, _, daemon, fb = san
    ex = daemon.exporter()
    for i in range(3):
        vol = fb.create(f"h{i}", 4 * MiB)
        ex.export(ExportSpec(f"{TARGET}{i}", vol.path, INITIATOR, f"u{i}", new_chap_secret()))
    proc = daemon.proc
    daemon.stop()
    assert proc.poll() is not None  # exited (not left behind)
    daemon.start()  # the fixture stops it again


def test_sessions_list_the_logged_in_initiator(san):
    """What the sanboot job watches: tgt's I_T nexus of the initiator, with its address."""
    if not shutil.which("iscsi-perf"):
        pytest.skip(reason="needs iscsi-perf (apt-get install libiscsi-bin)")
    lab, cl, daemon, fb = san
    vol = fb.create("host01", 48 * MiB)
    secret = new_chap_secret()
    ex = daemon.exporter()
    ex.export(ExportSpec(TARGET, vol.path, INITIATOR, "host01", secret))
    assert ex.sessions(TARGET) == []
    holder = cl.popen(["iscsi-perf", "-i", INITIATOR, url(lab, "host01", secret, f"{TARGET}/1")],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not ex.sessions(TARGET) and time.monotonic() < deadline:
            time.sleep(0.2)
        if os.environ.get("RECORD_FIXTURES"):  # re-record the unit tests' fixture
            (Path(__file__).parents[1] / "unit/fixtures/storage/tgtadm-show-session.txt"
             ).write_text(ex._adm("--op", "show", "--mode", "target").stdout)  # fmt: skip
        assert ex.sessions(TARGET) == [IscsiSession(INITIATOR, (f"{lab.net}.2",))]
        assert ex.sessions(TARGET + "-other") == []
    finally:
        holder.kill()
        holder.wait(10)
    deadline = time.monotonic() + 20
    while ex.sessions(TARGET) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ex.sessions(TARGET) == []
