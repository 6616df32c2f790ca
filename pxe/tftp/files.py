"""Files the TFTP server may read: containment in the root and a bounded cache.

This module owns the file-system side of serving: a cleaned relative name
(:func:`pxe.tftp.codec.clean_filename`) is resolved with every symlink
followed, and refused unless the result is a regular file inside the real
root (so a symlink that leaves the boot assets directory is refused, while
one that stays inside it works). Small files (boot loaders: undionly.kpxe,
ipxe.efi) are kept in a bounded LRU cache keyed by inode, size and mtime, so
fifty machines booting at once read the disk once; larger files are streamed
with ``pread`` and never loaded whole.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from pathlib import Path

from pxe.tftp.codec import PathRefused, to_netascii


class NotRegularFile(OSError):
    """The name resolves to a directory, device or socket: never served."""


class Source:
    """Read-only bytes of one file for one transfer (memory or an open fd)."""

    def __init__(self, size: int, data: memoryview | None = None, fd: int = -1) -> None:
        self.size, self._data, self._fd = size, data, fd

    def read(self, offset: int, length: int) -> bytes | memoryview:
        if self._data is not None:
            return self._data[offset : offset + length]
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FileStore:
    """Resolve names under ``root`` and hand out :class:`Source` objects.

    ``cache_file_max`` bounds one cached file, ``cache_total`` all of them;
    netascii conversion (RFC 1350) is done in memory for files up to
    ``cache_file_max`` only.
    """

    def __init__(
        self, root: Path, cache_file_max: int = 8 << 20, cache_total: int = 64 << 20
    ) -> None:
        self.root = Path(root)
        self.cache_file_max, self.cache_total = cache_file_max, cache_total
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._cached_bytes = 0

    def resolve(self, relative: str) -> str:
        """Follow symlinks; raise PathRefused when the result leaves the root."""
        root = os.path.realpath(self.root)
        target = os.path.realpath(os.path.join(root, relative))
        if os.path.commonpath([root, target]) != root:
            raise PathRefused(f"{relative!r} resolves outside the root ({target})")
        return target

    def open(self, relative: str, netascii: bool = False) -> Source:
        """Open a cleaned relative name; raises PathRefused, OSError (ENOENT...)."""
        target = self.resolve(relative)
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        keep_fd = False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFile(f"{relative!r} is not a regular file")
            if netascii:
                return self._netascii(fd, st.st_size)
            if st.st_size <= self.cache_file_max:
                key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                data = self._cached(key, fd, st.st_size)
                return Source(len(data), memoryview(data))
            keep_fd = True
            return Source(st.st_size, fd=fd)
        finally:
            if not keep_fd:
                os.close(fd)

    def _cached(self, key: tuple, fd: int, size: int) -> bytes:
        data = self._cache.get(key)
        if data is not None:
            self._cache.move_to_end(key)
            return data
        data = _read_all(fd, size)
        self._cache[key] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > self.cache_total and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old)
        return data

    def _netascii(self, fd: int, size: int) -> Source:
        if size > self.cache_file_max:
            raise NotRegularFile(f"netascii transfer of {size} bytes refused; use octet mode")
        data = to_netascii(_read_all(fd, size))
        return Source(len(data), memoryview(data))


def _read_all(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
