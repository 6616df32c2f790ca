"""Re-export of :mod:`pxe.dns.directory` (the DNS name-directory port moved there: ``pxe``
imports nothing from ``provisiond``). New code imports ``pxe.dns.directory``."""

from pxe.dns.directory import NameDirectory, StaticDirectory

__all__ = ["NameDirectory", "StaticDirectory"]
