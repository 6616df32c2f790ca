"""Wake-on-LAN: the magic packet that switches a machine on (on only).

Owns the magic packet codec (6 x 0xFF, then the target MAC 16 times; AMD's
"Magic Packet Technology" white paper) and the driver that sends it as one UDP
datagram. The packet goes to the limited broadcast 255.255.255.255 by default,
which routers never forward, so it stays on the resource's own subnet; a
directed broadcast (``address``, e.g. ``10.0.0.255``) and an egress interface
(``options.interface``, SO_BINDTODEVICE) narrow it further. WoL cannot report a
machine's state nor switch it off: ``status`` is ``unknown`` and ``off`` /
``cycle`` raise :class:`NotSupported`.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from provisiond.power import (
    BmcUnreachable,
    NotSupported,
    PowerAction,
    PowerError,
    PowerSettings,
    PowerState,
    register,
)

PORT = 9  # discard; 7 (echo) is the other customary port
_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$", re.I)


def magic_packet(mac: str) -> bytes:
    """The 102-byte magic packet for ``mac`` (``aa:bb:cc:dd:ee:ff``, dashes or bare hex)."""
    if not _MAC.match(mac.strip()):
        raise ValueError(f"{mac!r} is not a MAC address (write it like 52:54:00:12:34:56)")
    raw = bytes.fromhex(re.sub(r"[:-]", "", mac.strip()))
    return b"\xff" * 6 + raw * 16


def target_of(packet: bytes) -> str | None:
    """The MAC a magic packet wakes, or None when ``packet`` is not one."""
    if len(packet) < 102 or packet[:6] != b"\xff" * 6:
        return None
    mac = packet[6:12]
    if packet[6:102] != mac * 16:
        return None
    return ":".join(f"{b:02x}" for b in mac)


class WolDriver:
    def __init__(self, settings: PowerSettings) -> None:
        self.settings = settings
        self.mac = settings.mac
        self.broadcast = settings.address or "255.255.255.255"
        try:
            ipaddress.IPv4Address(self.broadcast)
        except ValueError:
            raise PowerError(
                f"wol: address {self.broadcast!r} must be the subnet's broadcast IPv4 address "
                "(e.g. 10.0.0.255) or empty for 255.255.255.255"
            ) from None
        self.port = int(settings.options.get("port", PORT))
        self.interface = str(settings.options.get("interface", ""))

    def status(self) -> PowerState:
        return PowerState.UNKNOWN

    def act(self, action: PowerAction) -> None:
        if action != PowerAction.ON:
            raise NotSupported(
                f"wol cannot {action} {self.mac}: Wake-on-LAN only switches machines on; "
                "set an ipmi or redfish driver to switch it off"
            )
        try:
            packet = magic_packet(self.mac)
        except ValueError as exc:
            raise PowerError(f"wol: {exc}") from None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            try:
                if self.interface:
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode()
                    )
                sock.sendto(packet, (self.broadcast, self.port))
            except OSError as exc:
                where = f" on {self.interface}" if self.interface else ""
                raise BmcUnreachable(
                    f"wol: cannot send the magic packet for {self.mac} to "
                    f"{self.broadcast}:{self.port}{where}: {exc.strerror or exc}; check the "
                    "interface and that the server has an address on the machine's subnet"
                ) from None


@register("wol")
def _factory(settings: PowerSettings) -> WolDriver:
    return WolDriver(settings)
