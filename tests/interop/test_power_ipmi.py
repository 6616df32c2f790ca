"""The ipmi power driver: real ipmitool (lanplus, cipher suite 3) against OpenIPMI's ipmi_sim.

ipmi_sim is a BMC simulator speaking IPMI 1.5/2.0 over UDP. Its chassis power
is wired to a process (``startcmd``): power on starts it, power off kills it,
status says whether it runs. The "machine" here is a small shell script that
records its pid, so the test checks the real effect of each command, not only
ipmitool's answer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from provisiond.power import (
    BadCredentials,
    BmcUnreachable,
    PowerAction,
    PowerSettings,
    PowerState,
    driver_for,
)
from tests.conftest import free_port

pytestmark = pytest.mark.interop
A = PowerAction

LAN_CONF = """\
name "bmc1"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  serial 15 127.0.0.1 {serial} codec VM
  startcmd "{machine}"
  startnow false
  poweroff_wait 0
  kill_wait 1
  user 2 true "admin" "s3cret-Pw" admin 10 none md2 md5 straight
"""

EMU = """\
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bmc:
    def __init__(self, tmp: Path) -> None:
        self.port, self.pidfile = free_udp_port(), tmp / "machine.pid"
        machine = tmp / "machine.sh"
        machine.write_text(f"#!/bin/sh\necho $$ > {self.pidfile}\nexec sleep 600\n")
        machine.chmod(0o755)
        (tmp / "state").mkdir()
        conf = LAN_CONF.format(port=self.port, serial=free_port(), machine=machine)
        (tmp / "lan.conf").write_text(conf)
        (tmp / "bmc.emu").write_text(EMU)
        self.proc = subprocess.Popen(
            ["ipmi_sim", "-c", str(tmp / "lan.conf"), "-f", str(tmp / "bmc.emu"),
             "-s", str(tmp / "state"), "-n"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def machine_running(self) -> bool:
        try:
            os.kill(int(self.pidfile.read_text()), 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return False
        state = Path(f"/proc/{int(self.pidfile.read_text())}/stat").read_text().split()[2]
        return state != "Z"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        try:
            os.kill(int(self.pidfile.read_text()), signal.SIGKILL)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            pass


@pytest.fixture
def bmc(tmp_path):
    for exe in ("ipmi_sim", "ipmitool"):
        if not shutil.which(exe):
            pytest.skip(reason=f"needs {exe} (apt-get install openipmi ipmitool)")
    b = Bmc(tmp_path)
    yield b
    b.stop()


def settings(port: int, user="admin", password="s3cret-Pw") -> PowerSettings:
    return PowerSettings(driver="ipmi", address="127.0.0.1", user=user, password=password,
                         options={"port": port}, timeout=8)  # fmt: skip


def wait_for(pred, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_ipmi_on_status_cycle_off(bmc):
    d = driver_for(settings(bmc.port))
    wait_for(lambda: _answers(d))
    assert d.status() == PowerState.OFF and not bmc.machine_running()
    d.act(A.ON)
    wait_for(bmc.machine_running)
    assert d.status() == PowerState.ON
    first = bmc.pidfile.read_text()
    d.act(A.CYCLE)
    wait_for(lambda: bmc.machine_running() and bmc.pidfile.read_text() != first)
    assert d.status() == PowerState.ON
    d.act(A.OFF)
    wait_for(lambda: not bmc.machine_running())
    assert d.status() == PowerState.OFF
    d.act(A.CYCLE)  # off: cycle switches it on
    wait_for(bmc.machine_running)


def _answers(d) -> bool:
    try:
        d.status()
        return True
    except BmcUnreachable:
        return False


@pytest.mark.parametrize(("user", "password"), [("admin", "wrong-Pw"), ("nobody", "s3cret-Pw")])
def test_ipmi_wrong_credentials(bmc, user, password):
    wait_for(lambda: _answers(driver_for(settings(bmc.port))))
    with pytest.raises(BadCredentials) as info:
        driver_for(settings(bmc.port, user, password)).act(A.ON)
    assert password not in str(info.value)
    assert not bmc.machine_running()


def test_ipmi_unreachable():
    if not shutil.which("ipmitool"):
        pytest.skip(reason="needs ipmitool (apt-get install ipmitool)")
    with pytest.raises(BmcUnreachable, match="does not answer"):
        driver_for(settings(free_udp_port())).status()


def test_password_not_on_the_command_line(bmc, tmp_path):
    """While ipmitool runs, no process's argv holds the password (ps shows argv to everyone)."""
    seen: list[str] = []
    d = driver_for(settings(bmc.port))
    real = d.run

    def spy(argv, env, timeout):
        seen.append(" ".join(argv))
        return real(argv, env, timeout)

    d.run = spy
    wait_for(lambda: _answers(d))
    assert seen and all("s3cret-Pw" not in line for line in seen)
