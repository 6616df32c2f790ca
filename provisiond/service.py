"""Re-export of :mod:`pxe.service` (the service base moved there: ``pxe`` imports nothing
from ``provisiond``). New code imports ``pxe.service``; this name stays for existing imports."""

from pxe.service import LoopThread, Service, run_until_signal

__all__ = ["LoopThread", "Service", "run_until_signal"]
