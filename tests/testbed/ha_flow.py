"""The N-to-1 failover scenario in the QEMU test bed, shared by the test and the benchmark.

Owns the steps a person would take, through the real CLI: a reflink storage,
the agent kernel, a bootable marker disk imported as an image, machines that
PXE-boot into the idle agent (with a QMP socket: the ``qemu`` power driver is
their BMC), a spare in an HA pool, an HA sanboot appliance started on the
first machine. :func:`kill_and_wait_takeover` SIGKILLs the running machine's
QEMU and waits until the spare runs the same clone: its console prints the
disk's marker and the appliance is active on it (tgt saw its login).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from testbed import Testbed, wait_until
from vm import Vm, read_pid

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.testbed.diskimage import PART_START, build_boot_disk  # noqa: E402
from tests.testbed.vmlab import btrfs_storage, cli, cli_json  # noqa: E402

MARKER = "HA-SANBOOT-OK"
POOL = "rack1"


@dataclass
class HaBed:
    tb: Testbed
    images: Path
    control_port: int

    def clone(self, app: str) -> Path:
        return self.images / f"app-{app}.img"


def start(
    tb: Testbed, boot_assets, timeout: int = 10, hold_down: int = 600, iscsi: str = ""
) -> HaBed:
    """provisiond with a reflink storage and ``[ha]``; the agent kernel and the marker image.
    ``iscsi``: more ``[iscsi]`` lines, e.g. ``"boot_settle = 5\n"``."""
    images = btrfs_storage(tb.workdir)
    port = 300 + os.getpid() % 300
    config = tb.provisiond_config(heartbeat_interval=2) + (
        f"\n[iscsi]\ntgt_control_port = {port}\nboot_timeout = 240\n{iscsi}"
        f'\n[[storage]]\nname = "fast"\nbackend = "reflink"\npath = "{images}"\n'
        f'\n[images]\nimport_dirs = ["{tb.workdir}"]\n'
        f"\n[ha]\ninterval = 1\ntimeout = {timeout}\nhold_down = {hold_down}\n"
    )
    tb.start_provisiond(config)
    cli(tb, "kernel", "add", "agent", "--kernel", str(boot_assets.kernel),
        "--initrd", str(boot_assets.initrd), "--default")  # fmt: skip
    disk = build_boot_disk(tb.workdir / "master.raw", boot_assets.kernel, MARKER, "master")
    cli(tb, "image", "import", str(disk), "--name", "ha-disk")
    return HaBed(tb, images, port)


def stop_tgt(bed: HaBed) -> None:
    subprocess.run(["tgtadm", "-C", str(bed.control_port), "--op", "delete", "--mode",
                    "system"], capture_output=True)  # fmt: skip


def boot_machine(bed: HaBed, name: str, mac: str) -> Vm:
    """A PXE machine with a QMP socket; returns once it is an idle resource."""
    vm = bed.tb.boot_vm(name, mac, reboot=True, qmp=True)
    wait_until(lambda: bed.tb.resource_state(mac) in ("idle", "key-changed"), 180, interval=0.5)
    if bed.tb.resource_state(mac) == "key-changed":  # the same MAC booted a new agent
        cli(bed.tb, "resource", "accept-key", mac)
    return vm


def boot_machines(bed: HaBed, machines: list[tuple[str, str]]) -> list[Vm]:
    """:func:`boot_machine` for several ``(name, mac)`` at once: all boot side by side."""
    vms = [bed.tb.boot_vm(name, mac, reboot=True, qmp=True) for name, mac in machines]
    for _name, mac in machines:
        wait_until(lambda m=mac: bed.tb.resource_state(m) in ("idle", "key-changed"), 240,
                   interval=0.5)  # fmt: skip
        if bed.tb.resource_state(mac) == "key-changed":
            cli(bed.tb, "resource", "accept-key", mac)
    return vms


def set_power_qemu(bed: HaBed, mac: str, vm: Vm) -> None:
    """The machine's BMC is its QMP socket: ``resource set-power`` where this build has it."""
    tb = bed.tb
    probe = tb.provisiond_cli("resource", "set-power", "--help")
    if probe.returncode == 0 and "--option" in probe.stdout:
        cli(tb, "resource", "set-power", mac, "--driver", "qemu", "--address", str(vm.qmp_path),
            "--option", f"pidfile={vm.pidfile}")  # fmt: skip
        return
    db = tb.workdir / "state" / "provisiond.db"
    with sqlite3.connect(db, timeout=10) as con:
        con.execute(
            "UPDATE resource SET power_driver='qemu', power_address=?, power_options=? WHERE mac=?",
            (str(vm.qmp_path), json.dumps({"pidfile": str(vm.pidfile)}), mac),
        )


def appliance(bed: HaBed, name: str) -> dict:
    return cli_json(bed.tb, "appliance", "show", name)


def start_appliance(bed: HaBed, name: str, mac: str, vm: Vm) -> None:
    tb = bed.tb
    cli(tb, "appliance", "create", "--resource", mac, "--image", "ha-disk", "--mode", "sanboot",
        "--name", name, "--ha", "--ha-pool", POOL)  # fmt: skip
    cli(tb, "appliance", "start", name)
    vm.wait_for(rf"{MARKER} master", 240)
    wait_until(lambda: appliance(bed, name)["state"] == "active", 60, interval=0.5)


def relabel_clone(bed: HaBed, app: str, label: str) -> None:
    """Change the clone's boot label while it runs (as the appliance's own writes would):
    whoever boots this clone next prints ``<marker> <label>``."""
    clone, mnt = bed.clone(app), bed.tb.workdir / "clone-mnt"
    mnt.mkdir(exist_ok=True)
    offset = PART_START * 512
    loop = subprocess.run(["losetup", "--find", "--show", "--offset", str(offset), str(clone)],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    try:
        subprocess.run(["mount", loop, str(mnt)], check=True)
        try:
            conf = mnt / "boot" / "extlinux" / "extlinux.conf"
            text = conf.read_text()
            old = text.split("label=", 1)[1].split()[0]
            conf.write_text(text.replace(f"label={old}", f"label={label}"))
            (mnt / "marker.txt").write_text(f"{MARKER} {label}\n")
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def kill(vm: Vm) -> float:
    """SIGKILL the machine's QEMU (its pidfile stays: it proves the machine is off)."""
    pid = read_pid(vm.pidfile)
    assert pid is not None, f"{vm.name} has no pidfile"
    t = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not vm.alive(), 10)
    return t


def wait_takeover(bed: HaBed, name: str, spare: Vm, label: str, timeout: float = 240) -> float:
    """Seconds until the spare prints the clone's marker and the appliance is active on it."""
    try:
        t_marker, _ = spare.wait_for_timed(rf"{MARKER} {label}", timeout)
    except Exception as exc:  # say what provisiond did about it
        log = (bed.tb.workdir / "provisiond.log").read_text(errors="replace").splitlines()
        said = [x for x in log if any(w in x for w in (" ha", "sanboot", "job", name))]
        raise AssertionError(f"{exc}\nprovisiond:\n" + "\n".join(said[-40:])) from None
    wait_until(
        lambda: (
            (a := appliance(bed, name))["state"] == "active"
            and a["ha_state"] == "watching"
            and a["resource"] == f"r-{spare.mac.replace(':', '')}"
        ),
        60,
        interval=0.5,
    )
    return spare.started + t_marker
