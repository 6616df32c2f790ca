"""Power-state polling at scale: one sweep over N simulated Redfish BMCs, provisiond vs sushy.

Owns the benchmark of issue 13's "power-status polling of 1,000 simulated
BMCs". The BMCs are tests/redfish_sim.py in a separate process (each its own
127.0.0.1 port, sessions, one ComputerSystem each); the state is a real SQLite
database with N resources whose Redfish settings are stored as provisiond
stores them (password sealed).

- **provisiond**: :func:`provisiond.powerctl.sweep` — read the N rows, open the
  sealed passwords, ask every BMC ``[power] concurrency`` at a time (kept
  sessions), write the N states in one transaction.
- **anchor**: OpenStack's ``sushy`` client library (what Ironic's power-state
  sync uses), one cached ``Sushy`` connection per BMC, ``get_system().power_state``
  for every BMC from a thread pool of the same size. It writes no database.

Both do one GET of the system per BMC and sweep after one warm-up sweep
(log-ins done). Runs are interleaved (provisiond, sushy, provisiond, ...);
wall time and this process's CPU time (all threads) per sweep are printed,
then median and range and the ratio. Bounded: N <= 5,000, runs <= 20.

    .venv/bin/python bench/power/bench_power.py --bmcs 1000 --runs 5 --concurrency 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from provisiond import config as configmod  # noqa: E402
from provisiond import powerctl, resources  # noqa: E402
from provisiond.db import Database  # noqa: E402
from tests.conftest import write_config  # noqa: E402

USER, PASSWORD = "admin", "s3cret"


def start_sim(count: int, workdir: Path) -> tuple[subprocess.Popen, list[str]]:
    ports = workdir / "bmcs.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.redfish_sim", "--count", str(count),
         "--ports-file", str(ports), "--user", USER, "--password", PASSWORD],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = proc.stdout.readline()
    if '"ready"' not in line:
        proc.kill()
        raise SystemExit(f"the Redfish simulator did not start: {line!r}")
    return proc, ports.read_text().split()


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def provisiond_world(workdir: Path, urls: list[str], concurrency: int):
    path = write_config(workdir)
    path.write_text(path.read_text() + f"[power]\ntimeout = 30\nconcurrency = {concurrency}\n")
    cfg = configmod.load(path)
    db = Database(cfg.database_url)
    db.migrate()
    with db.transaction() as s:
        for i, url in enumerate(urls):
            r = resources.ensure(s, f"52:54:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:"
                                    f"{i >> 8 & 255:02x}:{i & 255:02x}")  # fmt: skip
            powerctl.set_power(s, cfg, r, "redfish", url, USER, PASSWORD, {}, "bench")
    return cfg, db


def sushy_sweep_factory(urls: list[str], pool: ThreadPoolExecutor):
    import sushy

    def connect(url: str):
        return sushy.Sushy(url + "/redfish/v1/", username=USER, password=PASSWORD, verify=False)

    conns = list(pool.map(connect, urls))

    def sweep() -> dict[str, int]:
        states = list(pool.map(lambda c: c.get_system("/redfish/v1/Systems/1").power_state, conns))
        out: dict[str, int] = {}
        for st in states:
            out[str(st)] = out.get(str(st), 0) + 1
        return out

    def close() -> None:
        """Log every session out while the BMCs still run (sushy does it when a Sushy dies)."""

        def logout(c) -> None:  # what Sushy.__del__ does; its reference cycle delays that
            if c._auth:
                c._auth.close()
                c._auth = None

        list(pool.map(logout, conns))

    return sweep, close


def measure(fn, sim_pid: int) -> dict:
    c0, s0, t0 = time.process_time(), cpu_of(sim_pid), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 3), "cpu_s": round(time.process_time() - c0, 3),
            "bmc_cpu_s": round(cpu_of(sim_pid) - s0, 3), "result": result}  # fmt: skip


def summary(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows]
    return f"median {statistics.median(vals):.3f} s (range {min(vals):.3f}-{max(vals):.3f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bmcs", type=int, default=1000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out", help="append the raw results (JSON lines) here")
    args = p.parse_args()
    if not 1 <= args.bmcs <= 5000 or not 1 <= args.runs <= 20:
        raise SystemExit("--bmcs 1..5000 and --runs 1..20")
    try:
        import sushy  # noqa: F401
    except ImportError:
        raise SystemExit("the anchor needs sushy: .venv/bin/pip install sushy")
    import logging

    logging.getLogger("sushy").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-power-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        sim, urls = start_sim(args.bmcs, workdir)
        print(f"{len(urls)} simulated BMCs up in {time.perf_counter() - t0:.1f} s", flush=True)
        try:
            cfg, db = provisiond_world(workdir, urls, args.concurrency)
            pool = ThreadPoolExecutor(args.concurrency, thread_name_prefix="power")
            ours = lambda: powerctl.sweep(cfg, db, pool).states  # noqa: E731
            anchor_pool = ThreadPoolExecutor(args.concurrency, thread_name_prefix="sushy")
            anchor, close_anchor = sushy_sweep_factory(urls, anchor_pool)
            print("warm-up:", measure(ours, sim.pid), measure(anchor, sim.pid), flush=True)
            rows = {"provisiond": [], "sushy": []}
            for run in range(args.runs):
                for name, fn in (("provisiond", ours), ("sushy", anchor)):
                    m = measure(fn, sim.pid)
                    rows[name].append(m)
                    line = {"run": run + 1, "client": name, "bmcs": args.bmcs,
                            "concurrency": args.concurrency, **m}  # fmt: skip
                    print(json.dumps(line), flush=True)
            load = os.getloadavg()[0]
            print(f"\n{args.bmcs} BMCs, concurrency {args.concurrency}, {args.runs} interleaved "
                  f"runs, load average {load:.1f} at the end")  # fmt: skip
            for name in rows:
                print(f"  {name:10s} wall {summary(rows[name], 'wall_s')}; "
                      f"CPU {summary(rows[name], 'cpu_s')}")  # fmt: skip
            mw = statistics.median(r["wall_s"] for r in rows["provisiond"])
            aw = statistics.median(r["wall_s"] for r in rows["sushy"])
            mc = statistics.median(r["cpu_s"] for r in rows["provisiond"])
            ac = statistics.median(r["cpu_s"] for r in rows["sushy"])
            print(f"  ratio provisiond/sushy: wall {mw / aw:.2f}, CPU {mc / ac:.2f}")
            if args.out:
                with open(args.out, "a") as f:
                    for name, ms in rows.items():
                        for m in ms:
                            f.write(json.dumps({"client": name, "bmcs": args.bmcs, **m}) + "\n")
            db.dispose()
            close_anchor()
        finally:
            sim.terminate()
            try:
                sim.wait(30)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()


if __name__ == "__main__":
    main()
