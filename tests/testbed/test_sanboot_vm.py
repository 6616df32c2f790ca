"""SAN boot end to end: idle QEMU machines become sanboot appliances of one image.

A bootable test disk (MBR + extlinux + kernel + marker initramfs) is imported
onto a reflink storage (btrfs on a loop file in the test bed's work
directory); two idle machines each get a clone exported by tgt with their
own IQN, ACL and CHAP secret; the agent reboots them, iPXE SAN-boots the
clone and the marker appears on each console. A write into one clone shows
in neither the master nor the other clone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testbed import wait_until

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.testbed.diskimage import build_boot_disk  # noqa: E402
from tests.testbed.vmlab import btrfs_storage, cli, sha  # noqa: E402

pytestmark = pytest.mark.testbed
MACS = ("52:54:00:5b:00:01", "52:54:00:5b:00:02")
CONTROL_PORT = 300 + os.getpid() % 300


def test_two_machines_san_boot_their_own_clones(testbed, boot_assets):
    tb = testbed
    images = btrfs_storage(tb.workdir)
    config = tb.provisiond_config(heartbeat_interval=2) + (
        f"\n[iscsi]\ntgt_control_port = {CONTROL_PORT}\nboot_timeout = 240\n"
        "boot_settle = 5\n"  # active 5 s after the iSCSI login (default 20 s: waiting)
        f'\n[[storage]]\nname = "fast"\nbackend = "reflink"\npath = "{images}"\n'
        f'\n[images]\nimport_dirs = ["{tb.workdir}"]\n'
    )
    try:
        tb.start_provisiond(config)
        cli(tb, "kernel", "add", "agent", "--kernel", str(boot_assets.kernel),
            "--initrd", str(boot_assets.initrd), "--default")  # fmt: skip
        disk = build_boot_disk(tb.workdir / "master.raw", boot_assets.kernel, "SANBOOT-OK",
                               "master")  # fmt: skip
        out = cli(tb, "image", "import", str(disk), "--name", "marker-disk")
        assert sha(disk) in out

        vms = [tb.boot_vm(f"san{i}", mac, nic="e1000" if i else "virtio-net-pci", reboot=True)
               for i, mac in enumerate(MACS)]  # fmt: skip
        for mac in MACS:
            wait_until(lambda m=mac: tb.resource_state(m) == "idle", 120, interval=0.5)
        for i, mac in enumerate(MACS):
            cli(tb, "appliance", "create", "--resource", mac, "--image", "marker-disk",
                "--mode", "sanboot", "--name", f"san{i}")  # fmt: skip
            cli(tb, "appliance", "start", f"san{i}")
        for i, vm in enumerate(vms):
            vm.wait_for(r"SANBOOT-OK master", 240)
            wait_until(lambda n=i: json.loads(cli(tb, "appliance", "show", f"san{n}", "--json"))
                       ["state"] == "active", 60)  # fmt: skip
        console = vms[0].console_text()
        assert "SAN boot of iqn.2025-01.test.lab:san0" in console, console[-2000:]
        assert "Registered SAN device 0x80" in console
        job = json.loads(cli(tb, "job", "list", "--json"))
        assert all(j["state"] == "succeeded" for j in job if j["kind"] == "appliance.start")
        for mac in MACS:
            assert tb.resource_state(mac) == "active"
        # active because tgt saw the initiator log in, not because a script was fetched
        for i in range(len(MACS)):
            app = json.loads(cli(tb, "appliance", "show", f"san{i}", "--json"))
            assert "iSCSI login of" in app["state_reason"], app

        # copy-on-write: a write inside one clone is invisible to the master and the other
        master, clone0, clone1 = (images / "image-marker-disk.img", images / "app-san0.img",
                                  images / "app-san1.img")  # fmt: skip
        before = sha(master)
        assert sha(clone1) == before
        with open(clone0, "r+b") as fh:
            fh.seek(40 * 2**20)
            fh.write(b"written inside clone 0")
            os.fsync(fh.fileno())
        assert sha(master) == before and sha(clone1) == before and sha(clone0) != before
    finally:
        subprocess.run(["tgtadm", "-C", str(CONTROL_PORT), "--op", "delete", "--mode",
                        "system"], capture_output=True)  # fmt: skip
