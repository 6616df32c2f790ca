"""Image import: raw sparse copy with SHA-256, qcow2 via qemu-img (FakeRunner), failures."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from storage.backends import FileBackend, StorageError
from storage.images import QCOW2_MAGIC, import_image, sniff
from storage.runner import FakeRunner, Result
from storage.sparse import allocated

MiB = 1 << 20


def make_raw(path, size=32 * MiB, at=(0, 20 * MiB)) -> bytes:
    with open(path, "wb") as f:
        f.truncate(size)
        for off in at:
            f.seek(off)
            f.write(os.urandom(64 * 1024))
    return Path(path).read_bytes()


def test_raw_import_sparse_hash_progress(tmp_path):
    (tmp_path / "vols").mkdir()
    data = make_raw(tmp_path / "src.raw")
    seen = []
    fb = FileBackend(tmp_path / "vols")
    src = str(tmp_path / "src.raw")
    vol, size, sha = import_image(fb, "golden", src, progress=lambda d, t: seen.append((d, t)))
    assert size == len(data) == vol.size
    assert sha == hashlib.sha256(data).hexdigest()
    assert Path(vol.path).read_bytes() == data
    assert allocated(vol.path) < 4 * MiB
    assert seen[-1] == (size, size)


def test_raw_odd_size_rounds_up(tmp_path):
    (tmp_path / "src.raw").write_bytes(b"x" * 1000)
    _, size, sha = import_image(FileBackend(tmp_path), "v", str(tmp_path / "src.raw"))
    assert size == 1024 and sha == hashlib.sha256(b"x" * 1000).hexdigest()


def test_sha_mismatch_deletes_volume(tmp_path):
    (tmp_path / "src.raw").write_bytes(b"y" * 4096)
    fb = FileBackend(tmp_path)
    with pytest.raises(StorageError, match="sha256 mismatch"):
        import_image(fb, "v", str(tmp_path / "src.raw"), expected_sha256="00" * 32)
    assert fb.get("v") is None


def test_existing_volume_refused(tmp_path):
    fb = FileBackend(tmp_path)
    fb.create("v", MiB)
    with pytest.raises(StorageError, match="already exists"):
        import_image(fb, "v", "/dev/null")


def test_qcow2_goes_through_qemu_img(tmp_path):
    src = tmp_path / "src.qcow2"
    src.write_bytes(QCOW2_MAGIC + b"\0" * 508)
    assert sniff(str(src)) == "qcow2"
    r = FakeRunner().on(["qemu-img", "info"], json.dumps({"virtual-size": 8 * MiB}))
    fb = FileBackend(tmp_path)
    vol, size, sha = import_image(fb, "g", str(src), runner=r)
    assert size == 8 * MiB and sha == hashlib.sha256(src.read_bytes()).hexdigest()
    assert r.calls == [
        ["qemu-img", "info", "--output=json", "-f", "qcow2", str(src)],
        ["qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", "--target-is-zero", str(src),
         vol.path],
    ]  # fmt: skip


def test_qcow2_failure_deletes_volume(tmp_path):
    src = tmp_path / "src.qcow2"
    src.write_bytes(QCOW2_MAGIC + b"\0" * 508)
    r = FakeRunner().on(["qemu-img", "info"], json.dumps({"virtual-size": MiB}))
    r.on(["qemu-img", "convert"], Result(1, "", "qemu-img: Could not open"))
    fb = FileBackend(tmp_path)
    with pytest.raises(Exception, match="Could not open"):
        import_image(fb, "g", str(src), runner=r)
    assert fb.list() == []
