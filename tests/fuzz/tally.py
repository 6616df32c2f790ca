"""How many inputs each fuzz target tried in this run (read by bench/fuzz/run.py).

Each property test calls :func:`tried` once per example with its target name;
``tests/fuzz/conftest.py`` writes the counts as JSON to ``$FUZZ_REPORT`` at
the end of the session. :func:`budget` gives slow targets (a database
round trip per example) fewer examples in ``make test``.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import settings

COUNTS: Counter[str] = Counter()


def tried(target: str) -> None:
    COUNTS[target] += 1


def budget(ci_examples: int) -> settings:
    """Fewer examples for a slow target under the ``ci`` profile; the profile's count otherwise."""
    if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci":
        return settings(max_examples=ci_examples)
    return settings()
