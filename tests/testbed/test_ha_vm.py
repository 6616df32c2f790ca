"""N-to-1 failover end to end: a killed SAN-booted appliance comes back on the spare.

Two QEMU machines PXE-boot into the idle agent; each has a QMP socket, which
the ``qemu`` power driver uses as the machine's BMC. B is made a spare of HA
pool ``rack1`` (``provisiond ha spare``); an HA sanboot appliance starts on
A (``appliance create --ha --ha-pool rack1``) and SAN-boots its clone. While
it runs, its clone is changed (as its own writes would change it). Then A's
QEMU is SIGKILLed. The trigger is the one a person relies on: the power
driver says A is off (QMP socket dead, pidfile's process gone) for longer
than ``[ha] timeout``. provisiond fences A (power off, export removed),
moves the appliance to B, B's agent reboots into the SAN target and B boots
the *same* clone (it prints the changed label). Afterwards A's initiator
can no longer see the target (libiscsi's ``iscsi-ls`` with A's IQN), B's can.
"""

from __future__ import annotations

import re
import shutil

import pytest
from testbed import wait_until

from tests.testbed import ha_flow

# two idle boots, a SAN boot and a failover: ~3.5 min quiet, more under load
pytestmark = [pytest.mark.testbed, pytest.mark.timeout(720)]
MAC_A, MAC_B = "52:54:00:4a:0a:01", "52:54:00:4a:0a:02"


def iscsi_targets(tb, initiator: str) -> str:
    res = tb.run_in_ns(["iscsi-ls", "-i", initiator, "-s", f"iscsi://{tb.address}"],
                       check=False, timeout=30)  # fmt: skip
    return res.stdout + res.stderr


def test_killed_appliance_fails_over_to_the_spare(testbed, boot_assets):
    tb = testbed
    # boot_settle 5 (not 20): active 5 s after the iSCSI login, on A and then on the spare
    bed = ha_flow.start(tb, boot_assets, timeout=10, iscsi="boot_settle = 5\n")
    try:
        vm_a, vm_b = ha_flow.boot_machines(bed, [("ha-a", MAC_A), ("ha-b", MAC_B)])
        ha_flow.set_power_qemu(bed, MAC_A, vm_a)
        ha_flow.set_power_qemu(bed, MAC_B, vm_b)
        out = ha_flow.cli(tb, "ha", "spare", MAC_B, "--pool", ha_flow.POOL)
        assert "spare of HA pool rack1" in out
        ha_flow.start_appliance(bed, "web", MAC_A, vm_a)
        wait_until(lambda: ha_flow.appliance(bed, "web")["ha_reason"] == "power on", 30, 0.5)
        app = ha_flow.appliance(bed, "web")
        assert (app["ha"], app["ha_pool"], app["ha_state"]) == (True, "rack1", "watching")
        status = ha_flow.cli(tb, "ha", "status")
        assert re.search(r"r-5254004a0a02\s+rack1\s+idle\s+True", status), status

        ha_flow.relabel_clone(bed, "web", "written-on-a")
        t_kill = ha_flow.kill(vm_a)
        t_up = ha_flow.wait_takeover(bed, "web", vm_b, "written-on-a", timeout=200)
        took = t_up - t_kill
        print(f"\nfailover: kill -> marker on the spare in {took:.1f} s")

        app = ha_flow.appliance(bed, "web")
        assert app["resource"] == "r-5254004a0a02" and app["ha_failover_at"]
        assert "onto r-5254004a0a02" in app["ha_reason"] or "failed over to" in app["ha_reason"]
        assert "iSCSI login of" in app["state_reason"]
        console = vm_b.console_text()
        assert "SAN boot of iqn.2025-01.test.lab:web" in console, console[-2000:]
        a_row = ha_flow.cli_json(tb, "resource", "show", MAC_A)
        assert a_row["state"] == "failed" and "fenced" in a_row["state_reason"]
        events = ha_flow.cli(tb, "event", "list", "--limit", "200")
        assert "ha.failover" in events and "appliance.moved" in events
        assert re.search(r"ha.recovered\s+web\s+.*failed over to r-5254004a0a02", events), events

        if shutil.which("iscsi-ls"):  # A's initiator is out of the ACL, B's is in
            a_sees = iscsi_targets(tb, "iqn.2025-01.test.lab:r-5254004a0a01")
            b_sees = iscsi_targets(tb, "iqn.2025-01.test.lab:r-5254004a0a02")
            assert "iqn.2025-01.test.lab:web" not in a_sees, a_sees
            assert "iqn.2025-01.test.lab:web" in b_sees, b_sees
    finally:
        ha_flow.stop_tgt(bed)
