"""Volume backends: ``file`` (full copies), ``reflink`` (FICLONE on btrfs/xfs), ``lvm``.

``make_backend(kind, ...)`` is the plain ``match`` the composition root uses;
each backend's ``check()`` says exactly why it cannot work on a host.
"""

from __future__ import annotations

from storage.backends.base import (
    Backend,
    BackendUnavailable,
    StorageError,
    Usage,
    Volume,
    VolumeNotFound,
)
from storage.backends.file import FileBackend
from storage.backends.lvm import LvmBackend
from storage.backends.reflink import ReflinkBackend
from storage.runner import Runner

__all__ = [
    "Backend",
    "BackendUnavailable",
    "FileBackend",
    "LvmBackend",
    "ReflinkBackend",
    "StorageError",
    "Usage",
    "Volume",
    "VolumeNotFound",
    "make_backend",
]


def make_backend(
    kind: str,
    *,
    directory: str | None = None,
    vg: str | None = None,
    thin_pool: str | None = None,
    runner: Runner | None = None,
) -> Backend:
    """Build the configured backend ("file" | "reflink" | "lvm"); does not call check()."""
    match kind:
        case "file" | "reflink":
            if not directory:
                raise StorageError(f"backend {kind!r} needs a directory")
            cls = FileBackend if kind == "file" else ReflinkBackend
            return cls(directory)
        case "lvm":
            if not vg:
                raise StorageError("backend 'lvm' needs a volume group (vg)")
            return LvmBackend(vg, thin_pool=thin_pool, runner=runner)
        case _:
            raise StorageError(f"unknown storage backend {kind!r} (file, reflink, lvm)")
