"""Firmware detection and boot-file choice, table-driven."""

from __future__ import annotations

import pytest

from pxe.boot import Architecture as A
from pxe.boot import Firmware as F
from pxe.dhcp import bootfile
from pxe.dhcp.codec import decode
from tests.unit import dhcp_packets as pk

BASE = "http://10.0.0.1:8080"


@pytest.mark.parametrize(
    "make, firmware",
    [
        (lambda: pk.pxe("discover", 0), F.PXE_BIOS),
        (lambda: pk.pxe("discover", 6), F.PXE_UEFI),
        (lambda: pk.pxe("discover", 7), F.PXE_UEFI),
        (lambda: pk.pxe("discover", 9), F.PXE_UEFI),
        (lambda: pk.pxe("discover", 16, vendor="HTTPClient"), F.UEFI_HTTP),
        (pk.ipxe, F.IPXE),  # user class iPXE and option 175
        (lambda: pk.bootp([("message-type", "discover"), (175, b"\x13\x01\x01")]), F.IPXE),
        (lambda: pk.rfc3004_user_class(), F.IPXE),
        (lambda: pk.plain(), None),
        (lambda: pk.plain(extra=[("vendor_class_id", b"MSFT 5.0")]), None),
    ],
)
def test_detect(make, firmware):
    assert bootfile.detect(decode(make())) == firmware


@pytest.mark.parametrize(
    "firmware, arch, name, tftp, vendor",
    [
        (F.PXE_BIOS, A.BIOS, "undionly.kpxe", True, "PXEClient"),
        (F.PXE_UEFI, A.EFI_BC, "ipxe.efi", True, "PXEClient"),
        (F.PXE_UEFI, A.EFI_X86_64, "ipxe.efi", True, "PXEClient"),
        (F.UEFI_HTTP, A.EFI_X86_64_HTTP, f"{BASE}/assets/ipxe.efi", False, "HTTPClient"),
        (F.IPXE, A.EFI_BC, f"{BASE}/boot/52-54-00-12-34-56.ipxe", False, ""),
        (F.IPXE, A.BIOS, f"{BASE}/boot/52-54-00-12-34-56.ipxe", False, ""),
    ],
)
def test_choose(firmware, arch, name, tftp, vendor):
    assert bootfile.choose(firmware, arch, pk.MAC, BASE) == bootfile.BootFile(name, tftp, vendor)


@pytest.mark.parametrize("firmware, arch", [(F.PXE_UEFI, A.EFI_ARM64), (F.PXE_BIOS, A.UNKNOWN)])
def test_choose_nothing_for_unknown_arch(firmware, arch):
    assert bootfile.choose(firmware, arch, pk.MAC, BASE) is None


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("node-7", "node-7"),
        ("Node7.lab.example", "node7"),
        ("../../etc/passwd", None),
        ("a\nb\x00c", "abc"),
        ("-x-", "x"),
        ("", None),
        (None, None),
        ("a" * 80, "a" * 63),
    ],
)
def test_sanitize_hostname(raw, clean):
    assert bootfile.sanitize_hostname(raw) == clean


def test_machine_from_request():
    m = bootfile.machine(decode(pk.pxe("discover", 7)), F.PXE_UEFI)
    assert (m.mac, m.arch, m.uuid) == (pk.MAC, A.EFI_BC, "00010203-0405-0607-0809-0a0b0c0d0e0f")
