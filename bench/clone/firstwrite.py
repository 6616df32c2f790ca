"""Pure parts of the in-guest first-write benchmark (bench_first_write.py).

Owns the interleaved run plan (which volume the SAN-booted guest writes,
in which order), the guest's console protocol (``FWBENCH result ...``
lines, parsed back into :class:`Result`), the summary (median, range and
ratio to the plain LV of each kind), and reading ``ldd`` output (which
shared objects a binary copied into the guest's initramfs needs). No
sockets, no subprocesses: unit-tested in tests/unit/test_bench_first_write.py.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

KINDS = ("classic", "thin", "plain")
LABELS = {
    "classic": "classic snapshot",
    "thin": "thin snapshot",
    "plain": "plain LV (no snapshot)",
}
RESULT = re.compile(
    r"^FWBENCH result kind=(\w+) run=(\d+) dev=(\S+) rc=(\d+) start=([\d.]+) end=([\d.]+)\s*$",
    re.M,
)


@dataclass(frozen=True)
class Step:
    kind: str
    run: int
    volume: str  # LV name on the storage host


@dataclass(frozen=True)
class Result:
    kind: str
    run: int
    device: str  # the guest's disk (sdX)
    rc: int  # dd's exit status
    seconds: float


def plan(runs: int) -> list[Step]:
    """Every run writes one fresh volume of each kind; the order rotates per run."""
    steps = []
    for run in range(runs):
        for i in range(len(KINDS)):
            kind = KINDS[(i + run) % len(KINDS)]
            steps.append(Step(kind, run, f"fw{kind[0]}{run}"))
    return steps


def parse_results(console: str) -> list[Result]:
    """``FWBENCH result`` lines of the guest's console, in order; anything else ignored."""
    out = []
    for m in RESULT.finditer(console.replace("\r", "")):
        kind, run, dev, rc, start, end = m.groups()
        if kind not in KINDS:
            continue
        out.append(Result(kind, int(run), dev, int(rc), float(end) - float(start)))
    return out


def summary(results: list[Result]) -> list[str]:
    """Lines: per kind median and range (ms) of successful writes, then the ratios to plain."""
    ok: dict[str, list[float]] = {k: [] for k in KINDS}
    for r in results:
        if r.rc == 0:
            ok[r.kind].append(r.seconds)
    lines, med = [], {}
    for kind in KINDS:
        values = ok[kind]
        if not values:
            lines.append(f"{LABELS[kind]:<22} no successful write")
            continue
        med[kind] = statistics.median(values)
        lines.append(
            f"{LABELS[kind]:<22} median {med[kind] * 1000:8.1f} ms  range "
            f"{min(values) * 1000:.1f}-{max(values) * 1000:.1f} (n={len(values)})"
        )
    for kind in ("classic", "thin"):
        if kind in med and "plain" in med:
            lines.append(f"first-write penalty {kind}: {med[kind] / med['plain']:.2f}x a plain LV")
    if "classic" in med and "thin" in med:
        lines.append(f"classic / thin: {med['classic'] / med['thin']:.2f}x")
    return lines


def ldd_paths(text: str) -> list[str]:
    """Absolute paths of the shared objects in ``ldd`` output (vdso and missing ones skipped)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if "=>" in parts:
            i = parts.index("=>")
            path = parts[i + 1] if len(parts) > i + 1 else ""
        else:
            path = parts[0] if parts else ""
        if path.startswith("/") and path not in out:
            out.append(path)
    return out
