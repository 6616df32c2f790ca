"""``python -m pxe.dhcp``: the DHCP server alone, on an in-memory lease store, no provisiond.

Owns the proof that ``pxe`` stands on its own ports: the server runs in a
tests/netlab.py Lab with settings from its command line and a
:class:`pxe.dhcp.leases.MemoryLeaseStore`; busybox udhcpc (a BIOS PXE ROM's
vendor class) gets an address and the boot file; at exit the process reports
that no ``provisiond`` module was ever loaded.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netlab import Lab

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]
REPO = Path(__file__).resolve().parents[2]
MAC = "52:54:00:5a:00:01"
UDHCPC = (
    '#!/bin/sh\n[ "$1" = bound ] && echo "BOUND ip=$ip boot_file=$boot_file siaddr=$siaddr"\n'
    "exit 0\n"
)
# run the module as `python -m` would, and say at exit whether provisiond was ever imported
RUN = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('LOADED ' + ' '.join(sorted({m.split('.')[0] for m in "
    "sys.modules if m.split('.')[0] in ('provisiond', 'web', 'storage')})), flush=True))\n"
    "sys.argv = ['pxe.dhcp', *sys.argv[1:]]\n"
    "runpy.run_module('pxe.dhcp', run_name='__main__', alter_sys=True)\n"
)


def test_pxe_dhcp_alone_on_memory_leases(tmp_path):
    if not shutil.which("busybox"):
        pytest.skip(reason="needs busybox (apt-get install busybox-static)")
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC)
    script.chmod(0o755)
    with Lab("pxemem") as lab:
        client = lab.add_client(MAC)
        args = ["--interface", "br0", "--address", lab.server_ip, "--subnet", lab.cidr,
                "--range", f"{lab.net}.100-{lab.net}.110"]  # fmt: skip
        log = tmp_path / "dhcp.log"
        with open(log, "w") as err:
            proc = lab.server.popen([sys.executable, "-c", RUN, *args], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=err, text=True)  # fmt: skip
        try:
            assert proc.stdout.readline().strip() == "READY", log.read_text()
            r = client.run(["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5",
                            "-T", "2", "-V", "PXEClient:Arch:00000:UNDI:002001",
                            "-s", str(script)], check=False, timeout=60)  # fmt: skip
            m = re.search(r"BOUND ip=(\S+) boot_file=(\S*) siaddr=(\S+)", r.stdout)
            assert m, r.stdout + r.stderr + log.read_text()
            assert m.group(1).startswith(f"{lab.net}.1")
            assert (m.group(2), m.group(3)) == ("undionly.kpxe", lab.server_ip)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
        stats_line, loaded = out.strip().splitlines()[-2:]
        stats = json.loads(stats_line)
        assert stats["acked"] == 1 and stats["lease_batches"] >= 1, stats
        assert loaded.strip() == "LOADED", f"pxe.dhcp imported {loaded!r}"


def test_pxe_dhcp_usage_error_names_the_missing_option():
    r = subprocess.run([sys.executable, "-m", "pxe.dhcp", "--interface", "br0"], cwd=REPO,
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2 and "--address" in r.stderr
