"""Boot assets: the iPXE binaries provisiond hands to PXE firmware.

Owns populating the boot assets directory from Debian's ``ipxe`` package
(``/usr/lib/ipxe``): ``undionly.kpxe`` (BIOS), ``ipxe.efi`` and
``snponly.efi`` (x86-64 UEFI). Copies are refreshed when the package's file
changes (size or mtime differ).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from provisiond import logs

IPXE_DIR = Path("/usr/lib/ipxe")
IPXE_FILES = ("undionly.kpxe", "ipxe.efi", "snponly.efi")
log = logs.get("assets")


def install_ipxe(assets_dir: Path, source: Path = IPXE_DIR) -> list[str]:
    """Copy the iPXE boot binaries into ``assets_dir``; returns what is missing."""
    assets_dir.mkdir(parents=True, exist_ok=True)
    missing = []
    for name in IPXE_FILES:
        src, dst = source / name, assets_dir / name
        if not src.is_file():
            missing.append(name)
            continue
        st = src.stat()
        if (
            dst.is_file()
            and dst.stat().st_size == st.st_size
            and dst.stat().st_mtime == st.st_mtime
        ):
            continue
        shutil.copy2(src, dst)
    if missing:
        log.warning(
            "iPXE binaries missing from %s: %s (apt-get install ipxe)", source, ", ".join(missing)
        )
    return missing
