"""Wake-on-LAN: a real UDP magic packet crosses a veth link inside private namespaces.

The sender runs in the lab's server namespace (bridge 10.N.0.1/24), the
receiver in a client namespace plugged into that bridge; the receiver reads the
datagram from a socket bound to port 9 and checks it wakes the right MAC.
Nothing leaves the namespaces.
"""

from __future__ import annotations

import socket

import pytest

from provisiond.power import PowerAction, PowerError, PowerSettings, driver_for
from provisiond.power.wol import target_of
from tests.netlab import Lab
from tests.testbed.netns_thread import in_netns

pytestmark = pytest.mark.interop
MAC = "52:54:00:ab:cd:ef"


def receiver(ns: str, port: int = 9) -> socket.socket:
    with in_netns(ns):  # the socket stays in the namespace it was made in
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
    sock.settimeout(5)
    return sock


@pytest.mark.parametrize(
    ("address", "options"),
    [("", {"interface": "br0"}), ("BCAST", {}), ("", {"interface": "br0", "port": 7})],
    ids=["limited-broadcast-on-br0", "directed-broadcast", "port-7"],
)
def test_magic_packet_reaches_the_machine(address, options):
    with Lab("wol") as lab:
        client = lab.add_client(mac=MAC, address=f"{lab.net}.20")
        rx = receiver(client.name, options.get("port", 9))
        try:
            addr = f"{lab.net}.255" if address == "BCAST" else address
            s = PowerSettings(driver="wol", mac=MAC, address=addr, options=options)
            with in_netns(lab.server.name):
                driver_for(s).act(PowerAction.ON)
            data, (src, _port) = rx.recvfrom(2048)
        finally:
            rx.close()
    assert target_of(data) == MAC and len(data) == 102
    assert src == lab.server_ip


def test_no_route_is_a_clear_error():
    with Lab("wolx") as lab:
        s = PowerSettings(driver="wol", mac=MAC, options={"interface": "nosuchif0"})
        with in_netns(lab.server.name), pytest.raises(PowerError, match="nosuchif0"):
            driver_for(s).act(PowerAction.ON)
