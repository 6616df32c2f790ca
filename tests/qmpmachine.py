"""A diskless QEMU with a QMP socket: the test machine of the ``qemu`` power driver.

Owns starting one TCG QEMU (64 MiB, no disk, no network) whose SeaBIOS debug
port goes to a file, so each firmware start is a countable ``SeaBIOS
(version`` line, and stopping it. Used by interop tests of power and HA.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from provisiond.power import PowerSettings, driver_for

QEMU = "qemu-system-x86_64"
BANNER = "SeaBIOS (version"


def wait_until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Machine:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.sock = Path(f"/tmp/qmp-test-{os.getpid()}-{id(self)}.sock")
        self.pidfile = work / "qemu.pid"
        self.debug = work / "firmware.log"
        argv = [
            QEMU,
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "64",
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-net",
            "none",
            "-debugcon",
            f"file:{self.debug}",
            "-global",
            "isa-debugcon.iobase=0x402",
            "-qmp",
            f"unix:{self.sock},server=on,wait=off",
            "-pidfile",
            str(self.pidfile),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.sock.exists() and self.pidfile.exists(), 20, "QMP socket")

    def boots(self) -> int:
        try:
            return self.debug.read_text(errors="replace").count(BANNER)
        except FileNotFoundError:
            return 0

    def driver(self):
        return driver_for(
            PowerSettings(
                driver="qemu",
                address=str(self.sock),
                options={"pidfile": str(self.pidfile)},
                timeout=5,
            )
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.sock.unlink(missing_ok=True)
