"""What keeps the threads that answer machines and operators answering on a busy machine.

Owns :func:`favour` (thread priority) and :func:`settle_gc` (garbage-collector
pauses).

:func:`favour`: called at the start of a thread that answers requests
(the agent channel's event loop, waitress's accept loop and its workers,
the agent channel's database and token pools), it lowers that thread's
nice value by :data:`FAVOURED` below the process's own. Linux schedules
threads, not processes, and ``setpriority(PRIO_PROCESS, tid)`` sets one
thread's nice value. Bulk work (jobs, storage, the inventory reload, power
polls, the external tools the jobs start) keeps the process's priority.

Why: on a 2-core machine shared with other work (bench/agents ran beside
QEMU test beds, load average 7-12), the daemon used 16-20 % of one core
while a heartbeat, answered from memory on the event loop, waited 0.4 s at
the median and 7 s at p99 for the CPU (BENCHMARKS.md, "Agents at scale on
a loaded machine"). A CPU-starved thread of nice 0 gets one slice in every
run-queue's worth; at nice -10 its weight is ~9x that, so the threads that
answer get the CPU first and the bulk work, which can wait, waits.

Lowering a nice value needs ``CAP_SYS_NICE`` (the daemon runs as root);
without it :func:`favour` logs once and changes nothing. ``FAVOURED = 0``
(environment ``PROVISIOND_FAVOURED_NICE=0``) turns it off.

:func:`settle_gc`, called once the daemon has started: a full collection of
CPython's cyclic garbage collector stops every thread (it holds the GIL),
and its cost grows with every object alive. With 2,000 agents the agent
channel's log showed 11-12 full collections a minute of up to 1.5 s each
on the loaded machine (the event loop was then as late), triggered by the
allocations of boot scripts, registrations and inventory reloads.
``gc.freeze()`` moves everything alive after start-up (modules, the ORM's
mappings, the configuration) out of the collector's sight, and
:data:`GC_THRESHOLDS` make full collections rarer while keeping the young
ones small; reference counting still frees all acyclic garbage at once,
and cycles are still collected.
"""

from __future__ import annotations

import gc
import os
import threading

from provisiond import logs

log = logs.get("priority")
FAVOURED = int(os.environ.get("PROVISIOND_FAVOURED_NICE", "-10"))
_warned = threading.Event()


def favour(what: str = "") -> bool:
    """Give the calling thread priority over bulk work; True when it took effect."""
    if FAVOURED == 0 or not hasattr(os, "setpriority"):
        return False
    tid = threading.get_native_id()
    try:
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())
        os.setpriority(os.PRIO_PROCESS, tid, max(-20, base + FAVOURED))
    except OSError as exc:
        if not _warned.is_set():
            _warned.set()
            log.info(
                "request threads keep the process priority (%s: %s); run as root "
                "or with CAP_SYS_NICE to let them go before bulk work",
                what or threading.current_thread().name, exc.strerror,
            )  # fmt: skip
        return False
    return True


def favoured_thread(target, name: str):
    """``target`` wrapped to call :func:`favour` first (for thread factories)."""

    def run(*args, **kwargs):
        favour(name)
        return target(*args, **kwargs)

    return run


# CPython's defaults: (700, 10, 10). A young collection scans at most 7,000 objects and
# a middle one 70,000 (50,000 / 20 made middle collections of 1.7 s on the loaded
# machine); a full one waits for 100 middle ones instead of 10.
GC_THRESHOLDS = (7_000, 10, 100)


def settle_gc() -> None:
    """Freeze what start-up left alive and make collections rarer (see the module doc)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
