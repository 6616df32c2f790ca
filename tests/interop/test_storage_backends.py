"""Backends on real file systems: reflink clones on a btrfs loop mount, full copies, import.

Root only (mkfs.btrfs + loop mount). The btrfs file system lives on a sparse
1 GiB file in tmp_path; the mount and loop device are removed even on failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from storage.backends import BackendUnavailable, FileBackend, ReflinkBackend
from storage.images import import_image
from storage.sparse import allocated

pytestmark = pytest.mark.interop
MiB, GiB = 1 << 20, 1 << 30


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def btrfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip(reason="needs root for losetup + mount of a btrfs loop file")
    if not shutil.which("mkfs.btrfs"):
        pytest.skip(reason="needs mkfs.btrfs (apt-get install btrfs-progs)")
    img, mnt = tmp_path / "btrfs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(GiB)
    sh("mkfs.btrfs", "-q", "-f", str(img))
    loop = sh("losetup", "--find", "--show", str(img)).strip()
    try:
        sh("mount", loop, str(mnt))
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False, timeout=60)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False, timeout=30)


def fill(path: str, offsets=(0, 200 * MiB, 500 * MiB)) -> None:
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            f.write(os.urandom(4 * MiB))


def sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(MiB):
            h.update(b)
    return h.hexdigest()


def test_reflink_clone_is_instant_and_copy_on_write(btrfs):
    rb = ReflinkBackend(btrfs)
    rb.check()
    golden = rb.create("golden", 512 * MiB)
    fill(golden.path, (0, 100 * MiB, 500 * MiB))
    before = sha(golden.path)
    t = time.perf_counter()
    clone = rb.clone("golden", "host01")
    elapsed = time.perf_counter() - t
    assert elapsed < 1.0, elapsed
    assert clone.origin == "golden" and clone.size == golden.size
    assert sha(clone.path) == before
    with open(clone.path, "r+b") as f:
        f.seek(100 * MiB)
        f.write(b"\xff" * MiB)
    assert sha(golden.path) == before
    assert sha(clone.path) != before
    assert {v.name for v in rb.list()} == {"golden", "host01"}
    rb.delete("host01")
    assert rb.get("host01") is None and sha(golden.path) == before


def test_reflink_check_refuses_non_reflink_fs(tmp_path):
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(tmp_path)],
                        capture_output=True, text=True).stdout.strip()  # fmt: skip
    if fs in ("btrfs", "xfs"):
        pytest.skip(reason=f"tmp_path is on {fs}, which supports reflink")
    with pytest.raises(BackendUnavailable, match=f"is on {fs}, which cannot reflink"):
        ReflinkBackend(tmp_path).check()


def test_file_backend_full_copy_with_progress(btrfs):
    seen: list[tuple[int, int]] = []
    fb = FileBackend(btrfs, progress=lambda d, t: seen.append((d, t)))
    golden = fb.create("golden", 512 * MiB)
    fill(golden.path)
    clone = fb.clone("golden", "host02")
    assert sha(clone.path) == sha(golden.path)
    assert seen[-1] == (golden.size, golden.size) and len(seen) > 3
    # a real copy, not a hidden reflink: the clone owns its own data extents
    used = sh("btrfs", "filesystem", "du", "--raw", "-s", clone.path).splitlines()[-1].split()
    exclusive = int(used[1])
    assert exclusive >= 12 * MiB, used
    assert allocated(clone.path) < 64 * MiB


def test_qemu_img_import_of_qcow2(tmp_path):
    if not shutil.which("qemu-img"):
        pytest.skip(reason="needs qemu-img (apt-get install qemu-utils)")
    raw = tmp_path / "src.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
    fill(str(raw), (0, 33 * MiB))
    q = tmp_path / "src.qcow2"
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(q))
    (tmp_path / "vols").mkdir()
    fb = FileBackend(tmp_path / "vols")
    vol, size, digest = import_image(fb, "golden", str(q))
    assert size == 64 * MiB
    assert digest == sha(str(q))  # the qcow2 as supplied
    assert sha(vol.path) == sha(str(raw))  # the raw bytes it carries
    assert allocated(vol.path) < 16 * MiB


def test_http_import_streams_and_hashes(tmp_path):
    import functools
    import http.server
    import threading

    src = tmp_path / "www" / "img.raw"
    src.parent.mkdir()
    with open(src, "wb") as f:
        f.truncate(16 * MiB)
    fill(str(src), (0, 8 * MiB))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src.parent))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        (tmp_path / "vols").mkdir()
        seen = []
        url = f"http://127.0.0.1:{srv.server_address[1]}/img.raw"
        vol, size, digest = import_image(FileBackend(tmp_path / "vols"), "g", url,
                                         progress=lambda d, t: seen.append(d),
                                         workdir=str(tmp_path))  # fmt: skip
    finally:
        srv.shutdown()
        srv.server_close()
    assert size == 16 * MiB and digest == sha(str(src)) == sha(vol.path)
    assert seen[-1] == 16 * MiB
    assert Path(vol.path).stat().st_blocks * 512 < 12 * MiB
