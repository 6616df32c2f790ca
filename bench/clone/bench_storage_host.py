"""Storage-host clone benchmark: LVM classic and thin snapshots vs a full copy, on a real kernel.

Run as root: ``.venv/bin/python bench/clone/bench_storage_host.py [--runs 5]``.
Boots the test bed's storage VM (vm-testbed/storagevm.py; Debian 12 kernel
with dm-snapshot and dm-thin, TCG) with one sparse 200 GiB data disk, makes
a VG with a thin pool, and for 1 GiB and 64 GiB masters times, inside the VM
(the host's ``date`` around the command, so SSH round trips are excluded):

- classic snapshot ``lvcreate -s -L <origin size>`` (LvmBackend.clone),
- thin snapshot ``lvcreate -s -kn`` (LvmBackend.clone with a pool),
- the anchor, a full copy (``dd bs=4M`` of the 1 GiB master, every byte;
  64 GiB extrapolated linearly and printed as such),
- first-write penalty: a sequential 256 MiB ``dd oflag=direct`` into a
  classic and into a thin clone, against the same write into the master
  (written on the storage VM itself, not through iSCSI; bench_first_write.py
  times it inside a SAN-booted guest over its own initiator).

Runs of the kinds are interleaved; median and range of ``--runs`` are
printed, and the ratio full copy / snapshot. Bounded (about 5 min on a
quiet machine); the VM and the test bed are always removed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "vm-testbed")]

import storagevm  # noqa: E402
from testbed import Testbed  # noqa: E402

from provisiond import rootfs  # noqa: E402
from storage.backends import LvmBackend  # noqa: E402
from storage.ssh import SshRunner, SshTarget  # noqa: E402

GiB = 1 << 30
VG, POOL = "bench", "pool0"
SUBNET, HOST = "10.76.0", "10.76.0.50"


def timed(ssh: SshRunner, command: str) -> float:
    """Seconds ``command`` took on the host (measured there)."""
    out = ssh.run(["sh", "-c", f"a=$(date +%s.%N); {command} >/dev/null 2>&1; "
                   "b=$(date +%s.%N); echo $a $b"], timeout=900).stdout.split()  # fmt: skip
    return float(out[1]) - float(out[0])


def show(label: str, values: list[float], unit: str = "ms", scale: float = 1000) -> str:
    med = statistics.median(values) * scale
    lo, hi = min(values) * scale, max(values) * scale
    line = f"{label:<44} median {med:9.1f} {unit}  range {lo:.1f}-{hi:.1f} (n={len(values)})"
    print(line, flush=True)
    return line


def bench(ssh: SshRunner, runs: int) -> None:
    classic = LvmBackend(VG, runner=ssh)
    thin = LvmBackend(VG, thin_pool=POOL, runner=ssh)
    thin.ensure_vg(("/dev/vdb",), 8 * GiB)
    for size in (1, 64):
        classic.create(f"c{size}", size * GiB)
        thin.create(f"t{size}", size * GiB)
    ssh.run(["dd", "if=/dev/urandom", f"of=/dev/{VG}/c1", "bs=4M", "count=256",
             "oflag=direct", "status=none"], timeout=900)  # fmt: skip
    ssh.run(["dd", f"if=/dev/{VG}/c1", f"of=/dev/{VG}/t1", "bs=4M", "status=none"], timeout=900)
    res: dict[str, list[float]] = {}
    for run in range(runs):
        for size in (1, 64):
            for kind, origin, extra in (("classic", f"c{size}", f"-L {size}g"),
                                        ("thin", f"t{size}", "-kn")):  # fmt: skip
                snap = f"s{kind[0]}{size}"
                t = timed(ssh, f"lvcreate -y -s {extra} -n {snap} {VG}/{origin}")
                res.setdefault(f"{kind} snapshot, {size} GiB master", []).append(t)
                if size == 1:  # first-write penalty on the fresh clone
                    w = timed(ssh, f"dd if=/dev/zero of=/dev/{VG}/{snap} bs=1M count=256 "
                                   "oflag=direct")  # fmt: skip
                    res.setdefault(f"256 MiB write into a {kind} clone", []).append(w)
                ssh.run(["lvremove", "-y", f"{VG}/{snap}"])
        w = timed(ssh, f"dd if=/dev/zero of=/dev/{VG}/c64 bs=1M count=256 oflag=direct")
        res.setdefault("256 MiB write into a plain LV (no snapshot)", []).append(w)
        classic.create("copy1", GiB)
        t = timed(ssh, f"dd if=/dev/{VG}/c1 of=/dev/{VG}/copy1 bs=4M oflag=direct")
        res.setdefault("full copy, 1 GiB (dd, every byte)", []).append(t)
        classic.delete("copy1")
        print(f"run {run + 1}/{runs} done", flush=True)
    print()
    for label, values in res.items():
        show(label, values)
    copy = statistics.median(res["full copy, 1 GiB (dd, every byte)"])
    print(f"{'full copy, 64 GiB (extrapolated x64)':<44} median {copy * 64 * 1000:9.1f} ms")
    for kind in ("classic", "thin"):
        for size in (1, 64):
            snap = statistics.median(res[f"{kind} snapshot, {size} GiB master"])
            print(f"ratio full copy / {kind} snapshot at {size} GiB: {copy * size / snap:.0f}x")
    base = statistics.median(res["256 MiB write into a plain LV (no snapshot)"])
    for kind in ("classic", "thin"):
        w = statistics.median(res[f"256 MiB write into a {kind} clone"])
        print(f"first-write penalty {kind}: {w / base:.2f}x a plain LV's write")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rootfs.build("debian-12-storage")
    files = storagevm.prepare(rootfs.archive_path("debian-12-storage"))
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        work = Path(tmp)
        for k in ("hostkey", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / k)],
                           check=True)  # fmt: skip
        with Testbed(work / "tb", ns_name="benchstor", subnet=SUBNET) as tb:
            t0 = time.monotonic()
            vm = storagevm.boot(tb, files, "storage", "52:54:00:76:00:50", f"{HOST}/24",
                                work / "hostkey", work / "client.pub",
                                data_disks=("200G",))  # fmt: skip
            vm.wait_for(storagevm.READY, timeout=300)
            print(f"storage VM up in {time.monotonic() - t0:.0f} s; "
                  f"kernel {vm.console_text().split('kernel ')[-1].split(')')[0]}")  # fmt: skip
            key = (work / "hostkey.pub").read_text().strip()
            ssh = SshRunner(SshTarget(HOST, work / "client", host_key=key),
                            connect=storagevm.ns_connect(tb.ns))  # fmt: skip
            ssh.run(["true"])
            try:
                bench(ssh, args.runs)
            finally:
                ssh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
