"""proxyDHCP end to end: the site's DHCP server gives addresses, provisiond the boot.

The site's server is dnsmasq-base in its own namespace on ``<subnet>.2``
(addresses only: no boot file, next-server or PXE options); provisiond runs
on ``<subnet>.1`` with ``mode = "proxy"``. Two machines boot at once:

* BIOS: SeaBIOS and the NIC's iPXE ROM (user class iPXE) get the address
  from the site's server and the script URL from provisiond's proxy offer;
* UEFI: OVMF with the NIC's option ROM removed, so OVMF's own PXE stack
  (EDK2, vendor class ``PXEClient:Arch:00007``) takes provisiond's proxy
  offer, asks again on port 4011 (the answer has no option 43, a "BINL"
  offer to EDK2), loads ``ipxe.efi`` by TFTP, and that iPXE asks again.

Both reach idle, ``provisiond run`` works on both, then the BIOS machine
SAN-boots an appliance, still in proxy mode. A packet capture on the bridge
checks every answer provisiond sent: a ProxyDHCP answer (option 60
``PXEClient``, server-id, no address, next-server and a boot file) and never
an address. The machines are booted once and shared by the module's tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testbed import OVMF, Testbed, wait_until

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pxe.dhcp.codec import ACK, REQUEST, Opt, decode  # noqa: E402
from tests.testbed.conftest import unique_ns  # noqa: E402
from tests.testbed.diskimage import build_boot_disk  # noqa: E402
from tests.testbed.vmlab import btrfs_storage, cli  # noqa: E402

pytestmark = [
    pytest.mark.testbed,
    pytest.mark.skipif(not Path(OVMF).exists(), reason=f"{OVMF} missing (apt-get install ovmf)"),
]
BIOS, UEFI = "52:54:00:9e:00:01", "52:54:00:9e:00:02"
CONTROL_PORT = 600 + os.getpid() % 300  # tgtd control socket of this module only


class Bed:
    """The shared test bed: provisiond (proxy), the site's DHCP server, two machines."""

    def __init__(self, tb: Testbed, capture: Path, images: Path, vms: dict) -> None:
        self.tb, self.capture, self.images, self.vms = tb, capture, images, vms

    @property
    def ours(self) -> str:
        return self.tb.address

    @property
    def site(self) -> str:
        return self.tb.site_address

    def packets(self, mac: str, op: int) -> list[tuple[dict, object]]:
        """(wire row, decoded message) for every BOOTREQUEST (1) / BOOTREPLY (2) of ``mac``."""
        out = []
        for line in self.capture.read_text().splitlines():
            row = json.loads(line)
            try:
                p = decode(bytes.fromhex(row["bootp"]))
            except ValueError:
                continue
            if p.op == op and p.chaddr == mac:
                out.append((row, p))
        return out

    def replies(self, mac: str) -> list[tuple[dict, object]]:
        return self.packets(mac, 2)

    def requests(self, mac: str) -> list[dict]:
        return [row for row, p in self.packets(mac, 1) if p.message_type == REQUEST]


@pytest.fixture(scope="module")
def bed(testbed_ready, boot_assets, tmp_path_factory):
    tb = Testbed(tmp_path_factory.mktemp("proxy") / "tb", ns_name=unique_ns())
    try:
        tb.up()
        tb.start_site_dhcp()
        capture = tb.start_dhcp_capture()
        images = btrfs_storage(tb.workdir)
        config = tb.provisiond_config(heartbeat_interval=2, mode="proxy") + (
            f"\n[iscsi]\ntgt_control_port = {CONTROL_PORT}\nboot_timeout = 240\n"
            "boot_settle = 5\n"  # active 5 s after the iSCSI login (default 20 s: waiting)
            f'\n[[storage]]\nname = "fast"\nbackend = "reflink"\npath = "{images}"\n'
            f'\n[images]\nimport_dirs = ["{tb.workdir}"]\n'
        )
        tb.start_provisiond(config)
        cli(tb, "kernel", "add", "agent", "--kernel", str(boot_assets.kernel),
            "--initrd", str(boot_assets.initrd), "--default")  # fmt: skip
        vms = {
            BIOS: tb.boot_vm("pxbios", BIOS, reboot=True),
            UEFI: tb.boot_vm("pxuefi", UEFI, uefi=True, nic_rom=False),  # OVMF's own PXE
        }
        for mac in vms:
            wait_until(lambda m=mac: tb.resource_state(m) == "idle", 240, interval=1)
        yield Bed(tb, capture, images, vms)
    finally:
        subprocess.run(["tgtadm", "-C", str(CONTROL_PORT), "--op", "delete", "--mode",
                        "system"], capture_output=True)  # fmt: skip
        tb.down()


def show(tb, mac: str) -> dict:
    return json.loads(cli(tb, "resource", "show", mac, "--json"))


def assert_proxy_answer(row: dict, p, bed: Bed) -> None:
    """PXE spec 2.1 section 2.2 / iPXE dhcp_has_pxeopts(): what a proxy answer must be."""
    where = f"{row['src']}:{row['sport']} -> {row['dst']}:{row['dport']}"
    assert p.text_opt(Opt.VENDOR_CLASS) == "PXEClient", where
    assert p.ip_opt(Opt.SERVER_ID) == bed.ours, where
    assert (p.yiaddr, p.siaddr) == ("0.0.0.0", bed.ours), where
    assert p.file and Opt.LEASE_TIME not in p.options, where
    assert row["sport"] == (4011 if p.message_type == ACK else 67), where  # ACK: port 4011 only


def test_bios_and_uefi_machines_boot_to_idle_beside_the_site_dhcp_server(bed):
    tb = bed.tb
    leases = (tb.run_dir / "site-dhcp.leases").read_text()
    for mac, firmware in ((BIOS, "bios"), (UEFI, "uefi")):
        shown = show(tb, mac)
        assert shown["inventory"]["firmware"] == firmware
        assert mac in leases and shown["ip"] in leases  # the site's server gave the address
        answers = bed.replies(mac)
        ours = [(row, p) for row, p in answers if row["src"] == bed.ours]
        site = [p for row, p in answers if row["src"] == bed.site]
        assert ours and any(p.yiaddr == shown["ip"] for p in site), answers
        for row, p in ours:
            assert_proxy_answer(row, p, bed)
    console = bed.vms[BIOS].console_text()
    assert f"Filename: http://{bed.ours}:8080/boot/{BIOS.replace(':', '-')}.ipxe" in console
    # EDK2 takes the answer without option 43 as a "BINL" offer and asks on port 4011
    asked = [row for row in bed.requests(UEFI) if row["dport"] == 4011]
    acked = [
        row for row, p in bed.replies(UEFI) if p.message_type == ACK and row["src"] == bed.ours
    ]
    assert asked and acked and acked[0]["dst"] == asked[0]["src"], (asked, acked)
    uefi = bed.vms[UEFI].console_text()
    assert "NBP filename is ipxe.efi" in uefi and f"Server IP address is {bed.ours}" in uefi
    assert f"Filename: http://{bed.ours}:8080/boot/{UEFI.replace(':', '-')}.ipxe" in uefi


def test_provisiond_run_on_proxy_booted_machines(bed):
    for mac in (BIOS, UEFI):
        res = bed.tb.provisiond_cli("run", mac, "--", "cat /sys/class/net/eth0/address")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == mac


def test_san_boot_of_an_appliance_in_proxy_mode(bed, boot_assets):
    tb = bed.tb
    disk = build_boot_disk(tb.workdir / "master.raw", boot_assets.kernel, "SANBOOT-OK", "proxy")
    cli(tb, "image", "import", str(disk), "--name", "marker-disk")
    before = len(bed.replies(BIOS))
    cli(tb, "appliance", "create", "--resource", BIOS, "--image", "marker-disk",
        "--mode", "sanboot", "--name", "pxsan")  # fmt: skip
    cli(tb, "appliance", "start", "pxsan")
    vm = bed.vms[BIOS]
    vm.wait_for(r"SANBOOT-OK proxy", 240)
    wait_until(lambda: json.loads(cli(tb, "appliance", "show", "pxsan", "--json"))["state"]
               == "active", 60)  # fmt: skip
    assert "Registered SAN device 0x80" in vm.console_text()
    again = [(row, p) for row, p in bed.replies(BIOS)[before:] if row["src"] == bed.ours]
    assert again, "the rebooted machine got no proxy answer"
    for row, p in again:
        assert_proxy_answer(row, p, bed)
