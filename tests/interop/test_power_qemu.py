"""The ``qemu`` power driver against a real QEMU: no disk, no network, QMP only.

A diskless TCG machine runs SeaBIOS (its debug port 0x402 goes to a file, so
every firmware start is a ``SeaBIOS (version`` line we can count). Checks:
status follows the vCPUs (running = on, stopped = off); ``on`` starts the
machine from its firmware again; ``cycle`` resets it; a QEMU killed with
SIGKILL is *off* (proved by its pidfile), ``off`` on it succeeds and ``on``
says why it cannot; an unreachable socket of a live process is an error,
not "off"; a peer that does not speak QMP is refused.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time

import pytest

from provisiond.power import (
    BmcUnreachable,
    NotSupported,
    PowerAction,
    PowerSettings,
    PowerState,
    driver_for,
)
from provisiond.power.qemu import QmpProtocolError, QmpReader, encode
from tests.qmpmachine import QEMU, Machine, wait_until

pytestmark = pytest.mark.interop


@pytest.fixture
def machine(tmp_path):
    if not shutil.which(QEMU):
        pytest.skip(reason=f"needs {QEMU} (apt-get install qemu-system-x86)")
    m = Machine(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def test_status_off_on_cycle(machine):
    drv = machine.driver()
    wait_until(lambda: machine.boots() >= 1, 30, "the firmware banner")
    assert drv.status() == PowerState.ON

    drv.act(PowerAction.OFF)
    assert drv.status() == PowerState.OFF
    before = machine.boots()
    time.sleep(1.5)
    assert machine.boots() == before, "a machine that is off ran its firmware"
    drv.act(PowerAction.OFF)  # already off: no error, still off
    assert drv.status() == PowerState.OFF

    drv.act(PowerAction.ON)
    assert drv.status() == PowerState.ON
    wait_until(lambda: machine.boots() > before, 30, "the firmware to start again after on")

    after_on = machine.boots()
    drv.act(PowerAction.CYCLE)
    assert drv.status() == PowerState.ON
    wait_until(lambda: machine.boots() > after_on, 30, "the firmware to start again after cycle")


def test_killed_qemu_is_off_by_its_pidfile(machine):
    drv = machine.driver()
    assert drv.status() == PowerState.ON
    os.kill(machine.proc.pid, signal.SIGKILL)
    machine.proc.wait(10)
    assert machine.sock.exists()  # a SIGKILLed QEMU leaves its socket behind
    assert drv.status() == PowerState.OFF
    drv.act(PowerAction.OFF)  # fencing a dead machine succeeds
    with pytest.raises(NotSupported, match="cannot be powered on over QMP"):
        drv.act(PowerAction.ON)


def test_unreachable_socket_of_a_live_process_is_an_error(tmp_path):
    pidfile = tmp_path / "alive.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # this process runs: "no socket" proves nothing
    drv = driver_for(PowerSettings(driver="qemu", address=str(tmp_path / "none.sock"),
                                   options={"pidfile": str(pidfile)}, timeout=2))  # fmt: skip
    with pytest.raises(BmcUnreachable, match=r"none\.sock"):
        drv.status()
    with pytest.raises(BmcUnreachable):
        drv.act(PowerAction.OFF)
    # without a pidfile nothing proves the machine is off either
    bare = driver_for(PowerSettings(driver="qemu", address=str(tmp_path / "none.sock"), timeout=2))
    with pytest.raises(BmcUnreachable):
        bare.status()


def test_a_peer_that_does_not_speak_qmp_is_refused(tmp_path):
    path = f"/tmp/notqmp-{os.getpid()}.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        conn.sendall(b"220 smtp.example ESMTP\r\n")
        time.sleep(0.5)
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        drv = driver_for(PowerSettings(driver="qemu", address=path, timeout=2))
        with pytest.raises(QmpProtocolError, match="not JSON"):
            drv.status()
    finally:
        t.join(5)
        srv.close()
        os.unlink(path)


def test_wire_format_keeps_events_aside():
    r = QmpReader()
    assert r.feed(b'{"QMP": {"version": {}}}\r\n{"event": "STOP", "data"') == [
        {"QMP": {"version": {}}}
    ]
    assert r.feed(b': {}}\r\n{"return": {}}\r\n') == [{"return": {}}]
    assert [e["event"] for e in r.events] == ["STOP"]
    assert encode("query-status") == b'{"execute": "query-status"}\r\n'
