"""Who is asking and what it should load next: firmware detection and boot files.

Owns two decisions, both pure and table-driven:

* :func:`detect` reads a request and says which :class:`Firmware` sent it
  (iPXE, UEFI HTTP boot, PXE ROM BIOS/UEFI) or ``None`` for a plain DHCP
  client (an OS, the agent's udhcpc), which gets an address but no boot file.
* :func:`choose` maps (firmware, architecture) to a :class:`BootFile`: a TFTP
  file name or an HTTP URL. Change :data:`TFTP_FILES` to switch, e.g., UEFI
  to ``snponly.efi``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pxe.boot import Architecture, Firmware, Machine
from pxe.dhcp.codec import DhcpPacket, Opt

# PXE spec 2.1 section 2.2 / UEFI 2.5 section 24.7: vendor class prefixes
PXE_CLIENT, HTTP_CLIENT = "PXEClient", "HTTPClient"

# (firmware, architecture) -> file served by TFTP. Missing = no boot file.
TFTP_FILES: dict[tuple[Firmware, Architecture], str] = {
    (Firmware.PXE_BIOS, Architecture.BIOS): "undionly.kpxe",
    (Firmware.PXE_UEFI, Architecture.EFI_BC): "ipxe.efi",
    (Firmware.PXE_UEFI, Architecture.EFI_X86_64): "ipxe.efi",
}
# UEFI HTTP boot (arch 16/19 or vendor class HTTPClient) -> path under http_base
HTTP_FILES: dict[Architecture, str] = {
    Architecture.EFI_X86_64_HTTP: "/assets/ipxe.efi",
    Architecture.EFI_X86_64: "/assets/ipxe.efi",
    Architecture.EFI_BC: "/assets/ipxe.efi",
}


@dataclass(frozen=True)
class BootFile:
    name: str  # BOOTP file field and option 67
    tftp: bool  # True: siaddr/option 66 point at our TFTP server
    vendor_class: str  # option 60 in the reply ("PXEClient" / "HTTPClient" / "")


def detect(p: DhcpPacket) -> Firmware | None:
    """RFC 4578 + iPXE conventions; None = not a network-boot client."""
    o = p.options
    if Opt.VENDOR_CLASS not in o and Opt.USER_CLASS not in o and Opt.IPXE_ENCAP not in o:
        return None  # the common plain client (an OS): nothing below can match
    if Opt.IPXE_ENCAP in o or "iPXE" in p.user_classes:
        return Firmware.IPXE
    vendor = p.text_opt(Opt.VENDOR_CLASS) or ""
    if vendor.startswith(HTTP_CLIENT):
        return Firmware.UEFI_HTTP
    if not vendor.startswith(PXE_CLIENT):
        return None
    arch = Architecture.from_code(p.client_arch)
    return Firmware.PXE_BIOS if arch is Architecture.BIOS else Firmware.PXE_UEFI


_HOST_OK = re.compile(r"[^a-z0-9-]")


def sanitize_hostname(raw: str | None) -> str | None:
    """Option 12 as a DNS label (RFC 1123 section 2.1), or None if nothing is left.

    Only the first label counts; control characters, ``/`` and other bytes are
    removed, so ``../etc`` and ``a\\nb`` cannot reach logs, paths or DNS.
    """
    if not raw:
        return None
    label = _HOST_OK.sub("", raw.split(".", 1)[0].lower()).strip("-")[:63]
    return label or None


def machine(p: DhcpPacket, firmware: Firmware) -> Machine:
    hostname = sanitize_hostname(p.text_opt(Opt.HOSTNAME))
    return Machine(
        mac=p.chaddr,
        arch=Architecture.from_code(p.client_arch),
        firmware=firmware,
        uuid=p.client_uuid,
        hostname=hostname,
    )


def choose(firmware: Firmware, arch: Architecture, mac: str, http_base: str) -> BootFile | None:
    """The next thing this client loads, or None when we have nothing for it."""
    if firmware is Firmware.IPXE:
        return BootFile(f"{http_base}/boot/{mac.replace(':', '-')}.ipxe", False, "")
    if firmware is Firmware.UEFI_HTTP:
        path = HTTP_FILES.get(arch)
        return BootFile(f"{http_base}{path}", False, HTTP_CLIENT) if path else None
    name = TFTP_FILES.get((firmware, arch))
    return BootFile(name, True, PXE_CLIENT) if name else None
