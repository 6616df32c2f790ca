"""DHCPv4 wire format: bytes <-> :class:`DhcpPacket` (pure, standard library only).

Owns the BOOTP header (RFC 2131 section 2, RFC 951), the option area (RFC 2132)
including option overload (RFC 2132 section 9.3, option 52) and long-option
concatenation (RFC 3396), plus typed readers for the options a PXE server
needs: 53/54/55/50/51/61/12/60/93/94/97/77/43/175/82. No sockets, no clock.

Malformed input raises :class:`DhcpDecodeError` and nothing else; callers
count and drop. Addresses are dotted-quad strings and the MAC is a
lower-case colon string: cheap to build, easy to read in dumps and logs.
"""

from __future__ import annotations

import socket
import struct
import uuid as _uuid
from dataclasses import dataclass, field

MAGIC = b"\x63\x82\x53\x63"  # RFC 2131 section 3: magic cookie 99.130.83.99
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes, RFC 2131 figure 1
MIN_SIZE = HEADER.size + len(MAGIC)  # 240
BOOTREQUEST, BOOTREPLY = 1, 2
FLAG_BROADCAST = 0x8000  # RFC 2131 section 2, figure 2
ZERO_IP = "0.0.0.0"

# RFC 2132 section 9.6: DHCP message types
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_TYPES = {
    1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE",
    5: "ACK", 6: "NAK", 7: "RELEASE", 8: "INFORM",
}  # fmt: skip


class Opt:
    """Option codes used by provisiond (RFC 2132 unless noted)."""

    PAD, SUBNET_MASK, ROUTER, DNS, HOSTNAME, DOMAIN = 0, 1, 3, 6, 12, 15
    VENDOR_SPECIFIC = 43  # PXE vendor options (PXE spec 2.1 section 2.2.5)
    REQUESTED_IP, LEASE_TIME, OVERLOAD, MESSAGE_TYPE, SERVER_ID = 50, 51, 52, 53, 54
    PARAM_REQUEST, MESSAGE, MAX_SIZE, RENEWAL_T1, REBINDING_T2 = 55, 56, 57, 58, 59
    VENDOR_CLASS, CLIENT_ID, TFTP_SERVER, BOOTFILE = 60, 61, 66, 67
    USER_CLASS = 77  # RFC 3004
    RELAY_AGENT = 82  # RFC 3046
    CLIENT_ARCH, CLIENT_NDI, CLIENT_UUID = 93, 94, 97  # RFC 4578 section 2.1-2.3
    IPXE_ENCAP = 175  # iPXE encapsulated options (ipxe.org/cfg)
    END = 255


OPTION_NAMES = {
    1: "subnet-mask", 3: "router", 6: "dns", 12: "hostname", 15: "domain",
    43: "vendor-specific", 50: "requested-ip", 51: "lease-time", 52: "overload",
    53: "message-type", 54: "server-id", 55: "param-request", 56: "message",
    57: "max-size", 58: "renewal-t1", 59: "rebinding-t2", 60: "vendor-class",
    61: "client-id", 66: "tftp-server", 67: "bootfile", 77: "user-class",
    82: "relay-agent", 93: "client-arch", 94: "client-ndi", 97: "client-uuid",
    175: "ipxe-encap",
}  # fmt: skip
IPXE_NO_PXEDHCP = 176  # iPXE sub-option of 175: skip waiting for ProxyDHCP


class DhcpDecodeError(ValueError):
    """The peer sent bytes that are not a well-formed DHCP message."""


@dataclass(frozen=True)
class DhcpPacket:
    """One DHCP message. ``options`` maps code -> raw value (concatenated)."""

    op: int
    xid: int
    chaddr: str  # "52:54:00:12:34:56" (first hlen bytes of the field)
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: str = ZERO_IP
    yiaddr: str = ZERO_IP
    siaddr: str = ZERO_IP
    giaddr: str = ZERO_IP
    sname: str = ""
    file: str = ""
    options: dict[int, bytes] = field(default_factory=dict)

    # -- typed option readers -------------------------------------------------
    def opt(self, code: int) -> bytes | None:
        return self.options.get(code)

    @property
    def message_type(self) -> int | None:
        v = self.options.get(Opt.MESSAGE_TYPE)
        return v[0] if v else None

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)

    def ip_opt(self, code: int) -> str | None:
        v = self.options.get(code)
        return socket.inet_ntoa(v) if v is not None and len(v) == 4 else None

    def text_opt(self, code: int) -> str | None:
        v = self.options.get(code)
        return None if v is None else v.rstrip(b"\x00").decode("latin-1")

    @property
    def client_arch(self) -> int | None:
        """RFC 4578 section 2.1: a list of 16-bit types; the first one counts."""
        v = self.options.get(Opt.CLIENT_ARCH)
        return struct.unpack_from("!H", v)[0] if v and len(v) >= 2 else None

    @property
    def client_uuid(self) -> str | None:
        """RFC 4578 section 2.3: type 0 followed by a 16-byte GUID."""
        v = self.options.get(Opt.CLIENT_UUID)
        if v is None or len(v) != 17 or v[0] != 0:
            return None
        return str(_uuid.UUID(bytes=v[1:]))

    @property
    def user_classes(self) -> tuple[str, ...]:
        v = self.options.get(Opt.USER_CLASS)
        return () if v is None else parse_user_class(v)

    def suboptions(self, code: int) -> dict[int, bytes]:
        """Encapsulated options (43, 82, 175); malformed content raises."""
        v = self.options.get(code)
        return {} if v is None else parse_suboptions(v)


def parse_user_class(value: bytes) -> tuple[str, ...]:
    """RFC 3004 section 4: length-prefixed items; else the plain form ("iPXE")."""
    items, i = [], 0
    while i < len(value):
        n = value[i]
        if n == 0 or i + 1 + n > len(value):
            return (value.decode("latin-1"),)
        items.append(value[i + 1 : i + 1 + n].decode("latin-1"))
        i += 1 + n
    return tuple(items) if items else (value.decode("latin-1"),)


def parse_suboptions(value: bytes) -> dict[int, bytes]:
    """Code/length/value triplets as used by options 43, 82 and 175."""
    out: dict[int, bytes] = {}
    i, end = 0, len(value)
    while i < end:
        code = value[i]
        if code == Opt.END:
            break
        if code == Opt.PAD:
            i += 1
            continue
        if i + 1 >= end or i + 2 + value[i + 1] > end:
            raise DhcpDecodeError(f"sub-option {code} runs past the end of its option")
        n = value[i + 1]
        out[code] = out.get(code, b"") + value[i + 2 : i + 2 + n]
        i += 2 + n
    return out


def encode_suboptions(subs: dict[int, bytes]) -> bytes:
    return b"".join(bytes((c, len(v))) + v for c, v in subs.items()) + b"\xff"


def _parse_options(buf: bytes, start: int, end: int, into: dict[int, bytes], where: str) -> None:
    """RFC 2132 section 2 TLVs; RFC 3396: a repeated code concatenates."""
    i = start
    while i < end:
        code = buf[i]
        if code == 255:  # Opt.END
            return
        if code == 0:  # Opt.PAD
            i += 1
            continue
        if i + 1 >= end:
            raise DhcpDecodeError(f"option {code} in {where} has no length byte")
        j = i + 2 + buf[i + 1]
        if j > end:
            raise DhcpDecodeError(
                f"option {code} in {where}: length {buf[i + 1]} runs past the end"
            )
        if code in into:
            into[code] += buf[i + 2 : j]
        else:
            into[code] = buf[i + 2 : j]
        i = j
    if where == "options":
        raise DhcpDecodeError("options area has no end option (255)")


def _cstr(raw: bytes) -> str:
    if not raw[0]:
        return ""  # the usual empty sname/file field
    return raw.split(b"\x00", 1)[0].decode("latin-1")


_ZERO4 = bytes(4)
FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s")  # the header up to sname (44 bytes)
_new, _set = object.__new__, object.__setattr__


def _ntoa(raw: bytes) -> str:
    return ZERO_IP if raw == _ZERO4 else socket.inet_ntoa(raw)


def decode(buf: bytes) -> DhcpPacket:
    """Parse one DHCP message; raise :class:`DhcpDecodeError` if malformed.

    The packet is built by filling a new instance's ``__dict__`` in one step:
    the frozen dataclass's own ``__init__`` (15 ``object.__setattr__`` calls)
    cost 2.3 us of a 5 us decode on this machine, against 0.5 us this way;
    the result is the same frozen, comparable :class:`DhcpPacket`.
    """
    if len(buf) < MIN_SIZE:
        raise DhcpDecodeError(f"truncated: {len(buf)} bytes, a DHCP message has at least 240")
    if buf[236:240] != MAGIC:
        raise DhcpDecodeError("bad magic cookie (RFC 2131 section 3)")
    op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, ch = FIXED.unpack_from(buf)
    if op != BOOTREQUEST and op != BOOTREPLY:
        raise DhcpDecodeError(f"op {op} is neither BOOTREQUEST nor BOOTREPLY")
    if hlen > 16:
        raise DhcpDecodeError(f"hlen {hlen} exceeds the 16-byte chaddr field")
    options: dict[int, bytes] = {}
    _parse_options(buf, MIN_SIZE, len(buf), options, "options")
    overload = options.get(Opt.OVERLOAD)
    sname = file = ""
    if overload is not None:  # RFC 2132 section 9.3: file first, then sname
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise DhcpDecodeError(f"option 52 (overload) has bad value {overload.hex()}")
        if overload[0] & 1:
            _parse_options(buf, 108, 236, options, "file")
        if overload[0] & 2:
            _parse_options(buf, 44, 108, options, "sname")
    if buf[44] and not (overload and overload[0] & 2):
        sname = _cstr(buf[44:108])
    if buf[108] and not (overload and overload[0] & 1):
        file = _cstr(buf[108:236])
    p = _new(DhcpPacket)
    _set(p, "__dict__", {
        "op": op, "xid": xid, "chaddr": ch[:hlen].hex(":"), "htype": htype, "hlen": hlen,
        "hops": hops, "secs": secs, "flags": flags, "ciaddr": _ntoa(ci), "yiaddr": _ntoa(yi),
        "siaddr": _ntoa(si), "giaddr": _ntoa(gi), "sname": sname, "file": file,
        "options": options,
    })  # fmt: skip
    return p


def encode_options(options: dict[int, bytes]) -> bytes:
    """TLVs in insertion order; values over 255 bytes split per RFC 3396."""
    out = bytearray()
    for code, value in options.items():
        if not value:
            out += bytes((code, 0))
        for i in range(0, len(value), 255):
            chunk = value[i : i + 255]
            out += bytes((code, len(chunk))) + chunk
    out.append(Opt.END)
    return bytes(out)


def encode(p: DhcpPacket, min_size: int = 300) -> bytes:
    """Serialise; padded to ``min_size`` (BOOTP relays drop shorter messages)."""
    head = HEADER.pack(
        p.op,
        p.htype,
        p.hlen,
        p.hops,
        p.xid,
        p.secs,
        p.flags,
        socket.inet_aton(p.ciaddr),
        socket.inet_aton(p.yiaddr),
        socket.inet_aton(p.siaddr),
        socket.inet_aton(p.giaddr),
        bytes.fromhex(p.chaddr.replace(":", "")),
        p.sname.encode("latin-1"),
        p.file.encode("latin-1"),
    )
    buf = head + MAGIC + encode_options(p.options)
    return buf + b"\x00" * (min_size - len(buf)) if len(buf) < min_size else buf


# -- value builders (what servers put into options) ---------------------------
def ip_bytes(*ips: str) -> bytes:
    return b"".join(socket.inet_aton(ip) for ip in ips)


def u32(value: int) -> bytes:
    return struct.pack("!I", value)


# -- readable dump (golden tests, debugging) ----------------------------------
def _show_option(code: int, value: bytes) -> str:
    if code == Opt.MESSAGE_TYPE and len(value) == 1:
        return MESSAGE_TYPES.get(value[0], str(value[0]))
    if code in (1, 3, 6, 50, 54) and value and len(value) % 4 == 0:
        return ", ".join(socket.inet_ntoa(value[i : i + 4]) for i in range(0, len(value), 4))
    if code in (51, 58, 59) and len(value) == 4:
        return str(struct.unpack("!I", value)[0])
    if code == Opt.MAX_SIZE and len(value) == 2:
        return str(struct.unpack("!H", value)[0])
    if code == Opt.CLIENT_ARCH and value and len(value) % 2 == 0:
        return " ".join(str(n) for (n,) in struct.iter_unpack("!H", value))
    if code == Opt.CLIENT_UUID and len(value) == 17 and value[0] == 0:
        return str(_uuid.UUID(bytes=value[1:]))
    if code == Opt.PARAM_REQUEST:
        return " ".join(str(b) for b in value)
    if code in (12, 15, 56, 60, 66, 67) and all(32 <= b < 127 for b in value):
        return repr(value.decode("ascii"))
    if code == Opt.USER_CLASS:
        return repr(parse_user_class(value))
    if code in (43, 82, 175):
        try:
            subs = parse_suboptions(value)
        except DhcpDecodeError:
            return value.hex()
        return "{" + ", ".join(f"{c}: {v.hex()}" for c, v in subs.items()) + "}"
    return value.hex()


def dump(p: DhcpPacket) -> str:
    """A stable human-readable text form, one field per line."""
    kind = MESSAGE_TYPES.get(p.message_type or 0, "BOOTP")
    lines = [
        f"op: {'BOOTREQUEST' if p.op == BOOTREQUEST else 'BOOTREPLY'} ({kind})",
        f"htype: {p.htype} hlen: {p.hlen} hops: {p.hops}",
        f"xid: 0x{p.xid:08x} secs: {p.secs} flags: 0x{p.flags:04x}",
        f"ciaddr: {p.ciaddr} yiaddr: {p.yiaddr} siaddr: {p.siaddr} giaddr: {p.giaddr}",
        f"chaddr: {p.chaddr}",
        f"sname: {p.sname!r}",
        f"file: {p.file!r}",
    ]
    for code, value in p.options.items():
        name = OPTION_NAMES.get(code, "unknown")
        lines.append(f"option {code} {name}: {_show_option(code, value)}")
    return "\n".join(lines) + "\n"
