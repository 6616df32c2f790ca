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

The BIOS and the UEFI machine install side by side in one test bed (a module
fixture; each TCG machine keeps one core busy); each test checks its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from testbed import OVMF, Testbed, wait_until

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.testbed.conftest import unique_ns  # noqa: E402
from tests.testbed.vmlab import cli, cli_json, in_order  # noqa: E402

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


MACS = {"tplbios": "52:54:00:7e:00:01", "tpluefi": "52:54:00:7e:00:02"}
TESTS = {"tplbios": "test_bios_install_boots_its_own_disk",
         "tpluefi": "test_uefi_install_boots_its_own_disk"}  # fmt: skip


@pytest.fixture(scope="module")
def installs(request, testbed_ready, boot_assets, debian_rootfs, tmp_path_factory):
    """The BIOS and the UEFI install side by side: one test bed, one daemon, two machines.

    Each TCG machine keeps one core busy, so the two installs together take little more
    than one alone. Only the installs of the selected tests run (``-k bios`` = BIOS only,
    as the BENCHMARKS command does). Yields ``{name: started install}``; each test checks
    its own (:func:`finish`).
    """
    if not boot_assets.real_agent:
        pytest.skip(reason="template installs need the real agent (initrd/build.sh failed)")
    selected = {item.name for item in request.session.items if item.module is request.module}
    names = [n for n in MACS if TESTS[n] in selected and (n != "tpluefi" or Path(OVMF).exists())]
    with Testbed(tmp_path_factory.mktemp("tpl") / "tb", ns_name=unique_ns()) as tb:
        images = tb.workdir / "images"
        storage = (
            f'\n[[storage]]\nname = "local"\nbackend = "file"\npath = "{images}"\n'
            if os.environ.get("PROVISIOND_BENCH_ANCHOR")
            else ""
        )  # only the anchor needs it
        tb.start_provisiond(tb.provisiond_config(heartbeat_interval=2) + storage)
        cli(tb, "kernel", "add", "agent", "--kernel", str(boot_assets.kernel),
            "--initrd", str(boot_assets.initrd), "--default")  # fmt: skip
        vms = {n: tb.boot_vm(n, MACS[n], disks=[DISK], mem=1024, reboot=True,
                             uefi=n == "tpluefi") for n in names}  # fmt: skip
        firmware = {}
        for name in names:
            wait_until(lambda m=MACS[name]: tb.resource_state(m) == "idle", 240, interval=0.5)
            firmware[name] = cli_json(tb, "resource", "show", MACS[name])["inventory"]["firmware"]
            cli(tb, "appliance", "create", "--resource", MACS[name], "--mode", "template",
                "--name", name, "--param", "template=fai-debian-12",
                "--param", f"hostname={name}", "--disk", "/dev/vda")  # fmt: skip

        def start(name: str) -> tuple[subprocess.CompletedProcess, float]:
            t0 = time.monotonic()
            res = tb.provisiond_cli("appliance", "start", name, "--wait", timeout=1200)
            return res, time.monotonic() - t0

        with ThreadPoolExecutor(max_workers=2) as pool:
            started = {n: pool.submit(start, n) for n in names}
            done = {n: (*f.result(), vms[n], firmware[n]) for n, f in started.items()}
        yield tb, done


def finish(installs, name: str, uefi: bool) -> dict:
    """The checks of one install: it reported in, is active, and SSH reaches it."""
    tb, done = installs
    assert name in done, f"{name} was not installed (not selected?)"
    res, elapsed, vm, firmware = done[name]
    mac = MACS[name]
    assert firmware == ("uefi" if uefi else "bios")
    out = res.stdout
    assert res.returncode == 0, f"appliance start {name} --wait:\n{res.stdout}{res.stderr}"
    assert f"reported in as {name}" in out, out
    vm.wait_for(rf"provisiond-installed: reported in as {name}", 60)
    app = cli_json(tb, "appliance", "show", name)
    assert app["state"] == "active", app
    assert tb.resource_state(mac) == "active"
    # SSH with the server's key that the template installed; the host key the OS reported
    assert cli(tb, "run", mac, "--", "hostname", timeout=60).strip() == name
    res_id = cli_json(tb, "resource", "show", mac)["id"]
    jobs = [j for j in cli_json(tb, "job", "list")
            if j["kind"] == "agent.install" and j["resource_id"] == res_id]  # fmt: skip
    assert [j["state"] for j in jobs] == ["succeeded"], jobs
    agent_log = cli_json(tb, "job", "show", str(jobs[0]["id"]))["log"]
    both = " (both installs side by side)" if len(done) > 1 else ""
    sys.stderr.write(f"\n{name}: appliance start -> OS reported in: {elapsed:.0f} s{both}\n"
                     f"{agent_log}")  # fmt: skip
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


def test_bios_install_boots_its_own_disk(installs):
    done = finish(installs, "tplbios", uefi=False)
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
        local_anchor(installs[0], done)


@pytest.mark.skipif(not Path(OVMF).exists(), reason=f"{OVMF} missing (apt-get install ovmf)")
def test_uefi_install_boots_its_own_disk(installs):
    done = finish(installs, "tpluefi", uefi=True)
    for step in ("Disklabel type: gpt", "vfat ESP", "boot loader systemd-boot", "sha256 verified"):
        assert step in done["out"], done["out"]
