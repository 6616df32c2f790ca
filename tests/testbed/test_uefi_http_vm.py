"""UEFI HTTP boot: OVMF's own HTTP boot client gets ipxe.efi by URL and reaches idle.

The NIC's option ROM is removed (``romfile=``) so OVMF's network stack runs,
and OVMF's PXE boot options are switched off through fw_cfg
(``opt/org.tianocore/IPv4PXESupport`` / ``IPv6PXESupport`` = ``n``), so the
only network boot option left is "UEFI HTTPv4". Its DHCP DISCOVER carries
vendor class ``HTTPClient:Arch:00016``; provisiond (full mode) answers with
option 60 ``HTTPClient`` and the URL of ``ipxe.efi`` (UEFI 2.5 section 24.7),
which OVMF downloads and starts; that iPXE fetches the machine's script and
the agent registers. A capture on the bridge shows the exchange.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from testbed import OVMF, wait_until

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pxe.dhcp.codec import Opt, decode  # noqa: E402

pytestmark = [
    pytest.mark.testbed,
    pytest.mark.skipif(not Path(OVMF).exists(), reason=f"{OVMF} missing (apt-get install ovmf)"),
]
MAC = "52:54:00:ef:01:01"
NO_PXE = ("name=opt/org.tianocore/IPv4PXESupport,string=n",
          "name=opt/org.tianocore/IPv6PXESupport,string=n")  # fmt: skip
STARTED = r">>Start HTTP Boot over IPv4|>>Start PXE over IPv4|No bootable option|Shell>"


def dhcp_packets(capture: Path, mac: str) -> list:
    rows = [json.loads(line) for line in capture.read_text().splitlines()]
    return [p for p in (decode(bytes.fromhex(r["bootp"])) for r in rows) if p.chaddr == mac]


def test_ovmf_http_boot_gets_ipxe_efi_url_and_reaches_idle(testbed, boot_assets):
    tb = testbed
    capture = tb.start_dhcp_capture()
    tb.start_provisiond(tb.provisiond_config(heartbeat_interval=2))
    res = tb.provisiond_cli("kernel", "add", "agent", "--kernel", str(boot_assets.kernel),
                            "--initrd", str(boot_assets.initrd), "--default")  # fmt: skip
    assert res.returncode == 0, res.stderr
    vm = tb.boot_vm("uefihttp", MAC, uefi=True, nic_rom=False, fw_cfg=NO_PXE)
    started = vm.wait_for(STARTED, 180).group(0)
    if started != ">>Start HTTP Boot over IPv4":
        pytest.skip(reason=f"this OVMF build ({OVMF}) offers no UEFI HTTPv4 boot option with "
                    f"PXE disabled through fw_cfg; its console showed {started!r}")  # fmt: skip
    url = f"http://{tb.address}:8080/assets/ipxe.efi"
    vm.wait_for(re.escape(f"URI: {url}"), 60)
    wait_until(lambda: tb.resource_state(MAC) == "idle", 240, interval=1)
    shown = json.loads(tb.provisiond_cli("resource", "show", MAC, "--json").stdout)
    assert shown["inventory"]["firmware"] == "uefi"

    packets = dhcp_packets(capture, MAC)
    asked = [p for p in packets if p.op == 1 and (p.text_opt(Opt.VENDOR_CLASS) or "")
             .startswith("HTTPClient")]  # fmt: skip
    answered = [p for p in packets if p.op == 2 and p.text_opt(Opt.VENDOR_CLASS) == "HTTPClient"]
    assert asked and asked[0].client_arch == 16, [p.options for p in asked]  # x64 UEFI HTTP
    assert answered and all(p.file == url and p.text_opt(Opt.BOOTFILE) == url for p in answered)
    assert all(p.yiaddr.startswith(tb.subnet) for p in answered)
