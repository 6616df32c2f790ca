"""One request in, at most one reply out: the DHCP decisions, without sockets.

Owns the serve pipeline after decoding (filter -> pick subnet -> detect
firmware -> ask the BootPolicy -> allocate -> build reply -> choose
destination), for full mode (RFC 2131 section 4.3) and proxyDHCP (PXE spec
2.1 section 2.2, RFC 4578). The socket layer (``server``) sends the reply,
after the lease rows in ``Reply.durable`` have committed.

Replies are built from per-subnet byte templates prepared once, so the hot
path does one ``struct.pack`` and a few concatenations. For a plain client
(no boot file: an OS, perfdhcp) everything after the first 44 header bytes
of an OFFER/ACK (sname, file, cookie, options, padding) is one cached byte
string per subnet and kind; the subnet of a relay address is looked up once.
Measured (decode + handle of a relayed DISCOVER and REQUEST, CPU time, best
of 7 loops of 10,000 on this 2-core VM under load): 10.3 + 10.5 us before
these caches and the one-step decode, 6.9 + 7.1 us after.

A proxyDHCP answer (port 67 OFFER, port 4011 ACK) is one shape for every
boot client, checked against iPXE ``src/net/udp/dhcp.c`` and dnsmasq's
``--dhcp-range=...,proxy`` answers (tests/interop/test_dhcp_proxy_diff.py):
option 60 ``PXEClient`` (``HTTPClient`` for UEFI HTTP boot), option 54, no
yiaddr, siaddr = next-server = us, the boot file in ``file`` and option 67,
and option 43 PXE_DISCOVERY_CONTROL = 8 (PXE spec 2.1 section 2.2.5: use
the boot file, no boot-server discovery) for BIOS PXE ROMs and iPXE. iPXE
only keeps an address-less offer that has option 60 ``PXEClient``, and uses
it without a port 4011 REQUEST only when siaddr *and* a file name are set
(``dhcp_has_pxeopts``); its 4011 REQUEST accepts only answers from source
port 4011 with the same server-id and those same fields. Option 175 is left
out: iPXE reads no-pxedhcp only from the offer that carries an address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from socket import inet_aton

from pxe.boot import Architecture, BootPolicy, Firmware
from pxe.dhcp import bootfile
from pxe.dhcp import codec as c
from pxe.dhcp.bootfile import BootFile
from pxe.dhcp.codec import ZERO_IP, DhcpPacket, Opt, encode_options, ip_bytes, u32
from pxe.dhcp.pool import LeaseRow, Pool, find
from pxe.settings import DhcpSettings

BROADCAST = "255.255.255.255"
NOWHERE = ("", 0)  # Reply.dest of a reply that only carries lease rows
KIND = {c.OFFER: "offered", c.ACK: "acked", c.NAK: "nak"}
IPXE_OPTS = {Opt.IPXE_ENCAP: bytes((c.IPXE_NO_PXEDHCP, 1, 1))}  # 175 { 176 = 1 }
PXE_VENDOR_OPTS = {Opt.VENDOR_SPECIFIC: c.encode_suboptions({6: b"\x08"})}  # use file, no menu


def _pxe_vendor_options(fw: Firmware, arch: Architecture, bf: BootFile, proxy: bool) -> bool:
    """Option 43 (PXE_DISCOVERY_CONTROL = 8: use the file, no boot-server menu)?

    Full mode: BIOS PXE ROMs and every TFTP boot file. Proxy mode: BIOS PXE
    ROMs and iPXE, not UEFI PXE: like dnsmasq, an answer without option 43
    is a "BINL" proxy offer to EDK2, which then asks again on port 4011 (a
    PXE 1.0 offer with option 43 it would take as it is; both boot).
    """
    if proxy:
        return fw is Firmware.IPXE or fw is Firmware.PXE_BIOS
    return bf.vendor_class == bootfile.PXE_CLIENT and (arch is Architecture.BIOS or bf.tftp)


_SNAME = bytes(64)


def _tail(file: bytes, opts: bytes) -> bytes:
    """A reply after its first 44 bytes: sname, file, cookie, options, end, padding.

    Padded to 300 bytes in all (BOOTP relays drop shorter messages).
    """
    tail = _SNAME + file.ljust(128, b"\x00") + c.MAGIC + opts + b"\xff"
    return tail + b"\x00" * (256 - len(tail)) if len(tail) < 256 else tail


@dataclass(frozen=True)
class Reply:
    kind: int  # OFFER / ACK / NAK; 0 = nothing to send, only ``durable`` rows
    data: bytes
    dest: tuple[str, int]
    durable: tuple[LeaseRow, ...] = ()  # must commit before ``data`` leaves


@dataclass(frozen=True)
class Boot:
    """What a boot-capable client gets besides its address."""

    file: BootFile
    options: bytes  # encoded 60/66/67/43 and, in full mode, 175 (no end option)
    proxy: bool  # a proxyDHCP answer: siaddr is always us


class Handler:
    """Decisions for one daemon. ``count(key)`` receives every outcome."""

    def __init__(
        self,
        settings: DhcpSettings,
        policy: BootPolicy,
        pools: list[Pool],
        count: Callable[[str], None],
        client_port: int = 68,
    ) -> None:
        self.settings, self.policy, self.pools, self.count = settings, policy, pools, count
        self.address = str(settings.address)
        self.client_port = client_port
        self.relay_port = settings.port
        self.local = find(pools, self.address)
        self._sid = encode_options({Opt.SERVER_ID: ip_bytes(self.address)})[:-1]
        self._templates = {id(p): self._template(p) for p in pools}
        self._relays: dict[str, Pool | None] = {}  # giaddr -> its subnet (bounded, see _subnet)
        self._tails: dict[tuple[int, int, bool], bytes] = {}  # plain replies after byte 44

    # -- entry point ------------------------------------------------------
    def handle(
        self, p: DhcpPacket, now: float, source: tuple[str, int] | None = None
    ) -> Reply | None:
        """Decide; ``source`` is set for requests that came to the proxy port 4011."""
        if p.op != c.BOOTREQUEST:
            return self._drop("dropped_not_request")
        if p.htype != 1 or p.hlen != 6:
            return self._drop("dropped_bad_hlen")
        mt = p.options.get(Opt.MESSAGE_TYPE)  # p.message_type, without a property call
        if not mt:
            return self._drop("ignored_bootp")
        mt = mt[0]
        pool = self._subnet(p)
        if pool is None:
            return self._drop("ignored_foreign_subnet")  # never NAK a network we do not own
        proxy = source is not None or pool.subnet.mode == "proxy"
        boot = self._boot(p, proxy)
        if boot is False:
            return self._drop("ignored_policy")
        if proxy:
            return self._proxy(p, mt, boot, source)
        return self._full(p, mt, pool, boot, now)

    def _drop(self, reason: str) -> None:
        self.count(reason)
        return None

    def _subnet(self, p: DhcpPacket) -> Pool | None:
        """RFC 2131 section 4.3.1: giaddr names the client's subnet, else our link."""
        gi = p.giaddr
        if gi == ZERO_IP:
            return self.local
        try:
            return self._relays[gi]
        except KeyError:
            if len(self._relays) > 1024:  # relay addresses are few; never let spoofs grow this
                self._relays.clear()
            pool = self._relays[gi] = find(self.pools, gi)
            return pool

    def _boot(self, p: DhcpPacket, proxy: bool) -> Boot | bool | None:
        """None: plain DHCP client; False: the policy says ignore it."""
        fw = bootfile.detect(p)
        if fw is None:
            return None
        machine = bootfile.machine(p, fw)
        if self.policy.boot_spec(machine) is None:
            return False
        bf = bootfile.choose(fw, machine.arch, machine.mac, self.settings.http_base)
        if bf is None:
            self.count("no_boot_file")
            return None
        return Boot(bf, self._boot_options(fw, machine.arch, bf, proxy), proxy)

    def _boot_options(self, fw: Firmware, arch: Architecture, bf: BootFile, proxy: bool) -> bytes:
        """60/66/67/43/175 for one client; see the module docstring for proxy answers."""
        opts: dict[int, bytes] = {}
        vendor = bf.vendor_class or (bootfile.PXE_CLIENT if proxy else "")
        if vendor:
            opts[Opt.VENDOR_CLASS] = vendor.encode()
        if bf.tftp:
            opts[Opt.TFTP_SERVER] = self.address.encode()
        opts[Opt.BOOTFILE] = bf.name.encode()
        if fw is Firmware.IPXE and not proxy:
            opts.update(IPXE_OPTS)
        elif _pxe_vendor_options(fw, arch, bf, proxy):
            opts.update(PXE_VENDOR_OPTS)
        return encode_options(opts)[:-1]

    # -- full mode (RFC 2131 section 4.3) ---------------------------------
    def _full(self, p: DhcpPacket, mt: int, pool: Pool, boot: Boot | None, now: float):
        if mt == c.DISCOVER:
            ip = pool.choose(p.chaddr, p.ip_opt(Opt.REQUESTED_IP), now)
            if ip is None:
                return self._drop("pool_exhausted")
            pool.offer(p.chaddr, ip, now)
            return self._reply(p, c.OFFER, pool, ip, boot)
        if mt == c.REQUEST:
            return self._request(p, pool, boot, now)
        if mt == c.DECLINE:
            return self._decline(p, pool, now)
        if mt == c.RELEASE:
            return self._release(p, pool, now)
        if mt == c.INFORM:
            return self._reply(p, c.ACK, pool, ZERO_IP, boot, inform=True)
        return self._drop("ignored_message_type")

    def _request(self, p: DhcpPacket, pool: Pool, boot: Boot | None, now: float):
        server_id, requested = p.ip_opt(Opt.SERVER_ID), p.ip_opt(Opt.REQUESTED_IP)
        if server_id is not None and server_id != self.address:
            pool.forget_offer(p.chaddr)  # SELECTING another server's offer
            return self._drop("ignored_other_server")
        ip = requested or (p.ciaddr if p.ciaddr != ZERO_IP else None)
        if ip is None:
            return self._drop("ignored_bad_request")
        if pool.contains(ip) and pool.acceptable(p.chaddr, ip, now):
            hostname = bootfile.sanitize_hostname(p.text_opt(Opt.HOSTNAME)) or ""
            rows = pool.bind(p.chaddr, ip, now, hostname)
            return self._reply(p, c.ACK, pool, ip, boot, durable=tuple(rows))
        return self._nak(p, f"address {ip} is not available to {p.chaddr}")

    def _decline(self, p: DhcpPacket, pool: Pool, now: float) -> Reply | None:
        ip = p.ip_opt(Opt.REQUESTED_IP)
        if ip is None or p.ip_opt(Opt.SERVER_ID) != self.address:
            return self._drop("ignored_decline")
        self.count("declined")
        return Reply(0, b"", NOWHERE, tuple(pool.decline(p.chaddr, ip, now)))

    def _release(self, p: DhcpPacket, pool: Pool, now: float) -> Reply:
        self.count("released")
        return Reply(0, b"", NOWHERE, tuple(pool.release(p.chaddr, p.ciaddr, now)))

    # -- proxyDHCP (PXE spec 2.1 section 2.2; RFC 4578) -------------------
    def _proxy(self, p: DhcpPacket, mt: int, boot: Boot | None, source):
        if boot is None:
            return self._drop("ignored_proxy_not_pxe")
        if mt == c.DISCOVER and source is None:
            return self._reply(p, c.OFFER, None, ZERO_IP, boot)
        if mt in (c.REQUEST, c.INFORM) and source is not None:
            return self._reply(p, c.ACK, None, ZERO_IP, boot, dest=source)
        return self._drop("ignored_proxy_message")

    # -- reply building ---------------------------------------------------
    def _template(self, pool: Pool) -> tuple[bytes, bytes]:
        """(options for address replies, options for INFORM) of one subnet."""
        s = pool.subnet
        common: dict[int, bytes] = {Opt.SUBNET_MASK: ip_bytes(str(s.cidr.netmask))}
        if s.router:
            common[Opt.ROUTER] = ip_bytes(str(s.router))
        if s.dns:
            common[Opt.DNS] = ip_bytes(*(str(d) for d in s.dns))
        if s.domain:
            common[Opt.DOMAIN] = s.domain.encode()
        lease = {
            Opt.LEASE_TIME: u32(s.lease_time),
            Opt.RENEWAL_T1: u32(s.lease_time // 2),  # RFC 2131 section 4.4.5
            Opt.REBINDING_T2: u32(s.lease_time * 7 // 8),
        }
        return encode_options(lease | common)[:-1], encode_options(common)[:-1]

    def _reply(
        self,
        p: DhcpPacket,
        kind: int,
        pool: Pool | None,
        yiaddr: str,
        boot: Boot | None,
        durable: tuple[LeaseRow, ...] = (),
        inform: bool = False,
        dest: tuple[str, int] | None = None,
    ) -> Reply:
        if boot is None and pool is not None:  # a plain client: the cached tail
            key = (id(pool), kind, inform)
            tail = self._tails.get(key)
            if tail is None:
                tail = self._tails[key] = _tail(b"", self._options(kind, pool, inform))
            data = self._head(p, yiaddr, ZERO_IP) + tail
        else:
            opts = self._options(kind, pool, inform)
            siaddr, file = ZERO_IP, b""
            if boot is not None:
                opts += boot.options
                if boot.file.tftp or boot.proxy:  # iPXE keeps a proxy answer only with siaddr
                    siaddr = self.address
                if len(boot.file.name) < 128:
                    file = boot.file.name.encode()
            data = self._head(p, yiaddr, siaddr) + _tail(file, opts)
        self.count(KIND[kind])
        return Reply(kind, data, dest or self._dest(p, kind), durable)

    def _options(self, kind: int, pool: Pool | None, inform: bool) -> bytes:
        """53, 54 and the subnet's template (no end option)."""
        opts = bytes((Opt.MESSAGE_TYPE, 1, kind)) + self._sid
        if pool is not None:
            opts += self._templates[id(pool)][1 if inform else 0]
        return opts

    def _nak(self, p: DhcpPacket, why: str) -> Reply:
        opts = bytes((Opt.MESSAGE_TYPE, 1, c.NAK)) + self._sid
        opts += encode_options({Opt.MESSAGE: why.encode()[:255]})[:-1]
        flags = c.FLAG_BROADCAST if p.giaddr != ZERO_IP else 0
        data = self._head(p, ZERO_IP, ZERO_IP, flags=flags, ciaddr=ZERO_IP) + _tail(b"", opts)
        self.count("nak")
        return Reply(c.NAK, data, self._dest(p, c.NAK))

    def _head(self, p: DhcpPacket, yiaddr: str, siaddr: str, flags=None, ciaddr=None) -> bytes:
        """The reply's first 44 bytes (RFC 2131 figure 1, op to chaddr)."""
        return c.FIXED.pack(
            c.BOOTREPLY, 1, 6, 0, p.xid, 0, p.flags if flags is None else flags,
            inet_aton(p.ciaddr if ciaddr is None else ciaddr), inet_aton(yiaddr),
            inet_aton(siaddr), inet_aton(p.giaddr), bytes.fromhex(p.chaddr.replace(":", "")),
        )  # fmt: skip

    def _dest(self, p: DhcpPacket, kind: int) -> tuple[str, int]:
        """RFC 2131 section 4.1: relay, then ciaddr, then broadcast."""
        if p.giaddr != ZERO_IP:
            return (p.giaddr, self.relay_port)
        if kind != c.NAK and p.ciaddr != ZERO_IP:
            return (p.ciaddr, self.client_port)
        return (BROADCAST, self.client_port)
