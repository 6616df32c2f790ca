"""bench/ui: the resources page and GET /api/v1/resources with 10,000 resources.

Builds a fresh SQLite database (the embedded default, WAL) with N resources
(inventory like an agent's), creates the real Flask app, logs in through the
real log-in form (session cookie, CSRF) and times each request inside the
process with Flask's test client: that is the server time (routing, guard,
queries, rendering), without the network. Prints p50/p95/max per case and
exits 1 when a p95 exceeds the goal (200 ms).

Usage: .venv/bin/python bench/ui/bench.py [--resources 10000] [--requests 200]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import insert

from provisiond import config as configmod
from provisiond import users
from provisiond.app import build_context
from provisiond.model import Resource
from web import create_app

GOAL_MS = 200.0
STATES = ("idle", "idle", "active", "new", "offline", "failed", "deploying")


def populate(ctx, n: int) -> None:
    rows = [
        {
            "mac": "52:54:" + ":".join(f"{i >> s & 255:02x}" for s in (24, 16, 8, 0)),
            "macs": [],
            "state": STATES[i % len(STATES)],
            "state_reason": "",
            "ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
            "inventory": {"cpu": {"count": 4 + i % 8}, "memory_bytes": (8 + i % 56) * 2**30,
                          "disks": [{"name": "sda", "size": 2**40}],
                          "nics": [{"mac": "52:54:00:00:00:00", "speed": 10000}]},
        }
        for i in range(n)
    ]  # fmt: skip
    with ctx.db.transaction() as s:
        s.execute(insert(Resource), rows)
        users.create(s, "bench", "bench-password", "viewer", "bench")


def login(client) -> None:
    html = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    resp = client.post(
        "/login", data={"name": "bench", "password": "bench-password", "csrf_token": token}
    )
    assert resp.status_code == 302, resp.status_code


def measure(client, path: str, count: int) -> list[float]:
    client.get(path)  # warm caches and templates
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        resp = client.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        assert resp.status_code == 200, (path, resp.status_code)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resources", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    cfg = configmod.parse(
        f'state_dir = "{tmp}"\n[services]\ndhcp = false\ntftp = false\ndns = false\n'
    )
    ctx = build_context(cfg)
    ctx.db.migrate()
    t0 = time.perf_counter()
    populate(ctx, args.resources)
    took = time.perf_counter() - t0
    print(f"{args.resources} resources inserted in {took:.1f} s ({cfg.database_url})")
    app = create_app(ctx)
    client = app.test_client()
    login(client)
    cases = [
        ("UI /resources (page 1)", "/resources"),
        ("UI /resources?state=idle&page=40", "/resources?state=idle&page=40"),
        ("UI /resources?q=10.0.3 (search)", "/resources?q=10.0.3"),
        ("API /api/v1/resources (limit 50)", "/api/v1/resources"),
        ("API /api/v1/resources?limit=500", "/api/v1/resources?limit=500"),
        ("API /api/v1/resources?q=52:54:00:00:1", "/api/v1/resources?q=52:54:00:00:1"),
        ("UI / (dashboard)", "/"),
    ]
    failed = False
    print(f"{'case':<42} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for label, path in cases:
        ms = sorted(measure(client, path, args.requests))
        p95 = ms[int(0.95 * (len(ms) - 1))]
        failed |= p95 > GOAL_MS
        print(f"{label:<42} {statistics.median(ms):8.1f} {p95:8.1f} {ms[-1]:8.1f}")
    print(f"goal: p95 < {GOAL_MS:.0f} ms: {'MISSED' if failed else 'met'}")
    ctx.db.dispose()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
