"""Crafted DHCP requests for the DHCP unit tests (built with scapy, not our codec)."""

from __future__ import annotations

import struct

from scapy.layers.dhcp import BOOTP, DHCP

MAC = "52:54:00:12:34:56"
UUID = bytes.fromhex("00") + bytes(range(16))


def bootp(options: list, mac: str = MAC, **header) -> bytes:
    header.setdefault("xid", 0x2A2A2A2A)
    chaddr = bytes.fromhex(mac.replace(":", ""))
    return bytes(BOOTP(op=1, chaddr=chaddr, **header) / DHCP(options=[*options, "end"]))


def pxe(kind: str, arch: int, vendor: str = "PXEClient", extra: list = (), **kw) -> bytes:
    return bootp(
        [
            ("message-type", kind),
            ("max_dhcp_size", 1464),
            ("param_req_list", [1, 3, 6, 12, 15, 43, 60, 66, 67, 93, 94, 97, 175]),
            ("vendor_class_id", f"{vendor}:Arch:{arch:05d}:UNDI:003016".encode()),
            ("pxe_client_architecture", struct.pack("!H", arch)),
            ("pxe_client_network_interface", b"\x01\x03\x10"),
            ("pxe_client_machine_identifier", UUID),
            *extra,
        ],
        **kw,
    )


def ipxe(kind: str = "discover", extra: list = (), **kw) -> bytes:
    return bootp(
        [
            ("message-type", kind),
            ("user_class", b"iPXE"),
            (175, b"\x13\x01\x01\x27\x01\x01\xeb\x03\x01\x15\x03"),  # http, https, version
            ("pxe_client_architecture", b"\x00\x07"),
            ("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003010"),
            ("hostname", b"node-7"),
            *extra,
        ],
        **kw,
    )


def plain(kind: str = "discover", extra: list | None = None, **kw) -> bytes:
    return bootp([("message-type", kind), *(extra or [])], **kw)


def overloaded() -> bytes:
    """Option 52 = 3: options continue in the file, then the sname field."""
    head = struct.pack("!BBBBIHH", 1, 1, 6, 0, 0x0B0B0B0B, 0, 0) + bytes(16)
    head += bytes.fromhex(MAC.replace(":", "")) + bytes(10)
    sname = bytes((12, 5)) + b"sname" + b"\xff"
    file = bytes((60, 9)) + b"PXEClient" + bytes((93, 2, 0, 0)) + b"\xff"
    body = head + sname.ljust(64, b"\0") + file.ljust(128, b"\0") + b"\x63\x82\x53\x63"
    return body + bytes((53, 1, 1, 52, 1, 3, 255))


def relayed_request() -> bytes:
    return bootp(
        [
            ("message-type", "request"),
            ("requested_addr", "10.9.0.50"),
            ("server_id", "10.9.0.1"),
            ("client_id", b"\x01" + bytes.fromhex(MAC.replace(":", ""))),
            ("relay_agent_information", b"\x01\x04eth3\x02\x06switch"),
        ],
        giaddr="10.9.0.254",
        hops=1,
    )


def rfc3004_user_class() -> bytes:
    return bootp([("message-type", "discover"), ("user_class", b"\x04iPXE\x03lab")])


# name -> bytes: each has tests/unit/golden/dhcp/<name>.txt
GOLDEN = {
    "pxe_bios_discover": lambda: pxe("discover", 0),
    "pxe_uefi_x64_request": lambda: pxe("request", 7, extra=[("requested_addr", "10.9.0.20")]),
    "uefi_http_discover": lambda: pxe("discover", 16, vendor="HTTPClient"),
    "ipxe_discover": ipxe,
    "relayed_request": relayed_request,
    "overloaded_options": overloaded,
    "user_class_rfc3004": rfc3004_user_class,
    "long_client_id": lambda: plain(extra=[("client_id", bytes(range(255)))]),
}
