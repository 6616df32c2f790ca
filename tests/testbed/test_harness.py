"""The test bed itself: PXE boot through the anchor path, parallel machines, teardown.

Real parts only: a network namespace, dnsmasq-base, QEMU (TCG) with Debian's
iPXE ROMs and the agent initrd. Each test keeps to at most two machines.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time

import pytest
from testbed import Testbed
from vm import pid_alive, read_pid

from tests.testbed.conftest import AGENT_UP, agent_script, unique_ns

pytestmark = pytest.mark.testbed

BOOT_TIMEOUT = 120  # TCG: ~10-30 s to the agent marker; two machines share 2 cores


def _registered_macs(anchor) -> dict[str, str]:
    return {json.loads(r["body"])["mac"]: json.loads(r["body"])["ip"]
            for r in anchor.registrations() if r["path"] == "/agent/v1/register"}  # fmt: skip


@pytest.mark.parametrize("nic", ["virtio-net-pci", "e1000"])
def test_pxe_boot_via_anchor_reaches_agent(testbed, boot_assets, nic):
    anchor = testbed.start_anchor(boot_assets.dir, agent_script(testbed, "http://10.77.0.1:8081"))
    mac = "52:54:00:aa:00:01"
    vm = testbed.boot_vm("pxe1", mac, nic=nic)

    # the NIC ROM is iPXE already: DHCP hands it the script URL, no TFTP chain
    vm.wait_for(r"Filename: http://10\.77\.0\.1:8081/boot\.ipxe", timeout=60)
    vm.wait_for(rf"IPXE-SCRIPT-LOADED {mac}", timeout=30)
    vm.wait_for(AGENT_UP, timeout=BOOT_TIMEOUT)
    ip = _registered_macs(anchor)[mac]
    assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network("10.77.0.0/24")


def test_two_machines_get_distinct_addresses(testbed, boot_assets):
    anchor = testbed.start_anchor(boot_assets.dir, agent_script(testbed, "http://10.77.0.1:8081"))
    vms = [
        testbed.boot_vm("par1", "52:54:00:bb:00:01", nic="virtio-net-pci"),
        testbed.boot_vm("par2", "52:54:00:bb:00:02", nic="e1000"),
    ]
    for vm in vms:
        vm.wait_for(AGENT_UP, timeout=BOOT_TIMEOUT * 2)
    seen = _registered_macs(anchor)
    assert set(seen) == {vm.mac for vm in vms}
    assert len(set(seen.values())) == 2, seen
    for vm in vms:  # the console shows the same address the agent reported
        assert seen[vm.mac] in vm.console_text()


def test_blank_disks_are_sparse_and_attached(testbed):
    vm = testbed.boot_vm("disk1", "52:54:00:cc:00:01", disks=["1G", "64M"], disk_if="ide")
    disks = sorted(vm.workdir.glob("disk1-disk*.raw"))
    assert [d.stat().st_size for d in disks] == [1 << 30, 64 << 20]
    assert all(d.stat().st_blocks == 0 for d in disks)
    vm.wait_for(r"iPXE", timeout=60)  # machine runs with the disks attached
    assert vm.alive()


def _processes_of(tb: Testbed) -> list[int]:
    pids = [read_pid(p) for p in [*tb.run_dir.glob("*.pid"), *tb.workdir.glob("vms/*.pid")]]
    return [p for p in pids if p is not None]


def _ns_present(name: str) -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return name in out.split()


@pytest.mark.parametrize("crash", [False, True], ids=["context-exit", "down-after-crash"])
def test_teardown_leaves_nothing_behind(testbed_ready, boot_assets, tmp_path, crash):
    ns = unique_ns()
    tb = Testbed(tmp_path / "tb", ns_name=ns).up()
    try:
        tb.start_anchor(boot_assets.dir, agent_script(tb, "http://10.77.0.1:8081"))
        vm = tb.boot_vm("gone1", "52:54:00:dd:00:01")
        vm.wait_for(r"iPXE", timeout=60)
        pids = _processes_of(tb)
        assert len(pids) == 4 and all(pid_alive(p) for p in pids)  # ra, dnsmasq, http, qemu
        taps = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "type", "tun"],
                              capture_output=True, text=True).stdout  # fmt: skip
        assert "tap0" in taps
    finally:
        if crash:  # a new process cleans up by name only (as `testbed.py down`)
            Testbed(tmp_path / "tb", ns_name=ns).down()
            vm._procs[0].wait(10)  # reap the QEMU child the "crashed" object started
        else:
            tb.down()
    time.sleep(0.2)
    assert not _ns_present(ns)
    assert not any(pid_alive(p) for p in pids), pids
    assert not list(tb.run_dir.glob("*.pid"))
    assert not list(tb.workdir.glob("vms/*.pid"))
