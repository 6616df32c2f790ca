"""Install from template end to end: a blank VM gets Debian 12 from the agent and boots it.

A VM with a blank disk PXE-boots into the idle agent. A ``template``
appliance (set ``fai-debian-12``, hostname rendered from ``--param``) makes
the agent partition the disk (MBR for BIOS, GPT + ESP for UEFI), make the
file systems, unpack the Debian root file system built by ``provisiond rootfs
build debian-12`` (mmdebstrap, cached in /var/cache/provisiond/rootfs),
write the rendered configuration, install extlinux (BIOS) or systemd-boot
(UEFI) and reboot. The boot policy then answers "boot the local disk"; the
installed Debian comes up with the rendered hostname, its first-boot unit
calls back with the one-time token (the appliance becomes ``active``, its
SSH host key pinned) and ``provisiond run`` on it prints the hostname over
SSH with the server's key that the template installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testbed import OVMF, wait_until

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.testbed.vmlab import cli, in_order  # noqa: E402

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(1800)]
DISK = "2G"


@pytest.fixture(scope="module")
def debian_rootfs(testbed_ready) -> str:
    """``provisiond rootfs build debian-12``: built once per machine, then cached."""
    if shutil.which("mmdebstrap") is None:
        pytest.skip(reason="mmdebstrap not installed (apt-get install mmdebstrap; `make deps`)")
    prov = REPO / ".venv" / "bin" / "provisiond"
    run = subprocess.run([str(prov), "rootfs", "build", "debian-12"], capture_output=True,
                         text=True, timeout=1800)  # fmt: skip
    assert run.returncode == 0, f"rootfs build failed:\n{run.stdout}{run.stderr}"
    return run.stdout


def install(tb, boot_assets, name: str, mac: str, uefi: bool) -> dict:
    if not boot_assets.real_agent:
        pytest.skip(reason="template installs need the real agent (initrd/build.sh failed)")
    images = tb.workdir / "images"
    storage = (
        f'\n[[storage]]\nname = "local"\nbackend = "file"\npath = "{images}"\n'
        if os.environ.get("PROVISIOND_BENCH_ANCHOR")
        else ""
    )  # only the anchor needs it
    tb.start_provisiond(tb.provisiond_config(heartbeat_interval=2) + storage)
    cli(tb, "kernel", "add", "agent", "--kernel", str(boot_assets.kernel),
        "--initrd", str(boot_assets.initrd), "--default")  # fmt: skip
    vm = tb.boot_vm(name, mac, disks=[DISK], mem=1024, reboot=True, uefi=uefi)
    wait_until(lambda: tb.resource_state(mac) == "idle", 240, interval=0.5)
    firmware = json.loads(cli(tb, "resource", "show", mac, "--json"))["inventory"]["firmware"]
    assert firmware == ("uefi" if uefi else "bios")
    cli(tb, "appliance", "create", "--resource", mac, "--mode", "template", "--name", name,
        "--param", "template=fai-debian-12", "--param", f"hostname={name}",
        "--disk", "/dev/vda")  # fmt: skip
    t0 = time.monotonic()
    out = cli(tb, "appliance", "start", name, "--wait", timeout=1200)
    elapsed = time.monotonic() - t0
    assert f"reported in as {name}" in out, out
    vm.wait_for(rf"provisiond-installed: reported in as {name}", 60)
    app = json.loads(cli(tb, "appliance", "show", name, "--json"))
    assert app["state"] == "active", app
    assert tb.resource_state(mac) == "active"
    # SSH with the server's key that the template installed; the host key the OS reported
    assert cli(tb, "run", mac, "--", "hostname", timeout=60).strip() == name
    jobs = [j for j in json.loads(cli(tb, "job", "list", "--json")) if j["kind"] == "agent.install"]
    assert [j["state"] for j in jobs] == ["succeeded"], jobs
    agent_log = json.loads(cli(tb, "job", "show", str(jobs[0]["id"]), "--json"))["log"]
    sys.stderr.write(f"\n{name}: appliance start -> OS reported in: {elapsed:.0f} s\n{agent_log}")
    return {"vm": vm, "elapsed": elapsed, "out": agent_log}


def local_anchor(tb, done: dict) -> None:
    """BENCHMARKS anchor (opt-in: PROVISIOND_BENCH_ANCHOR=1): the installed disk, captured
    as an image, deployed with the ``local`` mode onto a second blank VM."""
    done["vm"].kill()
    disk = done["vm"].workdir / "tplbios-disk0.raw"
    cli(tb, "image", "import", str(disk), "--name", "installed", timeout=600)
    mac = "52:54:00:7e:00:11"
    vm2 = tb.boot_vm("anchor", mac, disks=[DISK], mem=1024, reboot=True)
    wait_until(lambda: tb.resource_state(mac) == "idle", 240, interval=0.5)
    cli(tb, "appliance", "create", "--resource", mac, "--image", "installed", "--mode", "local",
        "--disk", "/dev/vda", "--name", "anchor")  # fmt: skip
    t0 = time.monotonic()
    cli(tb, "appliance", "start", "anchor", "--wait", timeout=1200)
    written = time.monotonic() - t0
    vm2.wait_for(r"Debian GNU/Linux 12 tplbios", 600)  # getty's banner, a whole line
    up = time.monotonic() - t0
    used = int(subprocess.run(["du", "-B1", str(disk)], capture_output=True, text=True)
               .stdout.split()[0])  # fmt: skip
    sys.stderr.write(f"\nanchor (local mode, {disk.stat().st_size / 2**30:.0f} GiB image, "
                     f"{used / 2**20:.0f} MiB allocated): start -> disk written {written:.0f} s, "
                     f"-> login prompt {up:.0f} s\n")  # fmt: skip


def test_bios_install_boots_its_own_disk(testbed, boot_assets, debian_rootfs):
    done = install(testbed, boot_assets, "tplbios", "52:54:00:7e:00:01", uefi=False)
    vm = done["vm"]
    assert in_order(vm, [r"AGENT-UP", r"install exited 0|AGENT-REBOOT|reboot: Restarting",
                         r"booting from the local disk", r"SYSLINUX",
                         r"provisiond-installed: reported in as tplbios"]), vm.tail(60)  # fmt: skip
    for step in (
        "step 1/7 partition",
        "Disklabel type: dos",
        "sha256 verified",
        "boot loader extlinux",
        "post 10-root-password.sh: exit 0",
        "post 90-hostname-check.sh: exit 0",
    ):
        assert step in done["out"], done["out"]  # fmt: skip
    if os.environ.get("PROVISIOND_BENCH_ANCHOR"):
        local_anchor(testbed, done)


@pytest.mark.skipif(not Path(OVMF).exists(), reason=f"{OVMF} missing (apt-get install ovmf)")
def test_uefi_install_boots_its_own_disk(testbed, boot_assets, debian_rootfs):
    done = install(testbed, boot_assets, "tpluefi", "52:54:00:7e:00:02", uefi=True)
    for step in ("Disklabel type: gpt", "vfat ESP", "boot loader systemd-boot", "sha256 verified"):
        assert step in done["out"], done["out"]
