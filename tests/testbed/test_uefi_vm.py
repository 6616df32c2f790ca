"""UEFI: a QEMU machine with OVMF network-boots through provisiond to idle.

OVMF's network stack runs the NIC's iPXE EFI ROM; provisiond answers its
DHCP with the script URL, the script loads the agent kernel through its EFI
stub (``initrd=`` named on the command line) and the agent reports
``firmware: uefi``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testbed import OVMF, wait_until

pytestmark = [
    pytest.mark.testbed,
    pytest.mark.skipif(not Path(OVMF).exists(), reason=f"{OVMF} missing (apt-get install ovmf)"),
]
MAC = "52:54:00:ef:00:01"


def test_uefi_machine_becomes_idle(testbed, boot_assets):
    tb = testbed
    tb.start_provisiond(tb.provisiond_config(heartbeat_interval=2))
    res = tb.provisiond_cli("kernel", "add", "agent", "--kernel", str(boot_assets.kernel),
                            "--initrd", str(boot_assets.initrd), "--default")  # fmt: skip
    assert res.returncode == 0, res.stderr
    vm = tb.boot_vm("uefi1", MAC, uefi=True, mem=512)
    wait_until(lambda: tb.resource_state(MAC) == "idle", 240, interval=1)
    shown = json.loads(tb.provisiond_cli("resource", "show", MAC, "--json").stdout)
    assert shown["inventory"]["firmware"] == "uefi"
    assert "provisiond: idle agent" in vm.console_text()
