"""provisiond.priority: request threads go before bulk work (one thread's nice value)."""

from __future__ import annotations

import os
import threading

import pytest

from provisiond import priority


def _in_thread(fn) -> tuple[object, int, int]:
    """``fn()``'s result, the thread's nice value after it, and a sibling thread's."""
    out: dict = {}

    def body():
        out["ret"] = fn()
        out["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    sibling = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    return out["ret"], out["nice"], sibling


def _may_lower() -> bool:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(
            os.PRIO_PROCESS, threading.get_native_id()))  # fmt: skip
    except OSError:
        return False
    return os.geteuid() == 0


@pytest.mark.parametrize(
    ("favoured", "lowered_by"),
    [(-10, 10), (-3, 3), (0, 0)],
)
def test_favour_lowers_only_the_calling_threads_nice(monkeypatch, favoured, lowered_by):
    monkeypatch.setattr(priority, "FAVOURED", favoured)
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    ret, nice, sibling = _in_thread(lambda: priority.favour("test"))
    if favoured and not _may_lower():
        pytest.skip(reason="lowering a nice value needs root (CAP_SYS_NICE)")
    assert ret is bool(lowered_by)
    assert nice == max(-20, base - lowered_by)
    assert sibling == base  # the rest of the process keeps its priority


def test_favoured_thread_wraps_a_target(monkeypatch):
    if not _may_lower():
        pytest.skip(reason="lowering a nice value needs root (CAP_SYS_NICE)")
    monkeypatch.setattr(priority, "FAVOURED", -5)
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    seen = []

    def target(a, b=0):
        seen.append((a, b, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))

    t = threading.Thread(target=priority.favoured_thread(target, "x"), args=(1,), kwargs={"b": 2})
    t.start()
    t.join()
    assert seen == [(1, 2, max(-20, base - 5))]
