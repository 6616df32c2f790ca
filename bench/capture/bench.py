"""Capture benchmark: provisiond capture vs ``dd | nc`` vs ``partclone | nc``, and vs deploy.

Owns the "Imaging: capture (bench/capture)" figures in BENCHMARKS.md.
Harness as bench/stream: the real daemon in a server namespace, the real
agent (busybox sh, PATH = the initrd's binaries, partclone included) in a
client namespace, its "disk" a sparse file (DEVROOT), its partition
``/dev/vda1`` a loop device over the partition's bytes (the kernel's node on
a real machine). The link is tbf-limited to 1 Gbit/s both ways: the client's
eth0 (captures flow that way) and the server's end of the veth (deploys).

Disks (made once, then captured and deployed back in turn):

* ``ext4``: ``--gib`` GiB (default 8), MBR, one ext4 partition from 1 MiB
  to the end, 25 % of the disk in files of random data (mke2fs -d);
* ``ntfs``: the same with NTFS (mkntfs, files written through ntfs-3g);
  skipped with the reason when FUSE mounts do not work here;
* ``random``: ``--random-gib`` GiB (default 2) of random data, no table.

Legs per run, interleaved, ``--runs`` times (default 3):

* ``provisiond``: ``image capture`` (tcp transport, ``--workers``) → job
  succeeded (the image is ready): plan, reads, sha256, zstd trial,
  transfer, server-side verification, one fsync. The whole-image sha256
  follows in the background (provisiond/imagedigest.py): its delay after
  ``ready`` is printed, not counted, and waited for before the next leg;
* ``dd|nc``: client ``dd if=DISK bs=1M | nc SERVER PORT``, server
  ``socat | dd of=FILE conv=fsync`` (the whole disk, no verification);
* ``partclone|nc``: client ``partclone.<fs> -c -s PART -o - | nc``, server as
  dd|nc (used blocks of the partition only, partclone's image format);
  ``random`` has no file system: not run;
* ``deploy``: the image just captured, deployed back onto the agent's disk
  (``appliance start``, local mode, http, read-back verified).

    .venv/bin/python bench/capture/bench.py [--gib 8 | --size 8G] [--random-gib 2 |
        --random-size 8G] [--runs 3] [--workers 3] [--only ext4,ntfs,random] [--no-shaped]
        [--legs provisiond,dd|nc,partclone|nc,deploy]

Prints every leg, then per disk the median and range of each leg and the
ratios dd|nc / provisiond (goal >= 3 on the 25 % disks, >= 1.0 on random),
partclone|nc / provisiond and provisiond / deploy (goal <= 1.2).
"""

from __future__ import annotations

import argparse
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

from sqlalchemy import select  # noqa: E402

from provisiond.db import Database  # noqa: E402
from provisiond.model import Image, Job  # noqa: E402
from tests.agentlab import BUSYBOX  # noqa: E402
from tests.daemonlab import LabDaemon, lab_config  # noqa: E402
from tests.hostagent import HostAgent  # noqa: E402
from tests.netlab import Lab, sh  # noqa: E402

MAC = "52:54:00:5b:00:78"
MiB, GiB = 2**20, 2**30
PART_START = MiB
LEG_TIMEOUT = 900.0
PORT = 9001


class KeepDiskAgent(HostAgent):
    """The harness agent, but a disk that already exists is kept (it is the capture's source)."""

    def blank_disk(self, size: int) -> None:
        if not self.disk.exists() or self.disk.stat().st_size != size:
            super().blank_disk(size)


def cpu_s(pid: int) -> float:
    """CPU seconds of a process and its reaped children (utime+stime+cutime+cstime)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")


def random_files(root: Path, total: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    n, left = 0, total
    while left > 0:
        size = min(256 * MiB, left)
        with open(root / f"data{n:03d}.bin", "wb") as fh:
            for _ in range(size // (16 * MiB)):
                fh.write(os.urandom(16 * MiB))
            fh.write(os.urandom(size % (16 * MiB)))
        n, left = n + 1, left - size


def losetup(path: Path, offset: int, size: int) -> str:
    return sh("losetup", "-f", "--show", "-o", str(offset), "--sizelimit", str(size),
              str(path)).stdout.strip()  # fmt: skip


def make_disk(kind: str, disk: Path, size: int, work: Path) -> tuple[str | None, str]:
    """Write the disk; returns (partition loop device or None, partclone suffix or "")."""
    disk.unlink(missing_ok=True)
    disk.parent.mkdir(parents=True, exist_ok=True)
    if kind == "random":
        with open(disk, "wb") as fh:
            for _ in range(size // (16 * MiB)):
                fh.write(os.urandom(16 * MiB))
        return None, ""
    with open(disk, "wb") as fh:
        fh.truncate(size)
    sh("sfdisk", "-q", str(disk), input="1MiB,,%s\n" % ("83" if kind == "ext4" else "7"))
    part = size - PART_START
    files = work / "files"
    if kind == "ext4":
        random_files(files, size // 4)
        sh("mke2fs", "-q", "-F", "-t", "ext4", "-d", str(files), "-E",
           f"offset={PART_START}", str(disk), f"{part // 1024}k")  # fmt: skip
        shutil.rmtree(files)
        return losetup(disk, PART_START, part), "extfs"
    loop = losetup(disk, PART_START, part)
    sh("mkntfs", "-Q", "-F", "-q", "-p", str(PART_START // 512), "-H", "255", "-S", "63", loop)
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    try:
        sh("ntfs-3g", loop, str(mnt))
    except subprocess.CalledProcessError as exc:
        sh("losetup", "-d", loop, check=False)
        raise RuntimeError(f"ntfs-3g cannot mount here (FUSE?): {exc.stderr}")
    try:
        random_files(mnt, size // 4)
    finally:
        sh("umount", str(mnt))
    return loop, "ntfs"


class Bench:
    def __init__(self, lab: Lab, work: Path, args) -> None:
        self.lab, self.work, self.args = lab, work, args
        extra = f'[[storage]]\nname = "local"\nbackend = "file"\npath = "{work / "images"}"\n'
        extra += "[local]\nconfirm_boot = false\n"  # host agents boot no OS: written = done
        self.d = LabDaemon(lab, work, lab_config(lab, work / "state", extra))
        self.d.cli("init")
        self.d.add_fake_kernel()
        self.d.start()
        self.client = lab.add_client(mac=MAC, address=f"{lab.net}.50")
        self.db = Database(f"sqlite:///{next((work / 'state').glob('*.db'))}")
        self.agent: HostAgent | None = None
        self.disk = work / "devroot" / "dev" / "vda"
        self.n = 0

    def boot_agent(self, size: int) -> None:
        if self.agent is not None:
            self.agent.stop()
            shutil.rmtree(self.work / "agent", ignore_errors=True)
        self.agent = KeepDiskAgent(self.d, self.client, self.work, MAC, size)
        deadline = time.monotonic() + 60
        while self.d.cli_json("resource", "show", MAC)["state"] != "idle":
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent not idle: {self.agent.log()[-2000:]}")
            time.sleep(0.5)

    def wait_job(self, job_id: int) -> tuple[str, str]:
        deadline = time.monotonic() + LEG_TIMEOUT
        while time.monotonic() < deadline:
            with self.db.reader() as s:
                job = s.get(Job, job_id)
                if job.state in ("succeeded", "failed"):
                    return job.state, job.log or job.outcome or ""
            time.sleep(0.1)
        raise RuntimeError(f"job {job_id} did not end within {LEG_TIMEOUT:.0f} s")

    # --- legs -------------------------------------------------------------------

    def cpu(self) -> tuple[float, float]:
        """(agent, daemon) CPU seconds so far: the agent's main shell with what it reaped."""
        return cpu_s(self.agent.proc.pid), cpu_s(self.d.proc.pid)

    def leg_capture(self, name: str) -> tuple[float, str]:
        c0 = self.cpu()
        t0 = time.monotonic()
        out = self.d.cli("image", "capture", MAC, "--disk", "/dev/vda", "--name", name,
                         "--workers", str(self.args.workers), "--no-wait").stdout  # fmt: skip
        state, log = self.wait_job(int(re.search(r"job (\d+)", out).group(1)))
        wall = time.monotonic() - t0
        c1 = self.cpu()
        if state != "succeeded":
            raise RuntimeError(f"capture {state}: {log[-2000:]}")
        # the image is ready; its whole sha256 follows in the background (imagedigest). Not part
        # of the capture's time, but waited for here: the deploy leg must not compete with it
        t1 = time.monotonic()
        while not self.image_sha256(name):
            if time.monotonic() - t1 > LEG_TIMEOUT:
                raise RuntimeError(f"image {name}: no sha256 within {LEG_TIMEOUT:.0f} s")
            time.sleep(0.1)
        c2, later = self.cpu(), time.monotonic() - t1
        plan = re.search(r"plan: (\d+) of (\d+) chunks \((\d+) MiB\)", log)
        planned = re.search(r"planned in ([\d.]+) s", log)
        sent = re.search(r"received (\d+) chunks \((\d+) bytes\)", log)
        agent = re.search(r"sent \d+ in ([\d.]+) s", log)
        rx = re.search(r"received .* in ([\d.]+) s", log)
        a_s, r_s = agent.group(1) if agent else "?", rx.group(1) if rx else "?"
        return wall, (f"planned {plan.group(1)}/{plan.group(2)} chunks, "
                      f"{int(sent.group(2)) / MiB:.0f} MiB in {sent.group(1)} chunks; "
                      f"agent {a_s} s (plan {planned.group(1) if planned else '?'} s), "
                      f"server {r_s} s; CPU agent {c1[0] - c0[0]:.1f} s, "
                      f"daemon {c1[1] - c0[1]:.1f} s; whole sha256 in the background "
                      f"{later:.1f} s after ready, daemon CPU {c2[1] - c1[1]:.1f} s)")  # fmt: skip

    def image_sha256(self, name: str) -> str | None:
        with self.db.reader() as s:
            img = s.scalars(select(Image).where(Image.name == name)).first()
            return img.sha256 if img else None

    def leg_deploy(self, name: str, size: int) -> tuple[float, str]:
        self.d.cli("appliance", "create", "--resource", MAC, "--image", name, "--mode", "local",
                   "--name", "back", "--disk", "/dev/vda")  # fmt: skip
        c0 = self.cpu()
        t0 = time.monotonic()
        out = self.d.cli("appliance", "start", "back").stdout
        state, log = self.wait_job(int(re.search(r"job (\d+)", out).group(1)))
        wall = time.monotonic() - t0
        time.sleep(1.0)  # the agent posts its result, then reaps the command's processes
        c1 = self.cpu()
        self.d.cli("appliance", "stop", "back", "--wait")
        self.d.cli("appliance", "rm", "back", check=False)
        self.d.cli("resource", "release", MAC)
        if state != "succeeded":
            raise RuntimeError(f"deploy {state}: {log[-2000:]}")
        self.boot_agent(size)  # it "rebooted" into its disk
        return wall, (f"http, read back and verified; CPU agent {c1[0] - c0[0]:.1f} s, "
                      f"daemon {c1[1] - c0[1]:.1f} s")  # fmt: skip

    def leg_pipe(self, source: str, size_hint: str) -> tuple[float, str]:
        out = self.work / "pipe.out"
        out.unlink(missing_ok=True)
        srv = self.lab.server.popen(
            ["sh", "-c", f"socat -u TCP-LISTEN:{PORT},reuseaddr STDOUT | "
                         f"dd of={out} bs=1M iflag=fullblock conv=fsync 2>/dev/null"],
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 15
            while not self.lab.server.run(["ss", "-Hltn", f"sport = :{PORT}"]).stdout.strip():
                if time.monotonic() > deadline:
                    raise RuntimeError("socat did not listen")
                time.sleep(0.05)
            t0 = time.monotonic()
            res = self.client.run(
                [BUSYBOX, "sh", "-c", f"{source} | {BUSYBOX} nc {self.lab.server_ip} {PORT}"],
                timeout=LEG_TIMEOUT, check=False,
            )  # fmt: skip
            srv.wait(LEG_TIMEOUT)
            wall = time.monotonic() - t0
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
        got = out.stat().st_size if out.exists() else 0
        out.unlink(missing_ok=True)
        if res.returncode != 0 or got == 0:
            raise RuntimeError(f"pipe rc {res.returncode}, {got} bytes: {res.stderr[-500:]}")
        return wall, f"{got / MiB:.0f} MiB {size_hint}"

    def leg_dd(self) -> tuple[float, str]:
        return self.leg_pipe(f"{BUSYBOX} dd if={self.disk} bs=1M 2>/dev/null", "raw")

    def leg_partclone(self, loop: str, tool: str) -> tuple[float, str]:
        log = self.work / "partclone.log"
        cmd = f"partclone.{tool} -c -q -s {loop} -o - -L {log} 2>/dev/null"
        return self.leg_pipe(cmd, "partclone image")

    # --- shaping ------------------------------------------------------------------

    def shape(self, rate: str | None) -> str:
        """Both directions: the client's eth0 (captures) and the server's end (deploys)."""
        ends = [(self.client.name, "eth0"), (self.lab.server.name, f"v{self.lab.id}x0"[:15])]
        for netns, dev in ends:
            ns = ["ip", "netns", "exec", netns, "tc", "qdisc"]
            if rate is None:
                sh(*ns, "del", "dev", dev, "root", check=False)
                continue
            sh(*ns, "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb",
               "latency", "50ms")  # fmt: skip
            if "tbf" not in sh(*ns, "show", "dev", dev).stdout:
                raise RuntimeError(f"tbf not applied on {dev}")
        if rate is None:
            return "veth, unlimited"
        return f"tbf {rate} both ways (client eth0: captures; server end: deploys)"

    def disk_scenario(self, kind: str, size: int) -> dict[str, list[float]]:
        t0 = time.monotonic()
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
        loop, tool = make_disk(kind, self.disk, size, self.work)
        link = self.disk.parent / "vda1"
        link.unlink(missing_ok=True)
        if loop:
            link.symlink_to(loop)
        print(f"disk {kind}: {size / GiB:.0f} GiB made in {time.monotonic() - t0:.0f} s"
              f"{f', partition {loop} ({tool})' if loop else ''}", flush=True)  # fmt: skip
        walls: dict[str, list[float]] = {}
        try:
            self.boot_agent(size)
            for run in range(self.args.runs):
                self.n += 1
                name = f"cap{self.n}"
                legs = [("provisiond", lambda name=name: self.leg_capture(name))]
                if "dd|nc" in self.args.legs:
                    legs.append(("dd|nc", self.leg_dd))
                if loop and "partclone|nc" in self.args.legs:
                    legs.append(("partclone|nc", lambda: self.leg_partclone(loop, tool)))
                legs.append(("deploy", lambda name=name: self.leg_deploy(name, size)))
                if run % 2:  # interleave: the order of the first three alternates
                    legs[:-1] = legs[:-1][::-1]
                for leg, fn in legs:
                    wall, detail = fn()
                    walls.setdefault(leg, []).append(wall)
                    rate = size / wall / MiB
                    print(f"  {kind:7} run {run + 1} {leg:13} {wall:7.1f} s "
                          f"{rate:7.0f} MiB/s of disk  ({detail})", flush=True)  # fmt: skip
                self.d.cli("image", "rm", name, check=False)
        finally:
            link.unlink(missing_ok=True)
            if loop:
                sh("losetup", "-d", loop, check=False)
        return walls


def parse_size(text: str) -> int:
    """``8G``, ``512M`` or bytes; a whole number of MiB, at least 64 MiB."""
    m = re.fullmatch(r"(\d+)([GgMm]?)(i?B)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: use e.g. 8G or 512M")
    n = int(m.group(1)) * {"g": GiB, "m": MiB, "": 1}[m.group(2).lower()]
    if n < 64 * MiB or n % MiB:
        raise argparse.ArgumentTypeError(f"size {text!r}: a whole number of MiB, >= 64M")
    return n


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.1f} s [{min(xs):.1f}-{max(xs):.1f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=8)
    ap.add_argument("--random-gib", type=int, default=2)
    ap.add_argument("--size", type=parse_size, help="ext4/ntfs disk size, e.g. 8G (over --gib)")
    ap.add_argument("--random-size", type=parse_size, help="random disk size (over --random-gib)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--only", default="ext4,ntfs,random")
    ap.add_argument("--no-shaped", action="store_true", help="no 1 Gbit/s limit")
    ap.add_argument(
        "--legs",
        default="provisiond,dd|nc,partclone|nc,deploy",
        help="legs to run (provisiond and deploy always; the anchors are optional)",
    )
    args = ap.parse_args()
    for tool in ("socat", "losetup", "sfdisk", "mke2fs", "partclone.extfs", "tc"):
        if not shutil.which(tool) or not BUSYBOX:
            sys.exit(f"needs {tool} and busybox")
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {up}; runs {args.runs}, agent workers {args.workers}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-capture-", dir="/var/tmp"))
    results: dict[str, dict[str, list[float]]] = {}
    t_start = time.monotonic()
    try:
        with Lab("bcap") as lab:
            b = Bench(lab, work, args)
            print(f"link: {b.shape(None if args.no_shaped else '1gbit')}", flush=True)
            try:
                for kind in args.only.split(","):
                    if kind == "random":
                        size = args.random_size or args.random_gib * GiB
                    else:
                        size = args.size or args.gib * GiB
                    try:
                        results[kind] = b.disk_scenario(kind, size)
                    except RuntimeError as exc:
                        print(f"disk {kind}: not run: {exc}", flush=True)
            finally:
                if b.agent:
                    b.agent.stop()
                b.db.dispose()
                b.d.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\ntotal {time.monotonic() - t_start:.0f} s; {up}")
    print("median [range] of the runs; ratios of medians")
    for kind, w in results.items():
        p = statistics.median(w["provisiond"])
        line = [f"{kind:7} provisiond {med(w['provisiond'])}"]
        if "dd|nc" in w:
            line.append(f"dd|nc {med(w['dd|nc'])}")
        if "partclone|nc" in w:
            line.append(f"partclone|nc {med(w['partclone|nc'])}")
        line.append(f"deploy {med(w['deploy'])}")
        print("  ".join(line))
        ratios = "  ->"
        if "dd|nc" in w:
            ratios += f" dd|nc / provisiond = {statistics.median(w['dd|nc']) / p:.2f}x,"
        if "partclone|nc" in w:
            ratios += (
                f" partclone|nc / provisiond = {statistics.median(w['partclone|nc']) / p:.2f}x,"
            )
        ratios += f" capture / deploy = {p / statistics.median(w['deploy']):.2f}"
        print(ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
