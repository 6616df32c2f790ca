"""Local deployment and capture end to end: a disk captured from one VM boots another.

VM1 has a bootable disk (MBR + extlinux + kernel + marker initramfs, built
by :func:`diskimage.build_boot_disk`) but PXE-boots first, so it runs the idle
agent; ``provisiond image capture`` uploads its ``/dev/vda`` as image
``golden`` (size and sha256 recorded, equal to the disk file). The disk's
ext2 partition is half full of random data; the capture (tcp transport)
reads only the blocks partclone says are in use (the initrd's
partclone.extfs), which the job log shows. VM2 has a
blank disk of the same size; a ``local`` appliance of ``golden`` makes its
agent stream the image onto ``/dev/vda``, verify it and reboot; the boot
policy then answers with the local-disk iPXE script, SeaBIOS boots the disk
and the marker appears on VM2's console.

The disk is built for provisiond (``build_boot_disk(report_in=True)``): it
reserves the report-in slot, the agent writes this deploy's record into it,
and the disk's OS reads it, writes the placeholder back and reports in
(issue 17). The appliance is ``active`` only after that report-in, and VM2's
disk file ends up byte for byte equal to VM1's. The fault case shares the
run: meanwhile VM1 (its agent still up) gets image ``silent``, whose OS boots
and takes an address but never reports in; its appliance goes ``failed``
after ``local.boot_timeout`` with a reason that says so.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from testbed import wait_until
from vm import Vm, VmSpec

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.daemonlab import free_control_port  # noqa: E402
from tests.testbed.diskimage import build_boot_disk  # noqa: E402
from tests.testbed.vmlab import cli, cli_json, in_order, sha  # noqa: E402

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(900)]
MAC1, MAC2 = "52:54:00:1c:00:01", "52:54:00:1c:00:02"
DISK_MIB = 32  # kernel + initrd + 8 MiB of filler; every MiB is dd + sha256 under TCG
MARKER = "LOCALBOOT-OK"
BOOT_TIMEOUT = 90  # local.boot_timeout: reboot + BIOS + iPXE + kernel under TCG, loaded


def boot_vm_with_disk(tb, name: str, mac: str, disk: Path) -> Vm:
    """Like ``tb.boot_vm`` (PXE first, a reboot reboots), with an existing raw file as its disk."""
    drive = f"file={disk},format=raw,if=virtio,cache=unsafe"
    spec = VmSpec(name=name, mac=mac, tap=tb.add_tap(), extra=("-drive", drive), reboot=True)
    vm_dir = tb.workdir / "vms"
    vm_dir.mkdir(parents=True, exist_ok=True)
    vm = Vm(spec, vm_dir).start(tb.ns_prefix)
    tb.vms.append(vm)
    return vm


def wait_appliance(tb, name: str, states: tuple[str, ...], timeout: float) -> dict:
    found: dict = {}

    def done() -> bool:
        found.update(cli_json(tb, "appliance", "show", name))
        return found["state"] in states

    wait_until(done, timeout, interval=1.0)
    return found


def test_capture_one_disk_and_deploy_it_to_another_machine(testbed, boot_assets):
    if not boot_assets.real_agent:
        pytest.skip(reason="capture and local deploy need the real agent (initrd/build.sh failed)")
    tb = testbed
    images = tb.workdir / "images"
    config = tb.provisiond_config(heartbeat_interval=2) + (
        f"\n[iscsi]\ntgt_control_port = {free_control_port()}\n"  # never a stray tgtd's port 0
        f'\n[[storage]]\nname = "local"\nbackend = "file"\npath = "{images}"\n'
        f'\n[images]\nimport_dirs = ["{tb.workdir}"]\n'
        f"\n[local]\nconfirm_boot = true\nboot_timeout = {BOOT_TIMEOUT}\n"
    )
    tb.start_provisiond(config)
    cli(tb, "kernel", "add", "agent", "--kernel", str(boot_assets.kernel),
        "--initrd", str(boot_assets.initrd), "--default")  # fmt: skip
    disk1 = build_boot_disk(tb.workdir / "golden-src.raw", boot_assets.kernel, MARKER, "golden",
                            DISK_MIB, fill_mib=DISK_MIB // 2 - 8, report_in=True)  # fmt: skip
    disk1_sha = sha(disk1)
    silent = build_boot_disk(tb.workdir / "silent.raw", boot_assets.kernel, MARKER, "silent",
                             DISK_MIB, report_in=True, silent=True)  # fmt: skip
    cli(tb, "image", "import", str(silent), "--name", "silent")

    vm1 = boot_vm_with_disk(tb, "cap1", MAC1, disk1)
    vm2 = tb.boot_vm("dep2", MAC2, disks=[f"{DISK_MIB}M"], reboot=True)
    disk2 = vm2.workdir / "dep2-disk0.raw"
    for mac in (MAC1, MAC2):
        wait_until(lambda m=mac: tb.resource_state(m) == "idle", 120, interval=0.5)

    # capture VM1's disk while its agent runs (nothing has it mounted)
    out = cli(tb, "image", "capture", MAC1, "--disk", "/dev/vda", "--name", "golden")
    assert "capturing /dev/vda" in out, out
    img = cli_json(tb, "image", "show", "golden")
    assert (img["size"], img["state"]) == (DISK_MIB * 2**20, "ready")
    # the whole sha256 is computed after the image is ready (provisiond/imagedigest.py)
    wait_until(lambda: cli_json(tb, "image", "show", "golden")["sha256"] == disk1_sha, 60,
               interval=0.5)  # fmt: skip
    assert sha(images / "image-golden.img") == disk1_sha
    capture = [j for j in cli_json(tb, "job", "list") if j["kind"] == "image.capture"]
    assert [j["state"] for j in capture] == ["succeeded"], capture
    log = cli_json(tb, "job", "show", str(capture[0]["id"]))["log"]
    assert re.search(r"partition 1 .*: extfs: \d+ MiB in use \(partclone\)", log), log
    assert sha(disk1) == disk1_sha  # capture only reads
    assert tb.resource_state(MAC1) == "idle"

    # deploy golden onto VM2's blank disk and, at the same time, silent onto VM1's
    for mac, image, name in ((MAC2, "golden", "gold2"), (MAC1, "silent", "mute1")):
        cli(tb, "appliance", "create", "--resource", mac, "--image", image, "--mode", "local",
            "--disk", "/dev/vda", "--name", name)  # fmt: skip
        cli(tb, "appliance", "start", name)
    # written, rebooted, booted: still starting until its OS reported in
    vm2.wait_for(rf"{MARKER} golden", 600)
    app = wait_appliance(tb, "gold2", ("active", "failed"), BOOT_TIMEOUT + 60)
    assert app["state"] == "active", (app, vm2.tail(40))
    assert "reported in as golden" in app["state_reason"], app
    # the agent rebooted; iPXE got the local-disk script; SeaBIOS booted the disk; its OS
    # reported in
    assert in_order(vm2, [r"AGENT-UP", r"deploy exited 0", r"AGENT-REBOOT|reboot: Restarting",
                          r"booting from the local disk", r"Booting from SAN device 0x80",
                          r"SYSLINUX", rf"{MARKER} golden", r"REPORTED-IN golden"]), \
        vm2.tail(40)  # fmt: skip
    assert tb.resource_state(MAC2) == "active"
    job = next(j for j in cli_json(tb, "job", "list")
               if j["kind"] == "appliance.start" and j["state"] == "succeeded")  # fmt: skip
    log = cli_json(tb, "job", "show", str(job["id"]))["log"]
    assert "report-in record written" in log and "waiting for the booted OS" in log, log
    # byte for byte the image again: the OS wrote the slot's placeholder back
    assert sha(disk2) == disk1_sha

    # the silent image's OS came up but never reported in: failed, with what was seen
    app = wait_appliance(tb, "mute1", ("active", "failed"), BOOT_TIMEOUT + 120)
    assert app["state"] == "failed", (app, vm1.tail(40))
    for words in (
        "wrote and verified silent on /dev/vda",
        "its OS came up (DHCP for",
        f"did not report in within {BOOT_TIMEOUT} s",
        "local-boot script 1 time",
    ):
        assert words in app["state_reason"], app  # fmt: skip
    assert in_order(vm1, [r"deploy exited 0", r"booting from the local disk", rf"{MARKER} silent",
                          r"REPORT-IN SKIPPED"]), vm1.tail(40)  # fmt: skip
    assert tb.resource_state(MAC1) == "failed"
    assert "did not report in" in cli(tb, "event", "list")
    vm1.kill()
