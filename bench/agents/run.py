"""Agent-scale benchmark: one daemon, N simulated agents, in private namespaces.

Owns the harness around bench/agents/load.py. A tests/netlab.Lab gives the
daemon a namespace with ``br0`` = 10.X.0.1/24; one client namespace holds
10.X.0.2 (API probes, the command queuer) and the relay address 10.X.64.1.
The daemon serves a relayed subnet 10.X.64.0/18 (route via 10.X.0.2), so
every simulated machine leases its own address by DHCP and speaks from it.
The harness samples the daemon's CPU and RSS from /proc once a second and,
afterwards, counts resources that went ``offline`` (every agent was alive
the whole run, so each one is *wrongly* offline). One JSON line per run is
printed and appended to ``--results``.

    sudo .venv/bin/python bench/agents/run.py --agents 100,500 --duration 300
    sudo .venv/bin/python bench/agents/run.py --agents 200 --duration 60 \\
        --code /tmp/provisiond-main      # the same load against another checkout

``--code DIR`` runs the daemon from another source tree (``git archive main``
unpacked), for before/after comparisons with the same load. Bounded: each
run stops by itself (load.py's --duration; the harness kills it after
duration + storm limit + 120 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.daemonlab import LabDaemon, lab_config  # noqa: E402
from tests.netlab import Lab, sh  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


class Sampler:
    """CPU seconds and RSS of one process, once a second, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.rss_mib, self.cpu = pid, [], []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.cpu.append((time.monotonic(), self._cpu_s()))
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.rss_mib.append(int(line.split()[1]) / 1024)
            except (OSError, IndexError, ValueError):
                return

    def start(self) -> Sampler:
        self._t.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._t.join(3)
        if len(self.cpu) < 2:
            return {}
        (t0, c0), (t1, c1) = self.cpu[0], self.cpu[-1]
        return {"cpu_pct": round(100 * (c1 - c0) / (t1 - t0), 1),
                "rss_max_mib": round(max(self.rss_mib), 1)}  # fmt: skip


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def api_token(database_url: str) -> str:
    from provisiond import users
    from provisiond.db import Database

    db = Database(database_url)
    with db.transaction() as s:
        user = users.create(s, "bench", "bench-password-1", "admin", "bench")
        _, secret = users.create_token(s, user, "bench", "bench")
    db.dispose()
    return secret


def offline_events(database_url: str) -> int:
    from sqlalchemy import func, select

    from provisiond.db import Database
    from provisiond.model import Event

    db = Database(database_url)
    with db.reader() as s:
        n = s.scalar(
            select(func.count()).where(
                Event.action == "resource.state", Event.detail.like("%-> offline%")
            )
        )
    db.dispose()
    return int(n or 0)


def one_run(args: argparse.Namespace, n: int, work: Path) -> dict:
    with Lab("agnt") as lab:
        x = lab.net.rsplit(".", 1)[0]  # "10.X"
        relay, subnet = f"{x}.64.1", f"{x}.64.0/18"
        client = lab.add_client(address=f"{lab.net}.2")
        sh("ip", "-n", client.name, "addr", "add", f"{relay}/32", "dev", "eth0")
        sh("ip", "-n", lab.server.name, "route", "add", subnet, "via", f"{lab.net}.2")
        db_url = args.database_url or f"sqlite:///{work}/state/provisiond.db"
        extra = (f'[[subnet]]\ncidr = "{subnet}"\nrange = ["{x}.64.10", "{x}.127.250"]\n'
                 f'router = "{relay}"\nlease_time = 7200\n')  # fmt: skip
        text = lab_config(lab, work / "state", extra)
        text = text.replace('http_port = 8080', f'http_port = 8080\ndatabase_url = "{db_url}"\n'
                            'log_level = "info"')  # fmt: skip
        d = LabDaemon(lab, work, text)
        env_backup = os.environ.get("PYTHONPATH")
        if args.code:
            os.environ["PYTHONPATH"] = str(args.code)
        try:
            d.start()
        finally:
            if args.code:
                os.environ.pop("PYTHONPATH", None)
            if env_backup is not None:
                os.environ["PYTHONPATH"] = env_backup
        try:
            d.add_fake_kernel()
            # the daemon sees a kernel added by the CLI at its next inventory poll
            # (1 s); boot scripts before that carry no agent token
            time.sleep(2.5)
            token = api_token(db_url)
            out = work / "load.json"
            cmd = [sys.executable, str(REPO / "bench/agents/load.py"), "--server", lab.server_ip,
                   "--relay", relay, "--probe-src", f"{lab.net}.2", "--agents", str(n),
                   "--duration", str(args.duration), "--wait", str(args.wait),
                   "--commands-per-s", str(args.commands_per_s), "--api-token", token,
                   "--storm-limit", str(args.storm_limit), "--ready", str(work / "ready"),
                   "--out", str(out)]  # fmt: skip
            sampler = None
            load = client.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            deadline = time.monotonic() + args.duration + args.storm_limit + 120
            while load.poll() is None and time.monotonic() < deadline:
                if sampler is None and (work / "ready").exists():
                    sampler = Sampler(d.proc.pid).start()
                time.sleep(0.5)
            if load.poll() is None:
                load.kill()
            log = load.communicate()[0]
            usage = sampler.stop() if sampler else {}
            if not out.exists():
                raise SystemExit(f"load.py failed (exit {load.returncode}):\n{log[-3000:]}")
            result = json.loads(out.read_text())
            result.update(usage)
            result["wrongly_offline"] = offline_events(db_url)
            result["daemon_alive"] = d.proc.poll() is None
        finally:
            d.stop()
            if d.log.exists():  # kept for a look after the run
                (args.results.parent / "last-daemon.log").write_bytes(d.log.read_bytes())
        return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", default="100", help="comma-separated N")
    ap.add_argument("--duration", type=float, default=300)
    ap.add_argument("--wait", type=int, default=30)
    ap.add_argument("--commands-per-s", type=float, default=2.0)
    ap.add_argument("--storm-limit", type=float, default=300)
    ap.add_argument("--database-url", default="", help="default: SQLite in the run's directory")
    ap.add_argument("--code", type=Path, default=None, help="run the daemon from this tree")
    ap.add_argument("--label", default="")
    ap.add_argument("--results", type=Path, default=REPO / "bench/agents/results.jsonl")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/agents needs root (network namespaces)", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 1 << 16)), hard))
    for n in [int(v) for v in args.agents.split(",")]:
        load_before = loadavg()
        with tempfile.TemporaryDirectory(prefix="bench-agents-") as tmp:
            result = one_run(args, n, Path(tmp))
        result.update(label=args.label or ("code=" + str(args.code) if args.code else "branch"),
                      loadavg_before=load_before, loadavg_after=loadavg(),
                      at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # fmt: skip
        line = json.dumps(result)
        print(line, flush=True)
        with open(args.results, "a") as fh:
            fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
