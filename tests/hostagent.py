"""The real idle agent as a process on the host, for interop tests and bench/stream.

Owns running ``initrd/rootfs/usr/lib/provisiond/agent`` (busybox sh) in a
client namespace as a stand-in machine: a fake /sys (SYSROOT), a regular
file as its disk (DEVROOT), power actions recorded to a file, and a PATH
that holds exactly what the initrd holds — every busybox applet plus the
``EXTRA_BINS`` of ``initrd/build.sh`` — so a test cannot pass by borrowing a
host tool the initrd lacks.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from tests.agentlab import AGENT_LIB, BUSYBOX, fake_sysroot
from tests.daemonlab import LabDaemon

REPO = Path(__file__).resolve().parents[1]


def initrd_bins() -> list[str]:
    """EXTRA_BINS of initrd/build.sh (its default value)."""
    text = (REPO / "initrd" / "build.sh").read_text()
    m = re.search(r'EXTRA_BINS=\$\{EXTRA_BINS:-"([^"]*)"\}', text)
    return m.group(1).split() if m else []


def initrd_bindir(bindir: Path) -> Path:
    """A directory of what the initrd's PATH offers (busybox applets + EXTRA_BINS)."""
    if bindir.exists():
        return bindir
    bindir.mkdir(parents=True)
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True).stdout
    for applet in applets.split():
        (bindir / applet).symlink_to(BUSYBOX)
    for b in initrd_bins():
        if os.access(b, os.X_OK):
            (bindir / Path(b).name).unlink(missing_ok=True)
            (bindir / Path(b).name).symlink_to(b)
    return bindir


class HostAgent:
    """The agent for ``mac`` in ``client``'s namespace; its disk is ``self.disk``."""

    def __init__(self, d: LabDaemon, client, work: Path, mac: str, disk_size: int,
                 ip: str | None = None, long_poll: int | None = None) -> None:  # fmt: skip
        self.dir, self.disk = work / "agent", work / "devroot" / "dev" / "vda"
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        (self.dir / "run" / "net.env").write_text(f"NET_IP={ip or d.lab.net + '.50'}\n")
        self.disk.parent.mkdir(parents=True, exist_ok=True)
        self.blank_disk(disk_size)
        token = d.boot_token(client, mac)
        cmdline = (f"provisiond.url={d.base} provisiond.agent={d.agent_base} "
                   f"provisiond.token={token} "
                   f"BOOTIF=01-{mac.replace(':', '-')} provisiond.interval=2")  # fmt: skip
        fake_sysroot(self.dir / "sys", cmdline)
        (self.dir / "sys/sys/class/net/eth0/address").write_text(mac + "\n")
        (self.dir / "sys/sys/block/vda/size").write_text(f"{disk_size // 512}\n")
        env = {
            "PATH": str(initrd_bindir(work / "bin")),
            "AGENT_LIB": str(AGENT_LIB), "SYSROOT": str(self.dir / "sys"),
            "PROVISIOND_RUN": str(self.dir / "run"),
            "PROVISIOND_CONSOLE": str(self.dir / "console"),
            "PROVISIOND_FAKE_POWER": str(self.dir / "power"), "AGENT_SSH": "0",
            "DEVROOT": str(work / "devroot"),
            "AGENT_HOSTKEY": str(self.dir / "hostkey"), "AGENT_AUTH_KEYS": str(self.dir / "keys"),
        }  # fmt: skip
        if long_poll is not None:  # s of the agent's command poll (its default is 25)
            env["AGENT_LONG_POLL"] = str(long_poll)
        self.proc = client.popen([BUSYBOX, "sh", str(AGENT_LIB / "agent")], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)  # fmt: skip

    def blank_disk(self, size: int) -> None:
        self.disk.unlink(missing_ok=True)
        with open(self.disk, "wb") as fh:
            fh.truncate(size)

    def log(self) -> str:
        p = self.dir / "run" / "agent.log"
        return p.read_text() if p.exists() else ""

    def power(self) -> str:
        p = self.dir / "power"
        return p.read_text() if p.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
