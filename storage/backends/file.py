"""``file`` backend: volumes are raw files in one directory; clone is a full copy.

The honest fallback that works on any file system: a clone copies every data
extent (sparse-aware, holes stay holes) and reports progress (bytes done,
total). Volume files are 0600. The origin of a clone is kept in the ``user.provisiond.origin`` xattr
where the file system supports user xattrs. Writes go to a hidden temporary
file renamed into place, so a crash never leaves a half-copied volume.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from storage.backends.base import (
    BackendUnavailable,
    StorageError,
    Usage,
    Volume,
    VolumeNotFound,
    check_name,
    check_size,
)
from storage.sparse import Progress, open_private, sparse_copy

SUFFIX = ".img"
XATTR_ORIGIN = "user.provisiond.origin"


class FileBackend:
    kind = "file"

    def __init__(self, directory: str | os.PathLike, *, progress: Progress | None = None):
        self.dir = Path(directory)
        self.progress = progress

    # -- protocol -------------------------------------------------------
    def check(self) -> None:
        if not self.dir.is_dir():
            raise BackendUnavailable(f"{self.kind}: directory {self.dir} does not exist")
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise BackendUnavailable(f"{self.kind}: directory {self.dir} is not writable")

    def path(self, name: str) -> str:
        return str(self.dir / f"{check_name(name)}{SUFFIX}")

    def get(self, name: str) -> Volume | None:
        p = self.path(name)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            return None
        return Volume(name, p, st.st_size, _get_origin(p))

    def create(self, name: str, size: int) -> Volume:
        check_size(size)
        vol = self.get(name)
        if vol is not None:
            if vol.size != size:
                raise StorageError(f"volume {name} exists with size {vol.size}, not {size}")
            return vol
        tmp = self._tmp(name)
        with open_private(tmp) as f:
            f.truncate(size)
        os.replace(tmp, self.path(name))
        return Volume(name, self.path(name), size)

    def clone(self, source_name: str, new_name: str) -> Volume:
        src = self.get(source_name)
        if src is None:
            raise VolumeNotFound(f"clone source {source_name} not found in {self.dir}")
        existing = self.get(new_name)
        if existing is not None:
            return existing
        tmp = self._tmp(new_name)
        try:
            self._copy(src.path, tmp)
            _set_origin(tmp, source_name)
            os.replace(tmp, self.path(new_name))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return Volume(new_name, self.path(new_name), src.size, _get_origin(self.path(new_name)))

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(name))

    def resize(self, name: str, size: int) -> Volume:
        check_size(size)
        vol = self.get(name)
        if vol is None:
            raise VolumeNotFound(f"volume {name} not found in {self.dir}")
        if size < vol.size:
            raise StorageError(f"refusing to shrink {name} from {vol.size} to {size} bytes")
        if size > vol.size:
            os.truncate(vol.path, size)
        return Volume(name, vol.path, size, vol.origin)

    def list(self) -> list[Volume]:
        vols = []
        for p in sorted(self.dir.glob(f"*{SUFFIX}")):
            if p.name.startswith("."):
                continue
            with contextlib.suppress(StorageError):
                vol = self.get(p.name[: -len(SUFFIX)])
                if vol is not None:
                    vols.append(vol)
        return vols

    def usage(self) -> Usage:
        st = os.statvfs(self.dir)
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        return Usage(total=total, used=total - st.f_bfree * st.f_frsize, free=free)

    # -- helpers ----------------------------------------------------------
    def _copy(self, src: str, dst: str) -> None:
        sparse_copy(src, dst, progress=self.progress)

    def _tmp(self, name: str) -> str:
        return str(self.dir / f".{check_name(name)}{SUFFIX}.tmp-{os.getpid()}")


def _set_origin(path: str, origin: str) -> None:
    with contextlib.suppress(OSError):
        os.setxattr(path, XATTR_ORIGIN, origin.encode())


def _get_origin(path: str) -> str | None:
    try:
        return os.getxattr(path, XATTR_ORIGIN).decode()
    except OSError:
        return None
