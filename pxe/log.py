"""Logging for the protocol servers: their logger names and the rate-limited warning.

Owns :func:`get` (loggers named ``provisiond.<subsystem>``, as the daemon's
own, so one handler and its secret redaction, set up by ``provisiond.logs``,
cover them) and :class:`RateLimitedLog`: a bad input is logged, but a flood
of them is not (a malformed-packet storm must not become a disk-filling log).
Standard library only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

WARN_EVERY = 60.0  # seconds between repeated warnings of one kind


def standalone_logging(level: int = logging.INFO) -> None:
    """Log lines to stderr for a server run alone (``python -m pxe.dhcp``)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def get(subsystem: str) -> logging.Logger:
    return logging.getLogger(f"provisiond.{subsystem}")


class RateLimitedLog:
    """Log at most ``burst`` warnings per key and period; count the others.

    The first warning of a key after its period has passed says how many
    were suppressed. Thread-safe (servers warn from several threads).
    """

    def __init__(
        self,
        period: float = WARN_EVERY,
        log: logging.Logger | None = None,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.period, self.burst, self._clock = period, burst, clock
        self.log = log or get("pxe")
        self._window: dict[str, tuple[float, int]] = {}  # key -> (window start, warnings in it)
        self._skipped: Counter[str] = Counter()
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = self._clock()
        with self._lock:
            start, count = self._window.get(key, (now - self.period, 0))
            if now - start >= self.period:
                start, count = now, 0
            if count >= self.burst:
                self._skipped[key] += 1
                return
            self._window[key] = (start, count + 1)
            skipped = self._skipped.pop(key, 0)
        suffix = f" ({skipped} similar suppressed)" if skipped else ""
        self.log.warning(msg + suffix, *args)

    @property
    def suppressed(self) -> int:
        """Warnings held back and not yet reported (all keys)."""
        return sum(self._skipped.values())
