"""Smoke version of bench/agents: 50 simulated agents for 20 s against the real daemon.

Each agent leases its address from the daemon's DHCP server (relay-style),
fetches its boot script from that address, registers with its own ed25519
host key, heartbeats and long-polls the agent channel; ``run`` commands are
queued through the REST API meanwhile. Proves, at small scale and within
make test's budget: every machine registers, none is wrongly marked
offline, every queued command reaches its agent and its result is accepted,
no 5xx and no client error. The full-size figures are in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from tests.netlab import require_root_netns

pytestmark = pytest.mark.interop
REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_agents_run", REPO / "bench/agents/run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fifty_agents_for_twenty_seconds(tmp_path):
    require_root_netns()
    args = argparse.Namespace(
        duration=20, wait=30, commands_per_s=2.0, storm_limit=120, storm_window=10,
        database_url="", code=None, results=tmp_path / "results.jsonl", load_nice=0,
        py_spy=None, py_spy_s=0, py_spy_gil=False,
    )  # fmt: skip
    r = _bench().one_run(args, 50, tmp_path, f"sqlite:///{tmp_path}/state/provisiond.db")
    assert r["daemon_alive"]
    assert r["storm"]["registered"] == 50 and r["storm"]["failed"] == 0, r["storm"]
    assert r["storm"]["status5xx"] == 0 and r["status5xx"] == 0, r
    assert r["wrongly_offline"] == 0, r
    assert r["errors"] == {} and r["storm_errors"] == {}, r
    assert r["heartbeats"] >= 50, r  # every agent beat at least once in 20 s
    assert r["commands_queued"] >= 10, r
    assert r["commands_delivered"] == r["commands_queued"], r
    assert r["results_ok"] >= r["commands_delivered"], r
    assert r["healthz_n"] > 10 and r["resources_n"] > 5, r
    assert r["load_cpu_pct"] is not None and r["load_lag_p99_ms"] is not None, r
