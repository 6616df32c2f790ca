"""TFTP wire format and pure decisions: packets, option negotiation, file names.

This module owns everything about TFTP that needs no socket, no clock and no
file system (standard library only):

- :func:`parse` / :meth:`Packet.pack` for the six packet types of RFC 1350
  section 5 (RRQ, WRQ, DATA, ACK, ERROR) and RFC 2347 (OACK);
- :func:`negotiate`: which of the requested options (blksize RFC 2348, tsize
  and timeout RFC 2349, windowsize RFC 7440) the server grants, as a pure
  function of the request and the file size;
- :func:`clean_filename`: the request's file name as a safe relative path
  (no ``..``, backslashes normalised, a leading ``/`` stripped);
- :func:`absolute_block`: 16-bit block numbers mapped back onto the transfer
  (block-number rollover for files of more than 65535 blocks).

Policy choices, made once here:

- An option with an invalid value (blksize outside 8..65464, timeout outside
  1..255, windowsize outside 1..65535, anything non-numeric) is *ignored*: it
  is left out of the OACK and the transfer goes on with the RFC 1350 default
  (RFC 2347: "the server should simply omit the option from the OACK").
- A leading ``/`` is stripped: ``/undionly.kpxe`` means the file in the boot
  assets directory, and ``/etc/passwd`` means ``<root>/etc/passwd`` (which
  does not exist), never the host's file. Any ``..`` component is refused.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

# RFC 1350 section 5 / RFC 2347: opcodes.


class Opcode(enum.IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(enum.IntEnum):
    """RFC 1350 appendix "Error Codes" plus RFC 2347's code 8."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


DEFAULT_BLKSIZE = 512  # RFC 1350 section 2
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255  # RFC 2349 section "Timeout Interval Option"
MIN_WINDOWSIZE, MAX_WINDOWSIZE = 1, 65535  # RFC 7440 section 3
MODES = ("netascii", "octet")  # RFC 1350 section 1; "mail" is obsolete (refused)


class MalformedPacket(ValueError):
    """The peer sent bytes that are not a TFTP packet (the peer broke the protocol)."""


class PathRefused(ValueError):
    """The requested file name tries to leave the served directory."""


Options = tuple[tuple[str, str], ...]  # ordered (name, value); names lower-case


@dataclass(frozen=True)
class Request:
    """RRQ or WRQ: ``| opcode | filename | 0 | mode | 0 | [opt | 0 | value | 0]* |``."""

    opcode: Opcode
    filename: str
    mode: str  # lower-case
    options: Options = ()

    def pack(self) -> bytes:
        fields = [self.filename, self.mode]
        for name, value in self.options:
            fields += [name, value]
        return _op(self.opcode) + b"".join(f.encode() + b"\0" for f in fields)


@dataclass(frozen=True)
class Data:
    """RFC 1350 section 5: ``| 03 | block | payload (0..blksize bytes) |``."""

    block: int
    payload: bytes

    def pack(self) -> bytes:
        return data_header(self.block) + self.payload


@dataclass(frozen=True)
class Ack:
    block: int

    def pack(self) -> bytes:
        return _op(Opcode.ACK) + (self.block & 0xFFFF).to_bytes(2, "big")


@dataclass(frozen=True)
class Error:
    code: int
    message: str = ""

    def pack(self) -> bytes:
        msg = self.message.encode("ascii", "replace")
        return _op(Opcode.ERROR) + self.code.to_bytes(2, "big") + msg + b"\0"


@dataclass(frozen=True)
class OptionAck:
    """RFC 2347: ``| 06 | opt1 | 0 | value1 | 0 | ...``."""

    options: Options

    def pack(self) -> bytes:
        return _op(Opcode.OACK) + b"".join(
            n.encode() + b"\0" + v.encode() + b"\0" for n, v in self.options
        )


Packet = Request | Data | Ack | Error | OptionAck


def _op(opcode: Opcode) -> bytes:
    return int(opcode).to_bytes(2, "big")


def data_header(block: int) -> bytes:
    """The 4-byte DATA header; ``block`` is taken modulo 65536 (rollover)."""
    return b"\x00\x03" + (block & 0xFFFF).to_bytes(2, "big")


def parse(datagram: bytes) -> Packet:
    """Decode one datagram; raise :class:`MalformedPacket` with the reason."""
    if len(datagram) < 2:
        raise MalformedPacket(f"{len(datagram)}-byte datagram has no opcode")
    try:
        opcode = Opcode(int.from_bytes(datagram[:2], "big"))
    except ValueError:
        raise MalformedPacket(f"unknown opcode {int.from_bytes(datagram[:2], 'big')}")
    body = datagram[2:]
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        return _parse_request(opcode, body)
    if opcode is Opcode.OACK:
        return OptionAck(_pairs(_strings(body, "OACK")))
    if len(body) < 2:
        raise MalformedPacket(f"{opcode.name} of {len(datagram)} bytes is truncated")
    number = int.from_bytes(body[:2], "big")
    if opcode is Opcode.DATA:
        return Data(number, bytes(body[2:]))
    if opcode is Opcode.ACK:
        return Ack(number)
    # ERROR: RFC 1350 wants a NUL-terminated message; a missing NUL is tolerated
    # (the transfer ends either way), a packet without the code is not.
    message = bytes(body[2:]).split(b"\0", 1)[0]
    return Error(number, message.decode("ascii", "replace"))


def _strings(body: bytes, what: str) -> list[str]:
    if body and body[-1] != 0:
        raise MalformedPacket(f"{what}: last field is not NUL-terminated (truncated?)")
    try:
        return [f.decode() for f in bytes(body).split(b"\0")[:-1]]
    except UnicodeDecodeError:
        raise MalformedPacket(f"{what}: field is not valid UTF-8")


def _parse_request(opcode: Opcode, body: bytes) -> Request:
    fields = _strings(body, opcode.name)
    if len(fields) < 2:
        raise MalformedPacket(f"{opcode.name} without a mode field")
    filename, mode = fields[0], fields[1].lower()
    if not filename:
        raise MalformedPacket(f"{opcode.name} with an empty file name")
    return Request(opcode, filename, mode, _pairs(fields[2:]))


def _pairs(fields: list[str]) -> Options:
    """RFC 2347: options come as name/value pairs; names are case-insensitive."""
    if len(fields) % 2:
        raise MalformedPacket(f"option {fields[-1]!r} has no value")
    return tuple((fields[i].lower(), fields[i + 1]) for i in range(0, len(fields), 2))


# ---------------------------------------------------------------------------
# option negotiation (RFC 2347, 2348, 2349, 7440)


@dataclass(frozen=True)
class Limits:
    """What this server is willing to grant (the request may only lower it)."""

    max_blksize: int = MAX_BLKSIZE
    max_windowsize: int = 64
    default_timeout: float = 1.0


@dataclass(frozen=True)
class Params:
    """The parameters a transfer runs with, after negotiation."""

    blksize: int = DEFAULT_BLKSIZE
    timeout: float = 1.0
    windowsize: int = 1


def _number(value: str, lo: int, hi: int) -> int | None:
    """Decimal digits only, within [lo, hi]; None for anything else."""
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        return None
    n = int(value)
    return n if lo <= n <= hi else None


def negotiate(
    requested: Iterable[tuple[str, str]], file_size: int | None, limits: Limits = Limits()
) -> tuple[Params, Options]:
    """Grant what can be granted; return the parameters and the OACK's options.

    An empty OACK tuple means "send no OACK, start with DATA 1" (RFC 2347:
    only acknowledged options are in effect). Invalid values are left out;
    the first occurrence of a repeated option wins; unknown options are ignored.
    """
    blksize, timeout, windowsize = DEFAULT_BLKSIZE, limits.default_timeout, 1
    granted: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in requested:
        if name in seen:
            continue
        seen.add(name)
        if name == "blksize":  # RFC 2348: server may answer with a smaller size
            n = _number(value, MIN_BLKSIZE, MAX_BLKSIZE)
            if n is not None:
                blksize = min(n, limits.max_blksize)
                granted.append((name, str(blksize)))
        elif name == "timeout":  # RFC 2349: the OACK must echo the same value
            n = _number(value, MIN_TIMEOUT, MAX_TIMEOUT)
            if n is not None:
                timeout = float(n)
                granted.append((name, value))
        elif name == "tsize":  # RFC 2349: RRQ carries 0, OACK carries the size
            if _number(value, 0, 2**63) is not None and file_size is not None:
                granted.append((name, str(file_size)))
        elif name == "windowsize":  # RFC 7440 section 3: server may lower it
            n = _number(value, MIN_WINDOWSIZE, MAX_WINDOWSIZE)
            if n is not None:
                windowsize = min(n, limits.max_windowsize)
                granted.append((name, str(windowsize)))
    return Params(blksize, timeout, windowsize), tuple(granted)


# ---------------------------------------------------------------------------
# file names and block numbers


def clean_filename(name: str) -> str:
    """The request's file name as a relative POSIX path inside the served root.

    Backslashes become ``/``; leading ``/`` and ``.`` components are dropped;
    any ``..`` component, a NUL or an empty result raises :class:`PathRefused`.
    Symlinks are the server's job (it resolves and checks containment).
    """
    if "\0" in name:
        raise PathRefused("NUL in file name")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRefused(f"'..' in {name!r}")
    if not parts:
        raise PathRefused(f"{name!r} names no file")
    return str(PurePosixPath(*parts))


def absolute_block(wire_block: int, acked: int, sent: int) -> int | None:
    """Map a 16-bit ACK number onto the transfer's absolute block numbers.

    Only blocks in ``(acked, sent]`` can be newly acknowledged; returns the one
    whose low 16 bits equal ``wire_block``, or None for a duplicate/old/future
    ACK (which must not trigger a retransmission: the Sorcerer's Apprentice
    bug, RFC 1123 section 4.2.3.1). Block 0 after 65535 is the rollover most
    clients use.
    """
    if sent <= acked:
        return None
    candidate = sent - ((sent - wire_block) & 0xFFFF)
    return candidate if candidate > acked else None


def to_netascii(data: bytes) -> bytes:
    """RFC 1350 / RFC 764: LF -> CR LF, bare CR -> CR NUL."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
