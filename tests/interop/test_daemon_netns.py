"""The whole daemon in a private network namespace, met by real client programs.

``provisiond serve`` runs inside a tests/netlab.py Lab (bridge 10.N.0.1/24)
with DHCP (full mode), TFTP, DNS and HTTP all enabled; a client namespace on
the bridge then uses busybox ``udhcpc``, ``atftp``, ``dig`` and ``curl``, as
a PXE-booting machine and an operator would.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from provisiond.db import Database
from provisiond.model import Lease
from tests.daemonlab import PROVISIOND, LabDaemon, lab_config
from tests.netlab import Lab
from tests.pg import private_cluster

pytestmark = pytest.mark.interop
MAC = "52:54:00:ab:cd:01"

UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/${mask:-24}" dev "$interface"
echo "LEASE ip=$ip router=$router dns=$dns boot_file=$boot_file siaddr=$siaddr"
"""


def _needs(*programs: str) -> None:
    for p in programs:
        if not shutil.which(p):
            pytest.skip(reason=f"needs {p} (make test installs it with apt-get)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """The embedded default, and PostgreSQL through the same code (a URL change)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'provisiond.db'}"
    else:
        with private_cluster() as url:
            yield url


@pytest.fixture
def lab_daemon(tmp_path, database_url):
    _needs("busybox", "atftp", "dig", "curl")
    with Lab("daemn") as lab:
        config = lab_config(lab, tmp_path / "state").replace(
            "http_port = 8080", f'http_port = 8080\ndatabase_url = "{database_url}"'
        )
        d = LabDaemon(lab, tmp_path, config)
        d.cli("init")
        d.start()
        try:
            yield lab, [PROVISIOND, "--config", str(d.cfg)], d.proc
        finally:
            d.stop()


def test_pxe_client_dhcp_tftp_dns_http_through_the_daemon(lab_daemon, tmp_path, database_url):
    lab, cli, _proc = lab_daemon
    client = lab.add_client(mac=MAC)
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    # busybox udhcpc as a BIOS PXE client: vendor class PXEClient, arch 0 (option 93)
    out = client.run(["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1",
                      "-s", str(script), "-V", "PXEClient:Arch:00000:UNDI:002001",
                      "-x", "0x5d:0000"], timeout=30).stdout  # fmt: skip
    m = re.search(r"LEASE ip=(\S+) router=(\S+) dns=(\S+) boot_file=(\S*) siaddr=(\S+)", out)
    assert m, out
    ip, router, dns, boot_file, siaddr = m.groups()
    assert ip.startswith(lab.net + ".1") and router == lab.server_ip == dns == siaddr
    assert boot_file == "undionly.kpxe"

    # the lease is durable in the database the daemon shares with the CLI
    db = Database(database_url)
    with db.transaction() as s:
        leases = [(x.ip, x.mac, x.state) for x in s.scalars(select(Lease))]
    db.dispose()
    assert (ip, MAC, "bound") in leases

    # TFTP: the boot file named in the offer, byte for byte
    dest = tmp_path / "undionly.kpxe"
    client.run(["atftp", "--get", "-r", boot_file, "-l", str(dest), lab.server_ip], timeout=30)
    assert dest.read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()

    # HTTP: the iPXE script discovers the resource
    script_text = client.run(["curl", "-sf", f"http://{lab.server_ip}:8080/boot/"
                              f"{MAC.replace(':', '-')}.ipxe"]).stdout  # fmt: skip
    assert script_text.startswith("#!ipxe\n")
    rows = json.loads(subprocess.run([*cli, "resource", "list", "--json"], check=True,
                                     capture_output=True, text=True).stdout)  # fmt: skip
    assert [(r["mac"], r["state"]) for r in rows] == [(MAC, "new")]

    # DNS: the unnamed resource answers as r-<mac> from its lease, and PTR back
    name = "r-" + MAC.replace(":", "") + ".lab.test"
    deadline = time.monotonic() + 10
    answer = ""
    while time.monotonic() < deadline and answer != ip:
        answer = client.run(["dig", f"@{lab.server_ip}", name, "A", "+short", "+time=1"]).stdout
        answer = answer.strip()
        time.sleep(0.3)
    assert answer == ip
    ptr = client.run(["dig", f"@{lab.server_ip}", "-x", ip, "+short"]).stdout.strip()
    assert ptr == name + "."
    refused = client.run(["dig", f"@{lab.server_ip}", "example.com", "A"]).stdout
    assert "status: REFUSED" in refused
