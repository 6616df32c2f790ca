"""Hypothesis profiles for the parser fuzzers, and the per-target input report.

Profiles (``HYPOTHESIS_PROFILE``, default ``ci``):

- ``ci``: what ``make test`` runs: derandomized (the same inputs on every
  run, so CI is reproducible), a few hundred examples per target, the whole
  directory in well under a minute;
- ``long``: the bench run (``bench/fuzz/run.py``): random, ``FUZZ_EXAMPLES``
  examples per target (default 20,000), no deadline.

With ``FUZZ_REPORT=path`` the number of inputs each target tried is written
there as JSON when the session ends.
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, settings

from tests.fuzz.tally import COUNTS

_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile(
    "ci", max_examples=250, derandomize=True, deadline=None, suppress_health_check=_QUIET,
    print_blob=True,
)  # fmt: skip
settings.register_profile(
    "long", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")), deadline=None,
    suppress_health_check=_QUIET, print_blob=True,
)  # fmt: skip
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_sessionfinish(session, exitstatus) -> None:
    path = os.environ.get("FUZZ_REPORT")
    if path:
        with open(path, "w") as fh:
            json.dump(dict(sorted(COUNTS.items())), fh, indent=1)
