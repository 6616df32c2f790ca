"""How many inputs each fuzz target tried in this run (read by bench/fuzz/run.py).

Each property test calls :func:`tried` once per example with its target name;
``tests/fuzz/conftest.py`` writes the counts as JSON to ``$FUZZ_REPORT`` at
the end of the session.
"""

from __future__ import annotations

from collections import Counter

COUNTS: Counter[str] = Counter()


def tried(target: str) -> None:
    COUNTS[target] += 1
