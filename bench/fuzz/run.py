"""Long fuzzing run of the parsers: tests/fuzz under the ``long`` hypothesis profile.

Owns the fuzzing figures in BENCHMARKS.md. Runs ``pytest tests/fuzz`` with
``HYPOTHESIS_PROFILE=long`` (random, not derandomized) and ``FUZZ_EXAMPLES``
examples per property, then prints, per target, the inputs tried (counted by
the properties themselves, tests/fuzz/tally.py: every call of a property body,
shrinking included) and the unhandled exceptions (failed properties), and the
totals. Exit status 0 only when every property held.

    .venv/bin/python bench/fuzz/run.py [--examples 20000] [-k EXPR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=20_000, help="examples per property")
    ap.add_argument("-k", default="", help="pytest -k expression (a subset of the targets)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "tally.json"
        env = dict(os.environ, HYPOTHESIS_PROFILE="long", FUZZ_EXAMPLES=str(args.examples),
                   FUZZ_REPORT=str(report))  # fmt: skip
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz",
               "-o", "timeout=0", "-rf"] + (["-k", args.k] if args.k else [])  # fmt: skip
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        counts = json.loads(report.read_text()) if report.exists() else {}
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, re.M)
    print(f"{'target':32} {'inputs tried':>14}")
    for target, n in counts.items():
        print(f"{target:32} {n:>14,}")
    print(f"{'total':32} {sum(counts.values()):>14,}")
    print(f"unhandled exceptions (failed properties): {len(failed)}")
    for name in failed:
        print(f"  FAILED {name}")
    print(f"examples per property: {args.examples:,}; wall time {elapsed:.0f} s")
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:])
    if proc.returncode != 0:
        print(proc.stdout[-6000:], file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
