"""The report-in slot: how the OS of a locally deployed disk learns where to report in.

Owns the on-disk format (pure; no sockets, no database). An image *built for
provisiond* reserves :data:`SIZE` bytes at byte :data:`OFFSET` (1 MiB - 4 KiB,
sectors 2040-2047 of 512: the end of the gap every partitioning tool leaves
before a first partition at 1 MiB, after an MBR, a GPT and a GRUB core
image) that begin with :data:`PLACEHOLDER` and are zero otherwise. That
placeholder is the image's opt-in: the daemon reads it from the master
volume (:func:`has_slot`), so it knows before the deploy whether the booted
OS will call back.

After the agent has written and verified the image, it fetches this deploy's
record (``GET /agent/v1/stream/<cmd>/report-in``, its bearer token, only
while the command runs) and writes it over the slot. The record holds the
report-in URL and a one-time token (the daemon keeps only its hash)::

    PROVISIOND-REPORT-IN v1
    url=http://10.0.0.1:8080/install/v1/done
    token=<43 characters>

The booted OS reads the slot from its boot disk
(``dd if=/dev/vda bs=4096 skip=255 count=1``), writes the placeholder back
(the token is spent anyway; a later capture of the disk then phones home
again), and calls ``POST url`` with ``Authorization: Bearer <token>`` and the
form fields ``hostname`` and ``hostkey`` (optional) — the same call, and the
same code path, as a template install's ``/install/v1/done``.
"""

from __future__ import annotations

import re

OFFSET = 2**20 - 4096
SIZE = 4096
PLACEHOLDER = b"PROVISIOND-REPORT-IN-SLOT v1\n"
MAGIC = b"PROVISIOND-REPORT-IN v1\n"
_VALUE = re.compile(r"^[\x21-\x7e]{1,1024}$")  # printable ASCII, no spaces


def placeholder() -> bytes:
    """The slot as an image built for provisiond ships it."""
    return PLACEHOLDER.ljust(SIZE, b"\0")


def has_slot(head: bytes) -> bool:
    """``head`` = the image's bytes at :data:`OFFSET` (at least the placeholder's length)."""
    return head.startswith(PLACEHOLDER)


def read_slot(path: str, size: int) -> bool:
    """Does the image file at ``path`` (``size`` bytes) reserve a report-in slot?"""
    if size < OFFSET + SIZE:
        return False
    with open(path, "rb") as fh:
        fh.seek(OFFSET)
        return has_slot(fh.read(len(PLACEHOLDER)))


def record(url: str, token: str) -> bytes:
    """This deploy's slot contents (exactly :data:`SIZE` bytes)."""
    for name, value in (("url", url), ("token", token)):
        if not _VALUE.match(value):
            raise ValueError(f"report-in {name} must be 1-1024 printable characters, no spaces")
    return (MAGIC + f"url={url}\ntoken={token}\n".encode()).ljust(SIZE, b"\0")


def parse(data: bytes) -> dict[str, str] | None:
    """The fields of a written slot; None for a placeholder, zeros or anything else."""
    if not data.startswith(MAGIC):
        return None
    text = data[len(MAGIC) :].split(b"\0", 1)[0].decode("ascii", "replace")
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return fields if fields.get("url") and fields.get("token") else None
