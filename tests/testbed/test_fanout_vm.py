"""Fan-out in the QEMU test bed: one image to three VMs over multicast, each boots it.

A bootable 64 MiB disk (MBR + extlinux + kernel + marker initramfs and 8 MiB
of random data: :func:`diskimage.build_boot_disk`) is imported as image ``golden``.
Three TCG VMs with blank disks PXE-boot the real agent initrd (its
``udp-receiver``). The bulk "assign one image to many" action — what
``POST /api/v1/resources/bulk`` runs — starts three ``local`` appliances:
their jobs form one fan-out group, the daemon's ``udp-sender`` multicasts the
image on ``br0`` (TTL 1) and every agent verifies each chunk, writes it, reads
it back, reboots; SeaBIOS boots each disk and its marker appears on each
console. Each VM's disk file ends up equal to the image.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from testbed import wait_until

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.daemonlab import free_control_port  # noqa: E402
from tests.testbed.diskimage import build_boot_disk  # noqa: E402
from tests.testbed.vmlab import cli, sha  # noqa: E402

# ~2 min on a quiet machine; 5+ min when other work loads the 2 cores (3 TCG guests)
pytestmark = [pytest.mark.testbed, pytest.mark.timeout(900)]
MACS = ("52:54:00:1f:00:01", "52:54:00:1f:00:02", "52:54:00:1f:00:03")
DISK_MIB = 64
MARKER = "FANOUT-OK"


def test_fanout_one_image_to_three_vms_each_boots_it(testbed, boot_assets):
    if not boot_assets.real_agent:
        pytest.skip(reason="fan-out needs the real agent initrd (initrd/build.sh failed)")
    from provisiond import bulk
    from provisiond.config import load
    from provisiond.db import Database

    tb = testbed
    images = tb.workdir / "images"
    # no_timer_check: a TCG guest on a loaded host can fail the IO-APIC timer check and panic
    config = tb.provisiond_config(heartbeat_interval=2).replace(
        "[agent]\n",
        '[agent]\nkernel_cmdline = "console=ttyS0,115200 quiet loglevel=3 no_timer_check"\n',
    ) + (
        f"\n[iscsi]\ntgt_control_port = {free_control_port()}\n"
        f'\n[[storage]]\nname = "local"\nbackend = "file"\npath = "{images}"\n'
        f'\n[images]\nimport_dirs = ["{tb.workdir}"]\n'
        # active once written and verified; the boot itself is checked on each console
        "\n[local]\nconfirm_boot = false\n"
    )
    tb.start_provisiond(config)
    cli(tb, "kernel", "add", "agent", "--kernel", str(boot_assets.kernel),
        "--initrd", str(boot_assets.initrd), "--default")  # fmt: skip
    golden = build_boot_disk(tb.workdir / "golden.raw", boot_assets.kernel, MARKER, "golden",
                             DISK_MIB, fill_mib=8)  # fmt: skip
    golden_sha = sha(golden)
    cli(tb, "image", "import", str(golden), "--name", "golden")

    vms = [tb.boot_vm(f"fan{i}", mac, disks=[f"{DISK_MIB}M"], reboot=True)
           for i, mac in enumerate(MACS)]  # fmt: skip
    for mac in MACS:
        wait_until(lambda m=mac: tb.resource_state(m) == "idle", 300, interval=0.5)

    db = Database(f"sqlite:///{tb.workdir / 'state' / 'provisiond.db'}")
    try:
        items = bulk.run(load(tb.workdir / "provisiond.toml"), db, list(MACS), "assign",
                         mode="local", image="golden")  # fmt: skip
    finally:
        db.dispose()
    assert all(i.ok for i in items), items
    jobs = [re.search(r"job (\d+)", i.detail).group(1) for i in items]

    for vm in vms:
        vm.wait_for(rf"{MARKER} golden", 240)
    for job_id, vm in zip(jobs, vms, strict=True):
        wait_until(lambda j=job_id: json.loads(cli(tb, "job", "show", j, "--json"))["state"]
                   in ("succeeded", "failed"), 60, interval=0.5)  # fmt: skip
        job = json.loads(cli(tb, "job", "show", job_id, "--json"))
        assert job["state"] == "succeeded", job
        assert "fan-out: one of 3 machines" in job["log"], job["log"]
        assert "fan-out: transfer started to 3 receivers" in job["log"], job["log"]
        cmd = json.loads(cli(tb, "job", "show", str(job["params"]["command"]), "--json"))
        assert "over multicast" in cmd["log"], cmd["log"]
        assert sha(vm.workdir / f"{vm.spec.name}-disk0.raw") == golden_sha
    for mac in MACS:
        assert tb.resource_state(mac) == "active"
