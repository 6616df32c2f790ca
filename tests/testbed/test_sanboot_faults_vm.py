"""SAN-boot faults with a real machine: QEMU + its NIC's iPXE ROM + tgtd + provisiond.

One VM (booted once, reboot-on-exit) walks through the faults in a row:

1. a wrong LUN in its SAN script (test hook ``PROVISIOND_TEST_FAULT_FILE``):
   iPXE's ``sanboot`` fails and the script retries itself; after
   ``iscsi.max_script_fetches`` fetches the start fails with "boot loop" and
   the machine falls back to the idle agent — never ``active``;
2. the fault fixed, a retry boots the clone (its marker on the console) and
   is ``active`` only after the boot settled;
3. the target deleted behind provisiond's back is exported again by the
   storage watch (event ``export.restored``);
4. the target deleted with its volume cannot be restored: ``failed`` with
   "storage fault" (event ``storage.fault``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from testbed import wait_until

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from provisiond.bootchain import FAULT_FILE_ENV  # noqa: E402
from storage.exporters import TgtExporter  # noqa: E402
from storage.runner import Runner  # noqa: E402
from tests.daemonlab import free_control_port  # noqa: E402
from tests.testbed.diskimage import build_boot_disk  # noqa: E402
from tests.testbed.vmlab import cli  # noqa: E402

pytestmark = pytest.mark.testbed
MAC = "52:54:00:5f:00:01"
FETCHES, SETTLE = 3, 5


def app(tb) -> dict:
    return json.loads(cli(tb, "appliance", "show", "sanf", "--json"))


def events(tb, action: str) -> list[dict]:
    rows = json.loads(cli(tb, "event", "list", "--limit", "300", "--json"))
    return [e for e in rows if e["action"] == action and e["target"] == "sanf"]


def test_san_boot_faults_end_failed_with_the_reason(testbed, boot_assets, monkeypatch):
    tb = testbed
    port = free_control_port()
    faults = tb.workdir / "faults"
    faults.write_text("")
    monkeypatch.setenv(FAULT_FILE_ENV, str(faults))  # the daemon inherits the test hook
    images = tb.workdir / "images"
    config = tb.provisiond_config(heartbeat_interval=2) + (
        f"\n[iscsi]\ntgt_control_port = {port}\nboot_timeout = 240\n"
        f"max_script_fetches = {FETCHES}\nboot_settle = {SETTLE}\nreconcile_interval = 2\n"
        f'\n[[storage]]\nname = "local"\nbackend = "file"\npath = "{images}"\n'
        f'\n[images]\nimport_dirs = ["{tb.workdir}"]\n'
    )
    try:
        tb.start_provisiond(config)
        cli(tb, "kernel", "add", "agent", "--kernel", str(boot_assets.kernel),
            "--initrd", str(boot_assets.initrd), "--default")  # fmt: skip
        disk = build_boot_disk(tb.workdir / "master.raw", boot_assets.kernel, "SANFAULT-OK",
                               "master", size_mib=32)  # fmt: skip
        cli(tb, "image", "import", str(disk), "--name", "marker")
        vm = tb.boot_vm("sanf", MAC, reboot=True)
        wait_until(lambda: tb.resource_state(MAC) == "idle", 180, interval=0.5)
        cli(tb, "appliance", "create", "--resource", MAC, "--image", "marker",
            "--mode", "sanboot", "--name", "sanf")  # fmt: skip

        # 1. wrong LUN: iPXE's sanboot fails, the script loops, the start fails
        faults.write_text("wrong-lun\n")
        cli(tb, "appliance", "start", "sanf")
        wait_until(lambda: app(tb)["state"] != "starting", 240, interval=1)
        a = app(tb)
        assert a["state"] == "failed", a
        assert "boot loop" in a["state_reason"], a
        assert f"fetched its SAN script {FETCHES} times" in a["state_reason"], a
        assert not [e for e in events(tb, "appliance.state") if "-> active" in e["detail"]]
        assert "failed; retrying in 10 s" in vm.console_text()
        faults.write_text("")
        # the failed appliance's machine boots the idle agent again
        wait_until(lambda: tb.resource_state(MAC) == "idle", 180, interval=1)

        # 2. fixed: the retry boots the clone; active once the boot settled
        cli(tb, "appliance", "start", "sanf")
        vm.wait_for(r"SANFAULT-OK master", 240)
        wait_until(lambda: app(tb)["state"] == "active", 60, interval=1)
        assert f"no SAN script fetch for {SETTLE} s" in app(tb)["state_reason"]

        # 3. the target vanishes behind provisiond's back: the storage watch restores it
        ex = TgtExporter(Runner(), control_port=port)
        iqn = app(tb)["params"]["target_iqn"]
        tid = next(t.tid for t in ex.targets() if t.iqn == iqn)
        Runner().run(["tgtadm", "-C", str(port), "--lld", "iscsi", "--op", "delete",
                      "--mode", "target", "--force", "--tid", str(tid)])  # fmt: skip
        wait_until(lambda: iqn in [e.target_iqn for e in ex.list_exports()], 30, interval=0.5)
        assert events(tb, "export.restored")
        assert app(tb)["state"] == "active"

        # 4. gone with its volume: cannot be restored -> failed, storage fault
        clone = next(e.path for e in ex.list_exports() if e.target_iqn == iqn)
        ex.unexport(iqn)
        Path(clone).unlink()
        wait_until(lambda: app(tb)["state"] == "failed", 30, interval=0.5)
        a = app(tb)
        assert "storage fault" in a["state_reason"] and "could not be restored" in a["state_reason"]
        assert events(tb, "storage.fault")
        assert tb.resource_state(MAC) == "failed"
    finally:
        subprocess.run(["tgtadm", "-C", str(port), "--op", "delete", "--mode", "system"],
                       capture_output=True)  # fmt: skip
