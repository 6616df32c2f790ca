"""DHCP servers in a tests/netlab.py Lab, for interop tests.

Owns running the DHCP service alone (``python -m provisiond.standalone dhcp``)
in a lab's server namespace from a config written for that lab, the busybox
udhcpc client script and call, and reading the lease table back.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from provisiond.db import Database
from provisiond.model import Lease
from tests.netlab import Lab

REPO = Path(__file__).resolve().parents[1]
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
        with db.transaction() as s:
            return {r.ip: (r.mac, r.state) for r in s.execute(select(Lease)).scalars()}
    finally:
        db.dispose()
