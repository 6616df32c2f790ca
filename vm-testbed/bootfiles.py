"""``BootFiles``: a directory holding a kernel (``vmlinuz``) and an initrd (``initrd.img``).

The one description of that file pair for the test bed, its fixtures and the
benchmarks (the agent's boot assets, the storage VM's files). Stdlib only;
import with ``vm-testbed/`` on ``sys.path``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BootFiles:
    dir: Path  # holds vmlinuz and initrd.img

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"
