"""Capture over the tcp transport reads only used blocks; the deployed file system is fsck-clean.

The real daemon and the real agent (busybox sh + the initrd's partclone,
sfdisk, openssl, zstd) from tests/streamlab.py, as in test_stream.py. The agent's disk is a regular
file with an MBR table and one ext4 partition (mke2fs -d, -E offset); its
partition device ``/dev/vda1`` is a loop device over that region (the
kernel's partition node in a real machine). The free blocks of the file
system hold random garbage, so a capture that read them would carry them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.streamlab import MAC, MiB, image_sha256, job_of
from tests.streamlab import lab as lab  # a fixture

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]
DISK = 96 * MiB
PART_START = MiB


def _have(*tools: str) -> str | None:
    missing = [t for t in tools if not shutil.which(t)]
    return f"needs {', '.join(missing)}" if missing else None


def make_ext4_disk(path: Path, files: Path) -> int:
    """Garbage-filled disk: MBR + one ext4 partition holding ``files``. Returns the part size."""
    with open(path, "wb") as fh:
        for _ in range(DISK // (8 * MiB)):
            fh.write(os.urandom(8 * MiB))
    subprocess.run(["sfdisk", "-q", str(path)], input="1MiB,,83\n", text=True, check=True)
    part = DISK - PART_START
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(files), "-E",
                    f"offset={PART_START},nodiscard", str(path), f"{part // 1024}k"],
                   check=True)  # fmt: skip
    return part


def loop_over(path: Path, offset: int, size: int) -> str:
    return subprocess.run(["losetup", "-f", "--show", "-o", str(offset), "--sizelimit",
                           str(size), str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def test_ext4_capture_reads_used_blocks_only_and_deploys_fsck_clean(lab, tmp_path):
    why = _have("sfdisk", "mke2fs", "e2fsck", "debugfs", "losetup", "partclone.extfs")
    if why:
        pytest.skip(reason=why)
    _lab, d, agent = lab
    a = agent(DISK)
    files = tmp_path / "files"
    files.mkdir()
    payload = os.urandom(20 * MiB)
    (files / "payload.bin").write_bytes(payload)
    (files / "note.txt").write_text("provisiond capture\n" * 1000)
    part = make_ext4_disk(a.disk, files)
    source = a.disk.read_bytes()
    loop = loop_over(a.disk, PART_START, part)
    try:
        (a.disk.parent / "vda1").symlink_to(loop)
        out = d.cli("image", "capture", MAC, "--disk", "/dev/vda", "--name", "used",
                    "--workers", "2").stdout  # fmt: skip
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
        (a.disk.parent / "vda1").unlink(missing_ok=True)
    job = d.cli_json("job", "show", str(job_of(out)))
    log = "\n".join(job.get("log") or []) if isinstance(job.get("log"), list) else str(job)
    assert re.search(r"partition 1 \(95 MiB at 1048576\): extfs: \d+ MiB in use", log), log
    planned = int(re.search(r"plan: (\d+) of 24 chunks", log).group(1))
    assert 6 <= planned < 15, log  # 20 MiB payload + metadata, not 24 chunks of garbage
    vol = next((tmp_path / "images").glob("image-used*")).read_bytes()
    assert vol[:512] == source[:512]  # the partition table travelled
    assert vol != source  # the free blocks' garbage did not
    assert image_sha256(d, "used") == hashlib.sha256(vol).hexdigest()

    # the image, deployed onto a blank disk, is a clean file system with the same files
    a.blank_disk(DISK)
    b = a
    d.cli("appliance", "create", "--resource", MAC, "--image", "used", "--mode", "local",
          "--name", "back", "--disk", "/dev/vda")  # fmt: skip
    job = d.wait_job(job_of(d.cli("appliance", "start", "back").stdout), timeout=120)
    assert job["state"] == "succeeded", (job, b.log())
    fs = tmp_path / "part.img"
    with open(b.disk, "rb") as src, open(fs, "wb") as dst:
        src.seek(PART_START)
        dst.write(src.read(part))
    fsck = subprocess.run(["e2fsck", "-fn", str(fs)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    got = tmp_path / "payload.out"
    subprocess.run(["debugfs", "-R", f"dump /payload.bin {got}", str(fs)], check=True,
                   capture_output=True)  # fmt: skip
    assert got.read_bytes() == payload
