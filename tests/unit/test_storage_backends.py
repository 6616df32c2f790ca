"""File and reflink backends on a temporary directory (plain file-system calls only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage.backends import (
    BackendUnavailable,
    FileBackend,
    ReflinkBackend,
    StorageError,
    VolumeNotFound,
    make_backend,
)
from storage.sparse import allocated, data_extents, sparse_copy

MiB = 1 << 20


@pytest.fixture
def fb(tmp_path):
    return FileBackend(tmp_path)


def test_create_is_idempotent_and_sparse(fb):
    v1 = fb.create("golden", 64 * MiB)
    v2 = fb.create("golden", 64 * MiB)
    assert v1 == v2 and v1.size == 64 * MiB and v1.path.endswith("golden.img")
    assert allocated(v1.path) < MiB
    with pytest.raises(StorageError, match="exists with size"):
        fb.create("golden", 32 * MiB)


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "a..b", "x" * 200, "sp ace"])
def test_bad_names_rejected(fb, name):
    with pytest.raises(StorageError):
        fb.create(name, MiB)


@pytest.mark.parametrize("size", [0, -512, 1000, 1.5])
def test_bad_sizes_rejected(fb, size):
    with pytest.raises(StorageError):
        fb.create("v", size)


def test_clone_copies_data_sparse_with_progress(tmp_path):
    seen = []
    fb = FileBackend(tmp_path, progress=lambda d, t: seen.append((d, t)))
    v = fb.create("golden", 256 * MiB)
    with open(v.path, "r+b") as f:
        for off in (0, 100 * MiB, 255 * MiB):
            f.seek(off)
            f.write(os.urandom(MiB))
    c = fb.clone("golden", "host01")
    assert c.size == v.size and c.name == "host01"
    assert Path(c.path).read_bytes() == Path(v.path).read_bytes()
    assert allocated(c.path) < 8 * MiB  # holes stayed holes
    assert seen[-1] == (v.size, v.size)
    assert all(d <= t for d, t in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert fb.clone("golden", "host01") == fb.get("host01")  # idempotent


def test_clone_missing_source(fb):
    with pytest.raises(VolumeNotFound):
        fb.clone("nope", "x")


def test_clone_writes_do_not_touch_origin(fb):
    v = fb.create("golden", MiB)
    c = fb.clone("golden", "h")
    with open(c.path, "r+b") as f:
        f.write(b"X" * 4096)
    assert Path(v.path).read_bytes()[:4096] == bytes(4096)


def test_delete_resize_list_usage(fb):
    fb.create("a", MiB)
    fb.create("b", MiB)
    fb.delete("a")
    fb.delete("a")  # absent is fine
    assert [v.name for v in fb.list()] == ["b"]
    assert fb.resize("b", 2 * MiB).size == 2 * MiB == os.path.getsize(fb.path("b"))
    assert fb.resize("b", 2 * MiB).size == 2 * MiB
    with pytest.raises(StorageError, match="shrink"):
        fb.resize("b", MiB)
    with pytest.raises(VolumeNotFound):
        fb.resize("zz", MiB)
    u = fb.usage()
    assert u.total >= u.used > 0 and u.free > 0


def test_temp_files_are_not_volumes(fb, tmp_path):
    (tmp_path / ".x.img.tmp-1").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    assert fb.list() == []


def test_file_check(tmp_path):
    FileBackend(tmp_path).check()
    with pytest.raises(BackendUnavailable, match="does not exist"):
        FileBackend(tmp_path / "missing").check()


def test_reflink_check_explains_non_reflink_fs(tmp_path):
    """On ext4/tmpfs/overlay the check must fail and say why; on btrfs/xfs it passes."""
    from storage.backends.reflink import _fstype

    fs = _fstype(str(tmp_path.resolve()))
    if fs in ("btrfs", "xfs"):
        ReflinkBackend(tmp_path).check()
    else:
        with pytest.raises(BackendUnavailable, match=f"is on {fs}, which cannot reflink"):
            ReflinkBackend(tmp_path).check()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".reflink")]


def test_sparse_copy_extents_and_hash(tmp_path):
    import hashlib

    src, dst = tmp_path / "s", tmp_path / "d"
    with open(src, "wb") as f:
        f.truncate(16 * MiB)
        f.seek(8 * MiB)
        f.write(b"data" * 1024)
    with open(src, "rb") as f:
        ext = list(data_extents(f.fileno(), 16 * MiB))
    assert len(ext) == 1 and ext[0][0] <= 8 * MiB < ext[0][0] + ext[0][1]
    h = hashlib.sha256()
    sparse_copy(str(src), str(dst), hasher=h)
    assert h.hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.parametrize(
    "kind, kw, cls",
    [("file", {"directory": "/x"}, FileBackend), ("reflink", {"directory": "/x"}, ReflinkBackend)],
)
def test_make_backend(kind, kw, cls):
    assert type(make_backend(kind, **kw)) is cls


@pytest.mark.parametrize("kind, kw", [("file", {}), ("lvm", {}), ("zfs", {"directory": "/x"})])
def test_make_backend_errors(kind, kw):
    with pytest.raises(StorageError):
        make_backend(kind, **kw)
