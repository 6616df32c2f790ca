"""Fixtures for QEMU test-bed tests: a private test bed per test, boot assets.

Owns the skip rules (root, QEMU, iPXE ROMs, dnsmasq-base, nsenter, curl, a
kernel: each skip names what is missing and how to install it) and builds the
agent kernel + initrd once per session: the real agent initrd
(``initrd/build.sh``) when present, else the throwaway busybox one
(``vm-testbed/mkinitramfs.sh``). Every test bed is torn down by its context
manager, also when the test fails.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "vm-testbed"))

from bootfiles import BootFiles  # noqa: E402
from testbed import Testbed  # noqa: E402
from vm import missing_prerequisites  # noqa: E402

_ids = itertools.count(1)
# Console lines that mean "the agent registered": real agent | throwaway initrd
AGENT_UP = r"PROVISIOND-AGENT-UP|IDLE-AGENT-UP"

TOOLS = {
    "dnsmasq": "dnsmasq-base",
    "nsenter": "util-linux",
    "curl": "curl",
    "busybox": "busybox-static",
    "cpio": "cpio",
}


def skip_reason() -> str | None:
    why = missing_prerequisites()
    why += [f"{t} not installed (apt-get install {pkg})" for t, pkg in TOOLS.items()
            if not shutil.which(t)]  # fmt: skip
    if not sorted(Path("/boot").glob("vmlinuz-*")):
        why.append("no kernel in /boot (apt-get install linux-image-amd64)")
    return "; ".join(why) or None


@pytest.fixture(scope="session")
def testbed_ready() -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason=f"QEMU test bed unavailable: {reason}")


@dataclass(frozen=True)
class BootAssets(BootFiles):
    real_agent: bool  # initrd/build.sh (True) or vm-testbed/mkinitramfs.sh


@pytest.fixture(scope="session")
def boot_assets(testbed_ready, tmp_path_factory) -> BootAssets:
    out = tmp_path_factory.mktemp("boot-assets")
    build = REPO / "initrd" / "build.sh"
    if build.exists():
        run = subprocess.run(["bash", str(build), "--out", str(out)], capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        if run.returncode == 0 and (out / "initrd.img").exists():
            return BootAssets(out, real_agent=True)
        sys.stderr.write(f"initrd/build.sh failed, using the throwaway initrd:\n{run.stderr}\n")
    subprocess.run([str(REPO / "vm-testbed" / "mkinitramfs.sh"), str(out / "initrd.img")],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    kernel = sorted(Path("/boot").glob("vmlinuz-*"))[-1]
    shutil.copy(kernel, out / "vmlinuz")
    return BootAssets(out, real_agent=False)


def unique_ns() -> str:
    return f"tbt{os.getpid() % 100000}x{next(_ids)}"


@pytest.fixture
def testbed(testbed_ready, tmp_path):
    """A fresh test bed (own namespace); everything is removed afterwards."""
    with Testbed(tmp_path / "tb", ns_name=unique_ns()) as tb:
        yield tb


def agent_script(tb: Testbed, anchor_url: str, extra: str = "") -> str:
    """The iPXE script the anchor serves: agent kernel + initrd, registering at anchor_url."""
    return (
        "#!ipxe\n"
        "echo IPXE-SCRIPT-LOADED ${net0/mac} ${net0/ip}\n"
        f"kernel {anchor_url}/vmlinuz console=ttyS0,115200 quiet loglevel=3 "
        f"BOOTIF=01-${{net0/mac:hexhyp}} provisiond.url={anchor_url} action=wait {extra}\n"
        f"initrd {anchor_url}/initrd.img\n"
        "boot\n"
    )
