"""The one decision point: what should this machine boot now?

Owns the types every protocol shares — :class:`Machine` (what a request tells
us about the asker), :class:`BootSpec` (the answer) and the
:class:`BootPolicy` protocol. DHCP, TFTP, HTTP and DNS all ask
``policy.boot_spec(machine)`` at request time; ``None`` means "ignore this
machine". Standard library only, so codecs and servers can import it freely.
This is a port of ``pxe``: :class:`provisiond.policy.DatabasePolicy` implements it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Protocol


class Architecture(Enum):
    """RFC 4578 section 2.1 / IANA "Processor Architecture Types" (option 93)."""

    BIOS = 0
    EFI_IA32 = 6
    EFI_BC = 7  # EFI byte code; in practice sent by x86-64 UEFI firmware
    EFI_X86_64 = 9
    EFI_ARM32 = 10
    EFI_ARM64 = 11
    EFI_X86_64_HTTP = 16
    EFI_ARM64_HTTP = 19
    UNKNOWN = -1

    @classmethod
    def from_code(cls, code: int | None) -> Architecture:
        if code is None:
            return cls.BIOS
        try:
            return cls(code)
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_uefi(self) -> bool:
        return self not in (Architecture.BIOS, Architecture.UNKNOWN)


class Firmware(StrEnum):
    """What the client runs right now; decides the next boot file."""

    PXE_BIOS = "pxe-bios"  # legacy PXE ROM: chain undionly.kpxe by TFTP
    PXE_UEFI = "pxe-uefi"  # UEFI PXE: chain ipxe.efi / snponly.efi by TFTP
    UEFI_HTTP = "uefi-http"  # UEFI HTTP boot: chain ipxe.efi by URL
    IPXE = "ipxe"  # already iPXE: hand it the script URL


_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# what would end or extend an iPXE command: control characters (newline), ';', '&&',
# '||' (iPXE's command chaining) and '${' (its expansion); '#' words are comments
_SCRIPT_BAD = re.compile(r"[\x00-\x1f\x7f;]|&&|\|\||\$\{")


def script_problem(value: str) -> str | None:
    """Why ``value`` may not be rendered into an iPXE script, or None when it may."""
    m = _SCRIPT_BAD.search(value)
    if m:
        bad = m.group()
        what = f"control characters ({bad!r})" if len(bad) == 1 and bad != ";" else repr(bad)
        return f"must not contain {what}: it would inject an iPXE command"
    if any(word.startswith("#") for word in value.split()):
        return "must not contain a word starting with '#' (an iPXE comment)"
    return None


def normalize_mac(value: str) -> str:
    """'52-54-00-AB-CD-EF', '01-52-..' (pxelinux), '525400abcdef' -> '52:54:00:ab:cd:ef'."""
    v = value.strip().lower().replace("-", ":")
    if ":" not in v and len(v) == 12:
        v = ":".join(v[i : i + 2] for i in range(0, 12, 2))
    if v.count(":") == 6 and v.startswith("01:"):
        v = v[3:]
    if not _MAC_RE.match(v):
        raise ValueError(f"not a MAC address: {value!r}")
    return v


@dataclass(frozen=True)
class Machine:
    mac: str
    arch: Architecture = Architecture.BIOS
    firmware: Firmware = Firmware.PXE_BIOS
    uuid: str | None = None
    ip: str | None = None
    hostname: str | None = None


class BootAction(StrEnum):
    AGENT = "agent"  # the idle-resource initrd
    KERNEL = "kernel"  # an arbitrary kernel + initrd (installers, default kernel)
    SANBOOT = "sanboot"  # iSCSI SAN boot of a clone
    LOCAL_DISK = "local-disk"  # boot the machine's own disk
    DEPLOY = "deploy"  # the agent, told to write an image to disk


@dataclass(frozen=True)
class SanTarget:
    portal: str  # IP address of the iSCSI portal
    iqn: str
    lun: int
    initiator_iqn: str
    chap_user: str = ""
    chap_secret: str = field(default="", repr=False)
    keep_san: bool = True

    @property
    def uri(self) -> str:
        # iPXE: iscsi:<server>:<protocol>:<port>:<lun>:<targetname>
        return f"iscsi:{self.portal}:::{self.lun}:{self.iqn}"


@dataclass(frozen=True)
class BootSpec:
    action: BootAction
    kernel: str = ""  # path relative to the boot assets dir, or absolute URL
    initrds: tuple[str, ...] = ()
    cmdline: str = ""
    san: SanTarget | None = None
    resource_id: int | None = None
    label: str = ""  # human-readable, for logs and the script's echo line


class BootPolicy(Protocol):
    def boot_spec(self, machine: Machine) -> BootSpec | None: ...
