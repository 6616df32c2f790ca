"""Re-export of :mod:`pxe.boot` (the boot-policy port moved there: ``pxe`` imports nothing
from ``provisiond``). New code imports ``pxe.boot``; this name stays for existing imports."""

from pxe.boot import (
    Architecture,
    BootAction,
    BootPolicy,
    BootSpec,
    Firmware,
    Machine,
    SanTarget,
    normalize_mac,
    script_problem,
)

__all__ = [
    "Architecture",
    "BootAction",
    "BootPolicy",
    "BootSpec",
    "Firmware",
    "Machine",
    "SanTarget",
    "normalize_mac",
    "script_problem",
]
