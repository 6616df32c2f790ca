"""A packet capture of DHCP on one interface: stdlib raw socket, JSON lines out.

Owns nothing but the wire log a test reads afterwards: every IPv4/UDP frame
to or from ports 67, 68 or 4011 seen on the interface (e.g. the test bed's
``br0``, inside its namespace) becomes one line ``{"t", "src", "sport",
"dst", "dport", "bootp"}`` with the BOOTP payload in hex. tcpdump is not
installed on these hosts; an AF_PACKET socket needs only root.

    python3 dhcp_capture.py br0 /path/dhcp.jsonl     # until SIGTERM
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import time

ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC = 263, 1, 1  # <linux/if_packet.h>
PORTS = {67, 68, 4011}


def parse(frame: bytes) -> dict | None:
    """The DHCP/BOOTP datagram of one Ethernet frame, or None."""
    if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[23] != socket.IPPROTO_UDP:
        return None
    udp = 14 + ihl
    sport, dport, length = struct.unpack_from("!HHH", frame, udp)
    if sport not in PORTS and dport not in PORTS:
        return None
    return {
        "t": round(time.time(), 3),
        "src": socket.inet_ntoa(frame[26:30]),
        "sport": sport,
        "dst": socket.inet_ntoa(frame[30:34]),
        "dport": dport,
        "bootp": frame[udp + 8 : udp + length].hex(),
    }


def capture(iface: str, out_path: str) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    # promiscuous: a bridge passes frames between its ports up to itself only then
    mreq = struct.pack("iHH8s", socket.if_nametoindex(iface), PACKET_MR_PROMISC, 0, b"")
    s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(out_path, "a", buffering=1) as out:
        while True:
            frame = s.recv(65535)
            row = parse(frame)
            if row is not None:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    capture(sys.argv[1], sys.argv[2])
