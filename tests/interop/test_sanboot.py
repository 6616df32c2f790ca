"""Sanboot appliances through the real daemon: clone, export, CHAP/ACL, reconcile.

The daemon runs in a Lab namespace with a file-backed storage and tgt; the
machine side is played by curl (boot script, agent API) and libiscsi's
userspace initiator (``iscsi-ls``) from a client namespace. The QEMU test
bed proves the actual SAN boot (tests/testbed/test_sanboot_vm.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from storage.exporters import ExportSpec, TgtDaemon, TgtExporter
from storage.runner import Runner
from tests.daemonlab import LabDaemon, lab_config
from tests.netlab import Lab

pytestmark = pytest.mark.interop
MAC = "52:54:00:5a:00:01"
OTHER_MAC = "52:54:00:5a:00:02"
CONTROL_PORT = 700 + os.getpid() % 200


def _needs(*programs: str) -> None:
    for p in programs:
        if not shutil.which(p):
            pytest.skip(reason=f"needs {p} (make test installs it with apt-get)")


def iscsi_ls(client, portal: str, initiator: str, user: str = "", secret: str = "") -> str:
    auth = f"{user}%{secret}@" if user else ""
    res = client.run(["iscsi-ls", "-s", "-i", initiator, f"iscsi://{auth}{portal}"],
                     check=False, timeout=30)  # fmt: skip
    return res.stdout + res.stderr


@pytest.fixture
def san_lab(tmp_path):
    _needs("tgtd", "tgtadm", "iscsi-ls", "curl")
    with Lab("sanbt") as lab:
        images = tmp_path / "images"
        extra = f'[[storage]]\nname = "local"\nbackend = "file"\npath = "{images}"\n'
        extra += f'[images]\nimport_dirs = ["{tmp_path}"]\n'
        # active 3 s after the login with no new script fetch (the default 20 s only slows the test)
        config = lab_config(lab, tmp_path / "state", extra, CONTROL_PORT, iscsi="boot_settle = 3\n")
        d = LabDaemon(lab, tmp_path, config)
        d.cli("init")
        d.add_fake_kernel()
        d.start()
        try:
            yield lab, d
        finally:
            d.stop()
            TgtDaemon(lab.server_ip, control_port=CONTROL_PORT).stop()  # targets + tgtd


def hold_session(client, portal: str, initiator: str, user: str, secret: str, iqn: str, lun: int):
    """A logged-in initiator that stays (libiscsi's iscsi-perf reads until killed)."""
    url = f"iscsi://{user}%{secret}@{portal}/{iqn}/{lun}"
    return client.popen(["iscsi-perf", "-i", initiator, url],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def test_sanboot_appliance_life_cycle(san_lab, tmp_path):
    _needs("iscsi-perf")
    lab, d = san_lab
    client = lab.add_client(mac=MAC, address=f"{lab.net}.50")
    attacker = lab.add_client(mac=OTHER_MAC, address=f"{lab.net}.66")
    master = tmp_path / "master.raw"
    with open(master, "wb") as fh:
        fh.truncate(32 * 2**20)
        fh.seek(2**20)
        fh.write(b"MASTER" * 1000)
    out = d.cli("image", "import", str(master), "--name", "tiny").stdout
    assert "sha256" in out
    d.register(client, MAC, f"{lab.net}.50")
    d.cli("appliance", "create", "--resource", MAC, "--image", "tiny", "--mode", "sanboot",
          "--name", "web1")  # fmt: skip
    start = d.cli("appliance", "start", "web1").stdout
    job_id = int(re.search(r"job (\d+)", start).group(1))
    assert d.cli_json("resource", "show", MAC)["state"] == "deploying"

    # the agent is told to reboot (its token still works while deploying)
    deadline_job = d.wait_job(job_id, states=("running", "failed"))
    assert deadline_job["state"] == "running"
    # someone else asks for the SAN script: refused, no secret (the audit got it here)
    code, script = 0, ""
    for _ in range(50):
        code, script = d.boot_script(attacker, MAC)
        if code == 403 or "sanboot" in script:
            break
        time.sleep(0.2)
    assert code == 403 and "password" not in script and "SAN boot script" in script, script
    # the machine reboots: PXE DHCP, then its script from the leased address
    leased = d.dhcp_boot(client)
    code, script = d.boot_script(client, MAC, source=leased)
    assert code == 200 and "sanboot --keep iscsi:" in script, script
    target = re.search(r"iscsi:[\d.]+:::(\d+):(\S+)", script)
    lun, iqn = int(target.group(1)), target.group(2)
    initiator = re.search(r"set initiator-iqn (\S+)", script).group(1)
    user = re.search(r"set username (\S+)", script).group(1)
    secret = re.search(r"set password (\S+)", script).group(1)
    assert lun == 1 and iqn.endswith(":web1") and 12 <= len(secret) <= 16
    # fetching the script is no boot: still starting until the initiator logs in
    time.sleep(3)
    assert d.cli_json("appliance", "show", "web1")["state"] == "starting"
    assert d.cli_json("resource", "show", MAC)["state"] == "deploying"
    portal = f"{lab.server_ip}:3260"
    holder = hold_session(client, portal, initiator, user, secret, iqn, lun)
    try:
        job = d.wait_job(job_id)
        assert job["state"] == "succeeded", job
        assert "logged in" in job["outcome"], job
        app = d.cli_json("appliance", "show", "web1")
        assert app["state"] == "active" and "iSCSI login" in app["state_reason"], app
        assert d.cli_json("resource", "show", MAC)["state"] == "active"
    finally:
        holder.kill()
        holder.wait(10)
    assert "chap_secret" not in d.cli_json("appliance", "show", "web1")["params"]
    assert secret not in d.log.read_text()
    # the database holds the secret sealed only (provisiond.chapsecret): no byte of it in clear
    db_files = list((tmp_path / "state").glob("*.db*"))
    assert db_files and not any(secret.encode() in f.read_bytes() for f in db_files)

    assert "Lun:1" in iscsi_ls(client, portal, initiator, user, secret).replace(" ", "")
    assert iqn in iscsi_ls(client, portal, initiator, user, secret)
    wrong = iscsi_ls(client, portal, initiator, user, "WrongSecret1234")
    assert "Authentication failure" in wrong and "Lun:" not in wrong.replace(" ", "")
    intruder = iscsi_ls(client, portal, initiator.replace("r-", "x-"), user, secret)
    assert iqn not in intruder

    # daemon killed and restarted: the export is still there; a stale one is removed
    d.stop(signal.SIGKILL)
    exporter = TgtExporter(Runner(), control_port=CONTROL_PORT)
    assert [e.target_iqn for e in exporter.list_exports()] == [iqn]
    exporter.unexport(iqn)
    stale = iqn.replace(":web1", ":stale")
    exporter.export(ExportSpec(stale, str(master), initiator, "stale", "StaleSecret12345"))
    d.start()
    assert [e.target_iqn for e in exporter.list_exports()] == [iqn]
    # restarted with the export gone: reconcile restores it with the sealed secret, opened
    d.stop(signal.SIGKILL)
    exporter.unexport(iqn)
    d.start()
    assert [e.target_iqn for e in exporter.list_exports()] == [iqn]
    assert iqn in iscsi_ls(client, portal, initiator, user, secret)

    # stop: unexported, resource releasing until the agent registers again
    job_id = int(re.search(r"job (\d+)", d.cli("appliance", "stop", "web1").stdout).group(1))
    assert d.wait_job(job_id)["state"] == "succeeded"
    assert exporter.list_exports() == []
    assert d.cli_json("resource", "show", MAC)["state"] == "releasing"
    d.register(client, MAC, f"{lab.net}.50")
    assert d.cli_json("resource", "show", MAC)["state"] == "idle"

    # the image cannot go while a clone exists; rm removes the clone, then it can
    r = d.cli("image", "rm", "tiny", check=False)
    assert r.returncode == 1 and "web1" in r.stderr
    d.cli("appliance", "rm", "web1")
    assert not list((tmp_path / "images").glob("app-web1*"))
    d.cli("image", "rm", "tiny")
