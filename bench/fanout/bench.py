"""Fan-out benchmark: one image to N machines, multicast (udpcast) vs N unicast streams.

Owns the "Fan-out: one image to N machines (bench/fanout)" figures in
BENCHMARKS.md. Harness of bench/stream (its image maker is imported, not
copied): the real daemon in the server namespace of a tests/netlab.py Lab,
real agents (busybox sh, the initrd's EXTRA_BINS incl. ``udp-receiver``) in
one client namespace each, all behind the server's bridge ``br0``. The
server's port is limited to 1 Gbit/s with tbf on ``br0`` (everything the
server sends passes it once; the bridge copies multicast to every port after
it) — the kernel has no netem.

Legs, interleaved per round:

* ``unicast N`` (N = 1, 2, 4, 8): one bulk assign per machine, back to back
  (no group: each agent fetches its own HTTP chunk streams) — what N
  machines cost without fan-out;
* ``multicast N`` (N = 2, 4, 8): the bulk "assign one image to many" action
  (:func:`provisiond.bulk.run`, as ``POST /api/v1/resources/bulk`` runs it) —
  the jobs form one fan-out group: udp-sender → every agent, each chunk's
  sha256 checked, written, read back, checked (as unicast).

Wall time: from the first start to the last job ``succeeded`` (manifest
computed once beforehand). Every leg gets N new machines (namespace, agent,
blank sparse disk under /var/tmp, removed after the leg).
Goal (issue 15): time(multicast 8) <= 1.3 x time(unicast 1).

    .venv/bin/python bench/fanout/bench.py [--gib 4] [--fill 0.25] [--rounds 3] [--max-n 8]
        [--rate 1gbit] [--legs unicast1,unicast8,multicast8] [--disks /var/tmp|/dev/shm]
        [--mcast-rate 900m]

Two conditions (BENCHMARKS.md): the issue's (1 Gbit/s port; on one 2-core
host the N receivers then share its CPU and, with --disks /var/tmp, its one
disk, so the run measures the host) and a link-bound one (``--rate 100mbit
--gib 1``: the port, not the host, is the bottleneck — what N separate
machines see). The last line, ``SUMMARY``, has every leg's median and its
ratio to unicast 1, the load average range and the conditions.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from provisiond import bulk  # noqa: E402
from provisiond.config import load  # noqa: E402
from provisiond.db import Database  # noqa: E402
from provisiond.localdeploy import ensure_manifest  # noqa: E402
from provisiond.model import Image, Job  # noqa: E402
from tests.daemonlab import LabDaemon, lab_config  # noqa: E402
from tests.hostagent import HostAgent  # noqa: E402
from tests.netlab import Lab, sh  # noqa: E402

_spec = importlib.util.spec_from_file_location("stream_bench", REPO / "bench/stream/bench.py")
stream_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stream_bench)  # type: ignore[union-attr]

GiB = 2**30
LEG_TIMEOUT = 900.0


def mac(i: int) -> str:
    return f"52:54:00:5f:1{i // 256}:{i % 256:02x}"


class Bench:
    def __init__(self, lab: Lab, work: Path, disks: Path | None = None) -> None:
        self.lab, self.work = lab, work
        self.disks = disks or work  # where the machines' disks (and agent dirs) live
        extra = f'[[storage]]\nname = "local"\nbackend = "file"\npath = "{work / "images"}"\n'
        extra += f'[images]\nimport_dirs = ["{work}"]\n'
        extra += "[local]\nconfirm_boot = false\n"  # host agents boot no OS: written = done
        # every leg's machines are new (each boots by DHCP once): a wider pool than the lab's
        cfg = lab_config(lab, work / "state", extra).replace(
            f'range = ["{lab.net}.100", "{lab.net}.120"]',
            f'range = ["{lab.net}.100", "{lab.net}.250"]',
        )
        self.d = LabDaemon(lab, work, cfg)
        self.d.cli("init")
        self.d.add_fake_kernel()
        self.d.start()
        self.config = load(self.d.cfg)
        self.db = Database(f"sqlite:///{next((work / 'state').glob('*.db'))}")
        self.agents: list[HostAgent] = []
        self.machines = 0

    def shape(self, rate: str) -> None:
        sh("ip", "netns", "exec", self.lab.server.name, "tc", "qdisc", "replace", "dev", "br0",
           "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms")  # fmt: skip

    def import_image(self, size: int, fill: float) -> int:
        src = self.work / "fan.src"
        stream_bench.make_image(src, size, fill)
        self.d.cli("image", "import", str(src), "--name", "fan")
        src.unlink()
        with self.db.reader() as s:
            image_id = next(i.id for i in s.query(Image).all() if i.name == "fan")
        m = ensure_manifest(self.db, image_id)
        print(f"image fan: {size / GiB:.0f} GiB, {m.data_bytes / GiB:.2f} GiB in "
              f"{len(m.chunks)} non-zero chunks", flush=True)  # fmt: skip
        return image_id

    def machines_for_leg(self, n: int, size: int) -> list[str]:
        """N new machines (namespace + agent + blank sparse disk), idle."""
        macs = []
        for _ in range(n):
            i, self.machines = self.machines, self.machines + 1
            ip = f"{self.lab.net}.{2 + i % 98}"  # below the DHCP pool
            cl = self.lab.add_client(mac=mac(i), address=ip)
            self.agents.append(HostAgent(self.d, cl, self.disks / f"m{i}", mac(i), size, ip=ip))
            macs.append(mac(i))
        deadline = time.monotonic() + 180
        for m in macs:
            while self.d.cli_json("resource", "show", m)["state"] != "idle":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"machine {m} not idle")
                time.sleep(0.5)
        return macs

    def retire(self) -> None:
        """The leg's machines "rebooted into their disks": stop their agents, drop the disks."""
        for a in self.agents:
            a.stop()
            shutil.rmtree(a.dir.parent, ignore_errors=True)
        self.agents = []

    def leg(self, mode: str, n: int, size: int, fanout: dict | None = None) -> tuple[float, str]:
        macs = self.machines_for_leg(n, size)
        t0 = time.monotonic()
        if mode == "multicast":  # one bulk assign of all: one fan-out group
            items = bulk.run(self.config, self.db, macs, "assign", mode="local", image="fan",
                             fanout={**(fanout or {}), "transport": "mcast"})  # fmt: skip
        else:  # one bulk assign per machine, back to back: N unicast deploys at once
            items = [i for m in macs
                     for i in bulk.run(self.config, self.db, [m], "assign", mode="local",
                                       image="fan")]  # fmt: skip
        if not all(i.ok for i in items):
            raise RuntimeError(f"bulk assign: {items}")
        jobs = [int(re.search(r"job (\d+)", i.detail).group(1)) for i in items]
        detail = self.wait(jobs)
        wall = time.monotonic() - t0
        self.retire()
        return wall, detail

    def wait(self, jobs: list[int]) -> str:
        deadline = time.monotonic() + LEG_TIMEOUT
        left = set(jobs)
        repaired = 0
        while left:
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs {sorted(left)} did not end in {LEG_TIMEOUT:.0f} s")
            with self.db.reader() as s:
                for j in list(left):
                    job = s.get(Job, j)
                    if job.state == "failed":
                        raise RuntimeError(f"job {j} failed: {job.outcome}")
                    if job.state == "succeeded":
                        left.discard(j)
                        cmd = s.get(Job, (job.params or {}).get("command"))
                        m = re.search(r"(\d+) repaired over HTTP", cmd.log if cmd else "")
                        repaired += int(m.group(1)) if m else 0
            time.sleep(0.2)
        return f"{repaired} chunks repaired over HTTP" if repaired else ""


def _fs_of(path: Path) -> str:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=4)
    ap.add_argument("--fill", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-n", type=int, default=8)
    ap.add_argument("--rate", default="1gbit", help="tbf rate of the server port (br0)")
    ap.add_argument("--legs", default="", help="only these legs, e.g. unicast1,multicast8")
    ap.add_argument(
        "--disks",
        default="/var/tmp",
        help="where the machines' disks live: /var/tmp (default: one host disk "
        "shared by all N, written O_DIRECT) or /dev/shm (RAM: each machine's "
        "disk its own bandwidth, as on separate machines; no O_DIRECT there)",
    )
    ap.add_argument(
        "--mcast-rate",
        default="",
        help="udp-sender --max-bitrate of the multicast legs (bulk fanout rate)",
    )
    args = ap.parse_args()
    for tool in ("udp-sender", "udp-receiver", "tc"):
        if not shutil.which(tool):
            sys.exit(f"needs {tool} (apt-get install udpcast iproute2)")
    ns = [n for n in (1, 2, 4, 8) if n <= args.max_n]
    legs = [("unicast", n) for n in ns] + [("multicast", n) for n in ns if n >= 2]
    if args.legs:  # e.g. "unicast1,multicast8"
        legs = [leg for leg in legs if f"{leg[0]}{leg[1]}" in args.legs.split(",")]
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"image {args.gib} GiB, {args.fill:.0%} random; server port tbf {args.rate}")
    work = Path(tempfile.mkdtemp(prefix="bench-fanout-", dir="/var/tmp"))
    disks = Path(tempfile.mkdtemp(prefix="bench-fanout-disks-", dir=args.disks))
    print(f"machines' disks under {disks} ({_fs_of(disks)})")
    size = args.gib * GiB
    loads: list[float] = [os.getloadavg()[0]]
    fan = {"rate": args.mcast_rate} if args.mcast_rate else None
    walls: dict[tuple[str, int], list[float]] = {leg: [] for leg in legs}
    t_start = time.monotonic()
    try:
        with Lab("bfan") as lab:
            b = Bench(lab, work, disks)
            try:
                b.shape(args.rate)
                b.import_image(size, args.fill)
                for r in range(args.rounds):
                    order = legs if r % 2 == 0 else list(reversed(legs))  # interleaved
                    for mode, n in order:
                        wall, detail = b.leg(mode, n, size, fan)
                        walls[(mode, n)].append(wall)
                        loads.append(os.getloadavg()[0])
                        print(f"  round {r + 1} {mode:9} N={n}: {wall:6.1f} s "
                              f"(load {os.getloadavg()[0]:.1f}) {detail}", flush=True)  # fmt: skip
            finally:
                b.retire()
                b.db.dispose()
                b.d.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(disks, ignore_errors=True)
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\ntotal {time.monotonic() - t_start:.0f} s; {up}")
    base = statistics.median(walls.get(("unicast", 1)) or [float("nan")])
    print(f"{'leg':14} {'median':>8} {'range':>16}  x time(unicast 1)")
    for (mode, n), w in walls.items():
        med = statistics.median(w)
        print(
            f"{mode + ' ' + str(n):14} {med:7.1f}s {min(w):7.1f}-{max(w):6.1f}s  {med / base:6.2f}x"
        )
    med = {f"{m}{n}": statistics.median(w) for (m, n), w in walls.items() if w}
    ratios = " ".join(f"{k}={v:.1f}s({v / base:.2f}x)" for k, v in med.items())
    print(f"SUMMARY rate={args.rate} image={args.gib}GiB fill={args.fill:.0%} "
          f"disks={_fs_of(Path(args.disks))} rounds={args.rounds} "
          f"load={min(loads):.1f}-{max(loads):.1f} {ratios}")  # fmt: skip
    if ("multicast", 8) in walls:
        ratio = statistics.median(walls[("multicast", 8)]) / base
        print(
            f"RESULT time(multicast 8) / time(unicast 1) = {ratio:.2f} "
            f"({'PASS' if ratio <= 1.3 else 'FAIL'}: goal <= 1.3)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
