"""initrd lib/usedblocks.sh: which chunks a capture reads, under busybox sh.

Table tests of the plan (capture_plan) with the partition table, the device
checks and partclone's domain map replaced by shell functions (no root, no
loop devices), plus the real part_dev / fs_tool / partitions on small files:
the file-system magic of a real mke2fs and mkfs.fat, and sfdisk's dump of a
real MBR table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "initrd/rootfs/usr/lib/provisiond/lib"
BUSYBOX = shutil.which("busybox")
MiB = 2**20
C = 4 * MiB

pytestmark = pytest.mark.skipif(
    BUSYBOX is None, reason="busybox not on PATH (apt-get install busybox-static)"
)


def sh(script: str, tmp: Path) -> subprocess.CompletedProcess:
    prelude = f". {LIB}/common.sh; . {LIB}/stream.sh; . {LIB}/usedblocks.sh; "
    env = {"PATH": os.environ["PATH"], "STREAM_TMP": str(tmp), "PROVISIOND_RUN": str(tmp)}
    return subprocess.run([BUSYBOX, "sh", "-c", prelude + script], env=env, capture_output=True,
                          text=True, timeout=30)  # fmt: skip


def plan(tmp: Path, size: int, parts: list[tuple[int, int, int]], used: dict[int, list]) -> tuple:
    """parts: (n, start, size); used[n]: [(start, end)], or None when partclone fails."""
    (tmp / "table").write_text("".join(f"{n} {s} {z}\n" for n, s, z in parts))
    for n, _s, _z in parts:
        (tmp / f"disk{n}").write_text("")  # the partition device exists
        if used.get(n) is not None:
            (tmp / f"used.{n}").write_text("".join(f"U {a} {b}\n" for a, b in used[n]))
    bindir = tmp / "bin"
    bindir.mkdir()
    (bindir / "partclone.extfs").write_text("#!/bin/sh\nexit 1\n")
    (bindir / "partclone.extfs").chmod(0o755)
    script = (
        f"PATH={bindir}:$PATH; partitions() {{ cat {tmp}/table; }}; fs_tool() {{ echo extfs; }}; "
        f"disk_size() {{ awk -v n=\"${{1##*disk}}\" '$1 == n {{ print $3 }}' {tmp}/table; }}; "
        f"used_ranges() {{ cat {tmp}/used.${{1##*disk}} 2>/dev/null; }}; "
        f"capture_plan {tmp}/disk {size} {C} {tmp}/plan"
    )
    res = sh(script, tmp)
    assert res.returncode == 0, res.stderr
    return [int(x) for x in (tmp / "plan").read_text().split()], res.stdout


PLAN_CASES = [
    # no table: every chunk
    ("no table", 5 * C, [], {}, [0, 1, 2, 3, 4]),
    # one partition from 1 MiB, used range in chunk 2 only: chunk 0 (table) + 2
    ("one partition", 8 * C, [(1, MiB, 8 * C - MiB)], {1: [(2 * C + 8192, 2 * C + 65536)]}, [0, 2]),
    # a used range that ends exactly at a chunk boundary is widened by 4 KiB
    ("boundary", 8 * C, [(1, MiB, 8 * C - MiB)], {1: [(3 * C, 4 * C)]}, [0, 2, 3, 4]),
    # partclone failed on partition 1: it is read whole
    ("partclone failed", 6 * C, [(1, MiB, 6 * C - MiB)], {1: None}, [0, 1, 2, 3, 4, 5]),
    # two partitions, a gap between them is read whole; the tail after the last too
    (
        "gap and tail",
        16 * C,
        [(1, C, 4 * C), (2, 8 * C, 4 * C)],
        {1: [(C + 4096, C + 8192)], 2: [(9 * C + 4096, 9 * C + 8192)]},
        [0, 1, 5, 6, 7, 9, 12, 13, 14, 15],
    ),
]


@pytest.mark.parametrize(("name", "size", "parts", "used", "want"), PLAN_CASES,
                         ids=[c[0] for c in PLAN_CASES])  # fmt: skip
def test_plan(tmp_path, name, size, parts, used, want):
    got, out = plan(tmp_path, size, parts, used)
    assert got == want, out


def test_a_partition_device_of_the_wrong_size_is_read_whole(tmp_path):
    (tmp_path / "table").write_text("")
    script = (
        "partitions() { echo 1 1048576 8388608; }; disk_size() { echo 4096; }; "
        f"capture_plan {tmp_path}/disk {4 * C} {C} {tmp_path}/plan"
    )
    res = sh(script, tmp_path)
    assert "no device" in res.stdout and "read whole" in res.stdout, res.stdout
    assert (tmp_path / "plan").read_text().split() == ["0", "1", "2", "3"]


@pytest.mark.parametrize(("disk", "n", "dev"), [("/dev/vda", 1, "/dev/vda1"),
                                                ("/dev/nvme0n1", 2, "/dev/nvme0n1p2"),
                                                ("/dev/mmcblk0", 1, "/dev/mmcblk0p1"),
                                                ("/dev/sdb", 3, "/dev/sdb3")])  # fmt: skip
def test_part_dev(tmp_path, disk, n, dev):
    assert sh(f"part_dev {disk} {n}", tmp_path).stdout.strip() == dev


@pytest.mark.parametrize(("mkfs", "want"), [(["mke2fs", "-q", "-F", "-t", "ext4"], "extfs"),
                                            (["mkfs.fat", "-F", "32"], "fat"),
                                            (None, "")])  # fmt: skip
def test_fs_tool_reads_real_magic(tmp_path, mkfs, want):
    img = tmp_path / "fs.img"
    with open(img, "wb") as fh:
        fh.truncate(64 * MiB)
    if mkfs:
        if not shutil.which(mkfs[0]):
            pytest.skip(reason=f"needs {mkfs[0]}")
        subprocess.run([*mkfs, str(img)], check=True, capture_output=True)
    assert sh(f"fs_tool {img}", tmp_path).stdout.strip() == want


def test_partitions_from_a_real_mbr(tmp_path):
    if not shutil.which("sfdisk"):
        pytest.skip(reason="needs sfdisk (fdisk)")
    img = tmp_path / "d.img"
    with open(img, "wb") as fh:
        fh.truncate(64 * MiB)
    subprocess.run(["sfdisk", "-q", str(img)], input="1MiB,16MiB,83\n,,7\n", text=True,
                   check=True, capture_output=True)  # fmt: skip
    out = sh(f"partitions {img}", tmp_path).stdout.split("\n")
    assert out[:2] == [f"1 {MiB} {16 * MiB}", f"2 {17 * MiB} {47 * MiB}"]
