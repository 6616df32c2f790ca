"""Local deploy benchmark: provisiond's HTTP chunked transport vs ``dd | nc`` vs ``curl | dd``.

Owns the "Streaming: local deploy (bench/stream)" figures in BENCHMARKS.md.
Everything runs in private network namespaces (tests/netlab.py Lab): the real
daemon (tests/daemonlab.py) in the server namespace, the real agent script
(busybox sh) in a client namespace, joined by one veth through the server's
bridge. The agent's PATH holds only what the initrd holds: every busybox
applet plus the basenames of ``EXTRA_BINS`` of initrd/build.sh (so the agent
uses ``openssl`` only if the initrd ships it). Its "disk" is a sparse file
(DEVROOT maps /dev/vda to it), recreated empty before and deleted after each
leg.

Images: ``sparse`` = ``--big-gib`` GiB (default 8) with 25 % random data (runs
of 64 MiB every 256 MiB, the rest holes); ``full`` = ``--full-gib`` GiB
(default 2) of random data. Legs, per image and link (unlimited, then tbf
1 Gbit/s on the server end of the client's veth — the kernel has no netem):

* ``provisiond``: ``appliance start`` → job succeeded (wall time includes the
  command delivery, every chunk's sha256, O_DIRECT writes, the read-back
  verification; the manifest is computed beforehand — once per image — and
  shown separately);
* ``dd|nc``: ``socat`` sends the raw image, the client runs busybox
  ``nc SERVER PORT | dd of=DISK bs=1M conv=fsync`` (fsync: the same
  durability as the agent's O_DIRECT writes; no verification);
* ``curl|dd``: busybox httpd serves the image, ``curl URL | dd ... conv=fsync``.

    .venv/bin/python bench/stream/bench.py [--big-gib 8] [--full-gib 2] [--no-shaped]

Prints wall time, effective throughput (image size / wall time) and the ratio
provisiond / ``dd|nc`` (and / ``curl|dd``) per scenario. Goals: >= 3x on the sparse image,
>= 0.9x on the full one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from provisiond.db import Database  # noqa: E402
from provisiond.localdeploy import ensure_manifest  # noqa: E402
from provisiond.model import Image, Job  # noqa: E402
from tests.agentlab import BUSYBOX  # noqa: E402
from tests.daemonlab import LabDaemon, lab_config  # noqa: E402
from tests.hostagent import HostAgent, initrd_bins  # noqa: E402
from tests.netlab import Lab, sh  # noqa: E402

MAC = "52:54:00:5b:00:77"
MiB, GiB = 2**20, 2**30
LEG_TIMEOUT = 240.0
PORT = 9000


def make_image(path: Path, size: int, fill: float) -> None:
    """``fill`` = 1: all random; else runs of 64 MiB random data every 64 MiB / fill."""
    run = 64 * MiB if fill < 1 else size
    stride = int(run / fill)
    with open(path, "wb") as fh:
        fh.truncate(size)
        for start in range(0, size, stride):
            fh.seek(start)
            left = min(run, size - start)
            while left > 0:
                n = min(16 * MiB, left)
                fh.write(os.urandom(n))
                left -= n


class Bench:
    def __init__(self, lab: Lab, work: Path, args) -> None:
        self.lab, self.work, self.args = lab, work, args
        extra = f'[[storage]]\nname = "local"\nbackend = "file"\npath = "{work / "images"}"\n'
        extra += f'[images]\nimport_dirs = ["{work}"]\n'
        self.d = LabDaemon(lab, work, lab_config(lab, work / "state", extra))
        self.d.cli("init")
        self.d.add_fake_kernel()
        self.d.start()
        self.client = lab.add_client(mac=MAC, address=f"{lab.net}.50")
        self.db = Database(f"sqlite:///{next((work / 'state').glob('*.db'))}")
        self.agent: HostAgent | None = None
        self.rows: list[tuple] = []

    def wait_state(self, want: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.d.cli_json("resource", "show", MAC)["state"] != want:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"resource not {want}: {self.d.cli_json('resource', 'show', MAC)}"
                )
            time.sleep(0.5)

    def import_image(self, name: str, size: int, fill: float) -> tuple[Path, int]:
        src = self.work / f"{name}.src"
        t0 = time.monotonic()
        make_image(src, size, fill)
        self.d.cli("image", "import", str(src), "--name", name)
        src.unlink()
        with self.db.reader() as s:
            img = next(i for i in s.query(Image).all() if i.name == name)
            image_id, vol = img.id, Path(img.volume.path)
        t1 = time.monotonic()
        m = ensure_manifest(self.db, image_id)
        t2 = time.monotonic()
        print(f"image {name}: {size / GiB:.0f} GiB, {m.data_bytes / GiB:.2f} GiB in "
              f"{len(m.chunks)} non-zero chunks; created+imported in {t1 - t0:.1f} s, "
              f"manifest computed once in {t2 - t1:.1f} s", flush=True)  # fmt: skip
        return vol, image_id

    # --- legs -------------------------------------------------------------------

    def leg_provisiond(self, name: str, size: int) -> tuple[float, str]:
        if self.agent is not None:  # it "rebooted" after its last deploy: boot a fresh one
            self.agent.stop()
            shutil.rmtree(self.work / "agent", ignore_errors=True)
        self.agent = HostAgent(self.d, self.client, self.work, MAC, size)
        self.wait_state("idle")
        self.d.cli("appliance", "create", "--resource", MAC, "--image", name, "--mode", "local",
                   "--name", "loc", "--disk", "/dev/vda",
                   "--param", f"workers={self.args.workers}")  # fmt: skip
        t0 = time.monotonic()
        out = self.d.cli("appliance", "start", "loc").stdout
        job_id = int(re.search(r"job (\d+)", out).group(1))
        state, detail = self.wait_job(job_id)
        wall = time.monotonic() - t0
        self.d.cli("appliance", "stop", "loc", "--wait")
        self.d.cli("appliance", "rm", "loc", check=False)
        self.d.cli("resource", "release", MAC)
        if state != "succeeded":
            raise RuntimeError(f"provisiond deploy {state}: {detail}")
        return wall, detail

    def wait_job(self, job_id: int) -> tuple[str, str]:
        deadline = time.monotonic() + LEG_TIMEOUT
        while time.monotonic() < deadline:
            with self.db.reader() as s:
                job = s.get(Job, job_id)
                state, params = job.state, dict(job.params or {})
                if state in ("succeeded", "failed"):
                    cmd = s.get(Job, params.get("command")) if params.get("command") else None
                    wrote = re.search(r"wrote .* in [0-9.]+ s", cmd.log if cmd else "")
                    return state, wrote.group(0) if wrote else (job.outcome or "")
            time.sleep(0.1)
        raise RuntimeError(f"provisiond job {job_id} did not end within {LEG_TIMEOUT:.0f} s")

    def leg_pipe(self, server_cmd: list[str], fetch: str, size: int) -> tuple[float, str]:
        disk = self.work / "devroot" / "dev" / "vda"
        disk.unlink(missing_ok=True)
        disk.parent.mkdir(parents=True, exist_ok=True)
        with open(disk, "wb") as fh:
            fh.truncate(size)
        srv = self.lab.server.popen(server_cmd, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            self.wait_listen(srv)
            t0 = time.monotonic()
            dd = f"{BUSYBOX} dd of={disk} bs=1M iflag=fullblock conv=notrunc,fsync"
            res = self.client.run(
                [BUSYBOX, "sh", "-c", f"{fetch} | {dd}"],
                timeout=LEG_TIMEOUT, check=False,
            )  # fmt: skip
            wall = time.monotonic() - t0
        finally:
            srv.kill()
            srv.wait()
        want = f"{size // MiB}+0 records out"
        if res.returncode != 0 or want not in res.stderr:
            raise RuntimeError(f"pipe: rc {res.returncode}, wanted {want!r}: {res.stderr}")
        return wall, want

    def wait_listen(self, srv: subprocess.Popen, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ss = self.lab.server.run(["ss", "-Hltn", f"sport = :{PORT}"], check=False).stdout
            if ss.strip():
                return
            if srv.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"the {PORT} server did not listen (exit {srv.poll()})")

    def leg_ddnc(self, vol: Path, size: int) -> tuple[float, str]:
        srv = ["socat", "-u", f"OPEN:{vol},rdonly", f"TCP-LISTEN:{PORT},reuseaddr"]
        return self.leg_pipe(srv, f"{BUSYBOX} nc {self.lab.server_ip} {PORT} </dev/null", size)

    def leg_curl(self, vol: Path, size: int) -> tuple[float, str]:
        www = self.work / "www"
        www.mkdir(exist_ok=True)
        (www / "image.raw").unlink(missing_ok=True)
        os.link(vol, www / "image.raw")
        srv = [BUSYBOX, "httpd", "-f", "-p", f"{self.lab.server_ip}:{PORT}", "-h", str(www)]
        url = f"http://{self.lab.server_ip}:{PORT}/image.raw"
        try:
            return self.leg_pipe(srv, f"curl -sS --fail {url}", size)
        finally:
            (www / "image.raw").unlink()

    # --- scenarios ----------------------------------------------------------------

    def shape(self, rate: str | None) -> str:
        dev = f"v{self.lab.id}x0"[:15]
        ns = ["ip", "netns", "exec", self.lab.server.name, "tc", "qdisc"]
        if rate is None:
            sh(*ns, "del", "dev", dev, "root", check=False)
            return "veth, unlimited"
        sh(*ns, "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb",
           "latency", "50ms")  # fmt: skip
        shown = sh(*ns, "show", "dev", dev).stdout.strip()
        if "tbf" not in shown:
            raise RuntimeError(f"tbf not applied: {shown}")
        return f"veth, tbf {rate}"

    def scenario(self, label: str, name: str, vol: Path, size: int, link: str) -> None:
        legs = {"provisiond": lambda: self.leg_provisiond(name, size),
                "dd|nc": lambda: self.leg_ddnc(vol, size),
                "curl|dd": lambda: self.leg_curl(vol, size)}  # fmt: skip
        walls = {}
        for leg, run in legs.items():
            try:
                wall, detail = run()
            finally:
                (self.work / "devroot" / "dev" / "vda").unlink(missing_ok=True)
            walls[leg] = wall
            print(f"  {label:24} {link:20} {leg:11} {wall:7.1f} s "
                  f"{size / wall / MiB:7.0f} MiB/s   ({detail})", flush=True)  # fmt: skip
        ratio = walls["dd|nc"] / walls["provisiond"]
        vs_curl = walls["curl|dd"] / walls["provisiond"]
        print(f"  -> provisiond / dd|nc = {ratio:.2f}x, / curl|dd = {vs_curl:.2f}x "
              f"(load: {os.getloadavg()[0]:.2f})", flush=True)  # fmt: skip
        self.rows.append((label, link, walls, ratio, vs_curl))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-gib", type=int, default=8)
    ap.add_argument("--full-gib", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-shaped", action="store_true", help="skip the 1 Gbit/s legs")
    args = ap.parse_args()
    for tool in ("socat", "curl", "tc"):
        if not shutil.which(tool) or not BUSYBOX:
            sys.exit(f"needs {tool} and busybox")
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"agent extra binaries (initrd EXTRA_BINS): {' '.join(initrd_bins())}")
    work = Path(tempfile.mkdtemp(prefix="bench-stream-", dir="/var/tmp"))
    t_start = time.monotonic()
    try:
        with Lab("bstrm") as lab:
            b = Bench(lab, work, args)
            try:
                images = [("sparse", args.big_gib * GiB, 0.25), ("full", args.full_gib * GiB, 1.0)]
                for name, size, fill in [i for i in images if i[1] > 0]:
                    vol, _ = b.import_image(name, size, fill)
                    label = f"{size // GiB} GiB, {int(fill * 100)}% random"
                    for rate in [None] + ([] if args.no_shaped else ["1gbit"]):
                        b.scenario(label, name, vol, size, b.shape(rate))
                    b.shape(None)
                    b.d.cli("image", "rm", name, check=False)
                    vol.unlink(missing_ok=True)
            finally:
                if b.agent:
                    b.agent.stop()
                b.db.dispose()
                b.d.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\ntotal {time.monotonic() - t_start:.0f} s; "
        f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}"
    )
    print(f"{'scenario':24} {'link':20} {'provisiond':>10} {'dd|nc':>8} {'curl|dd':>8} "
          "vs dd|nc  vs curl|dd")  # fmt: skip
    for label, link, w, ratio, vs_curl in b.rows:
        print(f"{label:24} {link:20} {w['provisiond']:9.1f}s {w['dd|nc']:7.1f}s "
              f"{w['curl|dd']:7.1f}s {ratio:7.2f}x {vs_curl:9.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
