"""DHCP service against busybox udhcpc in network namespaces (full mode, durability).

The service runs as ``python -m provisiond.standalone dhcp`` inside the lab's server namespace
with a real SQLite file database; clients are busybox ``udhcpc`` in their own
namespaces, reporting what they got through a script that prints its env.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from provisiond import config, logs, pxesettings
from provisiond.db import Database
from provisiond.leases import SqlLeaseStore
from provisiond.model import Lease
from pxe.dhcp.__main__ import BootEveryone
from pxe.dhcp.server import DhcpService, DhcpStartError
from tests.netlab import Lab

pytestmark = pytest.mark.interop
REPO = Path(__file__).resolve().parents[2]
MAC1, MAC2 = "52:54:00:aa:00:01", "52:54:00:aa:00:02"
SCRIPT = '#!/bin/sh\n[ "$1" = bound ] && echo "BOUND ip=$ip router=$router boot_file=$boot_file siaddr=$siaddr"\nexit 0\n'  # noqa: E501


def write_config(tmp: Path, lab: Lab, mode: str = "full", extra: str = "") -> Path:
    rng = f'range = ["{lab.net}.100", "{lab.net}.150"]\n' if mode == "full" else ""
    cfg = tmp / "provisiond.toml"
    cfg.write_text(
        f'interface = "br0"\naddress = "{lab.server_ip}"\nstate_dir = "{tmp}"\n'
        f'database_url = "sqlite:///{tmp}/p.db"\nlog_level = "debug"\n{extra}'
        f'[[subnet]]\ncidr = "{lab.cidr}"\nmode = "{mode}"\n{rng}'
        f'router = "{lab.server_ip}"\nlease_time = 600\n'
    )
    return cfg


class Server:
    """``python -m provisiond.standalone dhcp`` in the lab's server namespace."""

    def __init__(self, lab: Lab, cfg: Path) -> None:
        self.proc = lab.server.popen(
            [sys.executable, "-m", "provisiond.standalone", "dhcp", str(cfg)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=open(cfg.parent / "server.log", "a"),  # noqa: SIM115
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line.strip() == "READY", (cfg.parent / "server.log").read_text()[-3000:]

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=5)
        return json.loads(out.strip().splitlines()[-1])


def udhcpc(client, script: Path, *args: str) -> dict[str, str]:
    r = client.run(
        ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "4", "-T", "1",
         "-s", str(script), *args],
        check=False, timeout=30,
    )  # fmt: skip
    line = next((x for x in r.stdout.splitlines() if x.startswith("BOUND")), "")
    assert line, f"udhcpc got no lease: {r.stdout}\n{r.stderr}"
    return dict(kv.split("=", 1) for kv in line.split()[1:])


@pytest.fixture
def script(tmp_path) -> Path:
    s = tmp_path / "udhcpc.sh"
    s.write_text(SCRIPT)
    s.chmod(0o755)
    return s


def leases(tmp: Path) -> dict[str, tuple[str, str]]:
    db = Database(f"sqlite:///{tmp}/p.db")
    try:
        with db.session() as s:
            return {r.ip: (r.mac, r.state) for r in s.execute(select(Lease)).scalars()}
    finally:
        db.dispose()


def test_pxe_client_gets_lease_boot_file_and_keeps_it_across_kill9(tmp_path, script):
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


def test_garbage_then_valid_discover_still_served(tmp_path, script):
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
