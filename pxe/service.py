"""The daemon's unit of composition: a named service with start() and stop().

Every subsystem the daemon runs (DHCP, TFTP, DNS, HTTP, scheduler, storage
reconciler) is a small object satisfying :class:`Service`. ``start`` returns
once the service is listening (so errors such as "address in use" surface at
start-up); ``stop`` returns within a couple of seconds. :class:`LoopThread`
is the shared helper for services that run a receive loop in a thread;
:func:`run_until_signal` runs one service alone (``python -m pxe.dhcp``...).
Part of ``pxe`` (standard library only); the daemon's services import it from here.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from typing import Protocol


class Service(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class LoopThread:
    """Run ``step()`` repeatedly in a daemon thread until stopped.

    ``step`` should block for at most ``~0.5 s`` (a socket timeout) so that
    stop is prompt. An exception in ``step`` is logged and the loop goes on:
    a serve loop never dies of one bad input.
    """

    def __init__(self, name: str, step: Callable[[], None], log: logging.Logger) -> None:
        self.name, self._step, self._log = name, step, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until stopped, whichever comes first."""
        self._stop.wait(seconds)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                self._log.exception("%s: unexpected error in serve loop (continuing)", self.name)

    def stop(self, timeout: float = 3.0, wake: Callable[[], None] | None = None) -> None:
        """Stop and join; ``wake`` ends a ``step`` that waits on something else than a socket."""
        self._stop.set()
        if wake is not None:
            wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)


def run_until_signal(service: Service, stats: Callable[[], dict]) -> None:
    """Start ``service``, print READY, stop on SIGTERM/SIGINT and print ``stats()`` as JSON.

    The protocol of the standalone runs that interop tests and benchmarks start.
    """
    service.start()
    print("READY", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    service.stop()
    print(json.dumps(stats(), sort_keys=True), flush=True)
