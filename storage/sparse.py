"""Sparse-aware byte copying: only data extents are read and written.

``data_extents(fd)`` walks a file with ``SEEK_DATA``/``SEEK_HOLE`` (lseek(2));
``sparse_copy(src, dst)`` copies those extents with ``pread``/``pwrite`` (never
``copy_file_range``, which a file system may turn into a reflink: the file
backend must be an honest full copy), leaves holes as holes, skips all-zero
blocks inside data, and reports progress as (bytes done, total). A ``hasher``
sees every byte of the logical file, holes as zeros, in order.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator

CHUNK = 4 << 20
Progress = Callable[[int, int], None]
_ZERO = bytes(CHUNK)


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each data extent below ``size`` (whole file if unsupported)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos: trailing hole
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, size - pos
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end > start:
            yield start, end - start
        pos = end


def _feed_zeros(hasher, n: int) -> None:
    while n > 0:
        k = min(n, CHUNK)
        hasher.update(_ZERO[:k])
        n -= k


def copy_fd(
    src: int,
    dst: int,
    size: int,
    *,
    progress: Progress | None = None,
    hasher=None,
    dst_zeroed: bool = True,
) -> int:
    """Copy ``size`` bytes of ``src`` into ``dst``; returns bytes written.

    ``dst_zeroed``: ``dst`` is a fresh sparse regular file (reads as zeros), so
    holes and zero blocks are skipped and the file is truncated to ``size``.
    Otherwise (a block device with old contents) every byte is written.
    """
    if not dst_zeroed:
        return _copy_dense(src, dst, size, progress=progress, hasher=hasher)
    written = done = 0
    for off, length in data_extents(src, size):
        if hasher is not None:
            _feed_zeros(hasher, off - done)
        end = off + length
        while off < end:
            buf = os.pread(src, min(CHUNK, end - off), off)
            if not buf:
                break
            if hasher is not None:
                hasher.update(buf)
            if buf.count(0) != len(buf):  # all-zero blocks stay holes
                os.pwrite(dst, buf, off)
                written += len(buf)
            off += len(buf)
            if progress:
                progress(off, size)
        done = off
    if hasher is not None:
        _feed_zeros(hasher, size - done)
    os.ftruncate(dst, size)
    if progress:
        progress(size, size)
    return written


def _copy_dense(src: int, dst: int, size: int, *, progress=None, hasher=None) -> int:
    off = 0
    while off < size:
        buf = os.pread(src, min(CHUNK, size - off), off) or _ZERO[: min(CHUNK, size - off)]
        if hasher is not None:
            hasher.update(buf)
        os.pwrite(dst, buf, off)
        off += len(buf)
        if progress:
            progress(off, size)
    return off


def open_private(path: str):
    """``path`` created or truncated for writing, mode 0600 whatever the umask (images hold
    whole disks: only the daemon reads them)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def sparse_copy(src: str, dst: str, *, progress: Progress | None = None, hasher=None) -> int:
    """Copy file ``src`` to a new/truncated ``dst`` (0600) sparsely; returns data bytes written."""
    with open(src, "rb") as fs, open_private(dst) as fd:
        size = os.fstat(fs.fileno()).st_size
        n = copy_fd(fs.fileno(), fd.fileno(), size, progress=progress, hasher=hasher)
        fd.flush()
        os.fsync(fd.fileno())
    return n


def allocated(path: str) -> int:
    """Bytes actually allocated on disk for ``path``."""
    return os.stat(path).st_blocks * 512
