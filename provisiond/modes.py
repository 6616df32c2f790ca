"""The modes as types: how an appliance is deployed, how a disk is erased.

Owns :class:`ApplianceMode` and :class:`EraseMode`. They are ``str``-valued
enums, so the values in the database, the API and the CLI are the strings
they always were, and a row's plain ``str`` compares equal to its member.
The life-cycle states are :mod:`provisiond.lifecycle`'s.
"""

from __future__ import annotations

from enum import StrEnum


class ApplianceMode(StrEnum):
    SANBOOT = "sanboot"  # boots a copy-on-write clone over iSCSI; nothing written to disk
    LOCAL = "local"  # the image is written onto the machine's disk, then booted from it
    TEMPLATE = "template"  # an OS is installed onto the disk from a template set


class EraseMode(StrEnum):
    QUICK = "quick"
    FULL = "full"
