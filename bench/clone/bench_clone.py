"""Clone-on-deploy benchmark: reflink (FICLONE) vs full copy for 1, 16, 64 GiB images.

Run as root: ``.venv/bin/python bench/clone/bench_clone.py``. Builds a btrfs
file system on a sparse loop file, creates sparse images of each logical size
with 64 MiB of random data at four offsets, and times:
  - reflink clone (ReflinkBackend.clone, median of 5),
  - sparse-aware full copy (FileBackend.clone: data extents only, fsync'd),
  - dense copy (every byte, as ``cp --sparse=never`` would): measured on the
    1 GiB image, extrapolated for larger sizes (writing 64 GiB would take
    minutes and the disk space; printed as "extrapolated").
LVM snapshots are timed only where LvmBackend.check() passes; otherwise the
exact reason is printed. Bounded: < 5 min. Mount and loop device are always
removed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from storage.backends import BackendUnavailable, FileBackend, LvmBackend, ReflinkBackend

MiB, GiB = 1 << 20, 1 << 30
SIZES = (1, 16, 64)
DATA_CHUNK = 16 * MiB  # x4 per image
GOALS = "goal: reflink <= 1 s at every size, 64 GiB / 1 GiB ratio <= 1.2"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


def make_image(path: str, size: int) -> int:
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(4):
            f.seek(size * i // 4)
            f.write(os.urandom(DATA_CHUNK))
        f.flush()
        os.fsync(f.fileno())
    return 4 * DATA_CHUNK


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def dense_copy(src: str, dst: str, limit: float = 20.0) -> tuple[int, float]:
    """Copy every byte (no hole skipping) until done or ``limit`` s; returns (bytes, s)."""
    done, t = 0, time.perf_counter()
    with open(src, "rb") as fs, open(dst, "wb") as fd:
        while (buf := fs.read(8 * MiB)) and time.perf_counter() - t < limit:
            fd.write(buf)
            done += len(buf)
        fd.flush()
        os.fsync(fd.fileno())
    return done, time.perf_counter() - t


def bench(mnt: Path) -> list[dict]:
    rb, fb = ReflinkBackend(mnt), FileBackend(mnt)
    rb.check()
    rows = []
    for gib in SIZES:
        name = f"golden{gib}"
        data = make_image(rb.path(name) + ".new", gib * GiB)
        os.replace(rb.path(name) + ".new", rb.path(name))
        sh("sync")
        ref = []
        for i in range(5):
            ref.append(timed(lambda n=name, new=f"r{gib}-{i}": rb.clone(n, new)))
        for i in range(5):
            rb.delete(f"r{gib}-{i}")
        full = timed(lambda n=name, new=f"f{gib}": fb.clone(n, new))
        fb.delete(f"f{gib}")
        row = {"gib": gib, "data_mib": data // MiB, "reflink_s": statistics.median(ref),
               "reflink_max_s": max(ref), "sparse_copy_s": full}  # fmt: skip
        if gib == 1:
            n, s = dense_copy(rb.path(name), str(mnt / "dense.tmp"))
            os.unlink(mnt / "dense.tmp")
            row["dense_mbps"] = n / MiB / s
        rows.append(row)
        rb.delete(name)
    return rows


def report(rows: list[dict]) -> None:
    mbps = rows[0]["dense_mbps"]
    print(f"{'size':>6} {'data':>8} {'reflink med':>12} {'reflink max':>12} "
          f"{'sparse copy':>12} {'dense copy':>22}")  # fmt: skip
    for r in rows:
        dense = r["gib"] * 1024 / mbps
        tag = "measured" if r["gib"] == 1 else "extrapolated"
        print(f"{r['gib']:>4}Gi {r['data_mib']:>5}MiB {r['reflink_s'] * 1e3:>10.2f}ms "
              f"{r['reflink_max_s'] * 1e3:>10.2f}ms {r['sparse_copy_s']:>11.3f}s "
              f"{dense:>9.1f}s ({tag})")  # fmt: skip
    print(f"dense copy throughput (1 GiB, fsync'd): {mbps:.0f} MiB/s")
    ratio = rows[-1]["reflink_s"] / rows[0]["reflink_s"]
    worst = max(r["reflink_max_s"] for r in rows)
    print(
        f"reflink 64 GiB / 1 GiB median ratio: {ratio:.2f}; "
        f"slowest reflink clone {worst * 1e3:.1f} ms"
    )
    big = rows[-1]
    print(
        f"64 GiB: dense copy / reflink = {64 * 1024 / mbps / big['reflink_s']:.0f}x; "
        f"sparse copy / reflink = {big['sparse_copy_s'] / big['reflink_s']:.0f}x"
    )
    print(GOALS, "->", "MET" if worst <= 1.0 and ratio <= 1.2 else "NOT MET")


def lvm_note() -> None:
    try:
        LvmBackend(os.environ.get("PROVISIOND_BENCH_VG", "provisiond-bench")).check()
        print("lvm: available, but this bench does not create volume groups; not timed")
    except BackendUnavailable as e:
        print(f"lvm snapshot: skipped: {e}")


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (losetup, mount)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-clone-") as tmp:
        img, mnt = Path(tmp) / "btrfs.img", Path(tmp) / "mnt"
        mnt.mkdir()
        with open(img, "wb") as f:
            f.truncate(8 * GiB)
        sh("mkfs.btrfs", "-q", "-f", str(img))
        loop = sh("losetup", "--find", "--show", str(img)).strip()
        try:
            sh("mount", loop, str(mnt))
            try:
                print(f"btrfs on {loop} ({sh('uname', '-r').strip()}), 8 GiB sparse loop file")
                report(bench(mnt))
            finally:
                subprocess.run(["umount", str(mnt)], check=False)
        finally:
            subprocess.run(["losetup", "-d", loop], check=False)
    lvm_note()
    return 0


if __name__ == "__main__":
    sys.exit(main())
