"""DHCP service against busybox udhcpc in network namespaces (full mode, durability).

The service runs as ``python -m provisiond.standalone dhcp`` inside the lab's server namespace
with a real SQLite file database; clients are busybox ``udhcpc`` in their own
namespaces, reporting what they got through a script that prints its env.
"""

from __future__ import annotations

import sys

import pytest

from provisiond import config, logs, pxesettings
from provisiond.db import Database
from provisiond.leases import SqlLeaseStore
from pxe.dhcp.__main__ import BootEveryone
from pxe.dhcp.server import DhcpService, DhcpStartError
from tests.dhcplab import (  # noqa: F401  (script: a fixture)
    MAC1,
    MAC2,
    REPO,
    SCRIPT,
    Server,
    leases,
    script,
    udhcpc,
    write_config,
)
from tests.netlab import Lab

pytestmark = pytest.mark.interop


def test_pxe_client_gets_lease_boot_file_and_keeps_it_across_kill9(tmp_path, script):  # noqa: F811
    with Lab("dhcpu") as lab:
        c1 = lab.add_client(MAC1)
        c2 = lab.add_client(MAC2)
        server = Server(lab, write_config(tmp_path, lab))
        pxe = ["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"]
        got = udhcpc(c1, script, *pxe)
        assert got["ip"].startswith(f"{lab.net}.1") and got["router"] == lab.server_ip
        assert (got["boot_file"], got["siaddr"]) == ("undionly.kpxe", lab.server_ip)
        assert leases(tmp_path)[got["ip"]] == (MAC1, "bound")

        server.kill9()
        server = Server(lab, write_config(tmp_path, lab))
        assert udhcpc(c1, script)["ip"] == got["ip"]  # same MAC, same address
        other = udhcpc(c2, script, "-r", got["ip"])  # asks for it, must not get it
        assert other["ip"] != got["ip"] and other["boot_file"] == ""
        stats = server.stop()
        assert stats["acked"] == 2 and stats["offered"] == 2


def test_garbage_then_valid_discover_still_served(tmp_path, script):  # noqa: F811
    with Lab("dhcpg") as lab:
        c1 = lab.add_client(MAC1)
        server = Server(lab, write_config(tmp_path, lab))
        garbage = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1);"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'eth0');"
            "[s.sendto(p, ('255.255.255.255', 67)) for p in"
            " (b'', b'x' * 100, b'\\x01' * 300, bytes(236) + b'\\x63\\x82\\x53\\x63\\x35\\xff')]"
        )
        c1.run([sys.executable, "-c", garbage])
        got = udhcpc(c1, script, "-x", "hostname:../../etc/x")
        assert got["ip"].startswith(lab.net)
        stats = server.stop()
        assert stats["dropped_malformed"] == 4 and stats["acked"] == 1
        assert "malformed" in (tmp_path / "server.log").read_text()


@pytest.mark.parametrize(
    "interface, words",
    [("", "interface' is empty"), ("nosuchnic9", "cannot listen on nosuchnic9")],
)
def test_start_fails_clearly(tmp_path, interface, words):
    cfg = config.parse(
        f'interface = "{interface}"\nstate_dir = "{tmp_path}"\n'
        '[[subnet]]\ncidr = "10.99.0.0/24"\nrange = ["10.99.0.10", "10.99.0.20"]\n'
    )
    db = Database(cfg.database_url)
    db.migrate()
    with pytest.raises(DhcpStartError, match=words):
        DhcpService(
            pxesettings.dhcp(cfg), BootEveryone(), SqlLeaseStore(db, logs.get("dhcp"))
        ).start()
