"""Backend protocol and the plain data it returns (Volume, Usage) plus shared errors.

A backend holds named volumes. Every operation is idempotent: creating what
exists with the same size, deleting what is absent, resizing to the current
size all succeed. ``check()`` returns None or raises ``BackendUnavailable``
with the exact reason the backend cannot work on this host and what to use
instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,126}$")


class StorageError(Exception):
    """A storage operation could not be done (bad name, conflict, missing origin)."""


class BackendUnavailable(StorageError):
    """The backend cannot work on this host; the message says why and what to use."""


class VolumeNotFound(StorageError):
    pass


@dataclass(frozen=True)
class Volume:
    name: str
    path: str
    size: int  # bytes (logical)
    origin: str | None = None  # volume this one was cloned from, when known


@dataclass(frozen=True)
class Usage:
    total: int
    used: int
    free: int


def check_name(name: str) -> str:
    """Volume names double as file names and LV names: no slashes, no dot-dot."""
    if not _NAME.match(name) or ".." in name:
        raise StorageError(f"invalid volume name {name!r} (allowed: [A-Za-z0-9._+-], 1-127)")
    return name


def check_size(size: int) -> int:
    if not isinstance(size, int) or size <= 0 or size % 512:
        raise StorageError(f"invalid size {size!r}: a positive multiple of 512 bytes")
    return size


@runtime_checkable
class Backend(Protocol):
    kind: str

    def check(self) -> None: ...
    def create(self, name: str, size: int) -> Volume: ...
    def clone(self, source_name: str, new_name: str) -> Volume: ...
    def delete(self, name: str) -> None: ...
    def resize(self, name: str, size: int) -> Volume: ...
    def get(self, name: str) -> Volume | None: ...
    def list(self) -> list[Volume]: ...
    def usage(self) -> Usage: ...
    def path(self, name: str) -> str: ...
