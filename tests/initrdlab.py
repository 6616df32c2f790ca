"""Building the agent initrd in tests: the build script and the kernel to build for."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


BUILD_SH = REPO / "initrd" / "build.sh"


def newest_kernel() -> str | None:
    """Newest kernel with both /lib/modules/K and /boot/vmlinuz-K, or None."""
    mods = Path("/lib/modules")
    found = [
        k.name for k in mods.iterdir() if Path(f"/boot/vmlinuz-{k.name}").exists()
    ] if mods.is_dir() else []  # fmt: skip
    return max(found, key=_version_key) if found else None


def _version_key(v: str) -> list[int]:
    return [int(p) for p in v.replace("-", ".").split(".") if p.isdigit()]


NO_KERNEL = "no kernel in /lib/modules with /boot/vmlinuz (apt-get install linux-image-amd64)"
