"""Run the calling thread inside a network namespace (``setns(2)`` via ctypes).

Owns :func:`in_netns`: a network namespace is a per-thread attribute on
Linux, so the current thread can enter a test bed's namespace (and every
process it starts inherits it) while the rest of the test process stays
where it is. Used to drive a browser against a daemon that only listens
inside the test bed. Python 3.11 has no ``os.setns``; this is the same call.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(original)
        os.close(target)
        os.close(original)
