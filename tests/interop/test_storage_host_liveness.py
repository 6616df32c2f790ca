"""A storage host that vanishes with its SSH connection open is down within a bound.

The storage host is a real dropbear in a client namespace of a
:class:`tests.netlab.Lab` (its own mount namespace too: root's home there is a
temporary directory holding the test's key); provisiond's side connects from
the lab's server namespace with :class:`storage.ssh.SshRunner` and the host
key pinned. While a long command (``sleep 60``, 120 s timeout) runs, the
host vanishes with the connection open, table-driven:

- ``link-down``: its interface goes down (a host unplugged or powered off:
  nothing answers, not even TCP);
- ``sigstop``: its SSH server is stopped (a hung host: the kernel still
  acknowledges TCP, only an SSH round trip tells).

Then: the host is detected down within ``alive_interval + alive_timeout``
(plus slack for a loaded machine), not the command's 120 s; the command in
flight fails with the reason; the storage service marks the host down in the
database with that reason; the next command fails at once with "storage host
X is down: …"; and once the host is back, the runner connects again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from provisiond import config as configmod
from provisiond.db import Database
from provisiond.storages import StorageManager, StorageService
from storage.ssh import HostDown
from tests.netlab import Lab
from tests.sshlab import host_keys, need_tools
from tests.testbed.netns_thread import in_netns

pytestmark = pytest.mark.interop
PORT = 2222
ALIVE_INTERVAL, ALIVE_TIMEOUT = 1, 2
BOUND = ALIVE_INTERVAL + ALIVE_TIMEOUT
SLACK = 3.0  # scheduling on a loaded 2-core machine; still far below the 120 s of a command


def ns_connect(ns: str):
    """A ``storage.ssh.Connect`` that opens its TCP connection inside namespace ``ns``."""

    def connect(address: tuple[str, int], timeout: float) -> socket.socket:
        with in_netns(ns):
            return socket.create_connection(address, timeout=timeout)

    return connect


@pytest.fixture
def storage_host(tmp_path):
    need_tools("nsenter")
    keys = host_keys(tmp_path)
    home, client, hostkey, host_key = keys.home, keys.client, keys.hostkey, keys.host_key
    with Lab("alive") as lab:
        address = f"{lab.net}.50"
        host = lab.add_client(address=address)
        with open(tmp_path / "dropbear.log", "wb") as errlog:
            proc = host.popen(
                ["unshare", "-m", "sh", "-c", f'mount --bind "{home}" /root && exec dropbear -F '
                 f'-E -s -p {address}:{PORT} -r "{hostkey}"'],
                stdout=subprocess.DEVNULL, stderr=errlog,
            )  # fmt: skip
        cfg = configmod.parse(
            f'address = "{lab.server_ip}"\nstate_dir = "{tmp_path / "state"}"\n'
            f'database_url = "sqlite:///{tmp_path}/db.sqlite"\n'
            f'[[storage]]\nname = "san"\nbackend = "lvm"\npath = "vg0"\nhost = "{address}"\n'
            f'port = {PORT}\nkey = "{client}"\nhost_key = "{host_key}"\n'
            f"alive_interval = {ALIVE_INTERVAL}\nalive_timeout = {ALIVE_TIMEOUT}\n"
        )
        db = Database(cfg.database_url)
        db.migrate(cfg.state_dir)
        manager = StorageManager(cfg)
        service = StorageService(cfg, db, manager)
        service.poll_interval = 600  # the poller must not race the test's own reconnect
        with db.transaction() as s:
            manager.sync_rows(s)
        runner = manager.runner_for("san")  # the daemon's runner: its on_down is the service's
        runner._connect_sock = ns_connect(lab.server.name)  # provisiond's side of the lab
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    runner.revive()
                    break
                except HostDown:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        pytest.fail((tmp_path / "dropbear.log").read_text())
                    time.sleep(0.2)
            yield lab, host, service, runner
        finally:
            service.stop()
            for pid in lab_pids(host.name):
                _signal(pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(10)
            db.dispose()


def lab_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _vanish(how: str, lab: Lab, host) -> None:
    if how == "link-down":
        subprocess.run(["ip", "-n", host.name, "link", "set", "eth0", "down"], check=True)
    else:  # every dropbear of the host: the listener and the connection's own process
        for pid in lab_pids(host.name):
            _signal(pid, signal.SIGSTOP)


def _come_back(how: str, lab: Lab, host) -> None:
    if how == "link-down":
        subprocess.run(["ip", "-n", host.name, "link", "set", "eth0", "up"], check=True)
    else:
        for pid in lab_pids(host.name):
            _signal(pid, signal.SIGCONT)


@pytest.mark.parametrize("how", ["link-down", "sigstop"])
def test_a_vanished_storage_host_is_down_within_the_bound(storage_host, how):
    lab, host, service, runner = storage_host
    assert runner.run(["echo", "up"]).stdout == "up\n"
    assert service.host_down_reason("san") is None
    done: dict[str, object] = {}

    def long_command() -> None:
        try:
            runner.run(["sleep", "60"], timeout=120)
        except HostDown as exc:
            done["error"] = exc
        done["at"] = time.monotonic()

    worker = threading.Thread(target=long_command)
    worker.start()
    time.sleep(0.5)  # the command is running on the host
    t0 = time.monotonic()
    _vanish(how, lab, host)
    try:
        worker.join(BOUND + SLACK + 5)
        assert not worker.is_alive(), "the command in flight still waits on a vanished host"
        took = done["at"] - t0
        print(f"{how}: detected after {took:.2f} s (bound {BOUND} s)")
        assert took <= BOUND + SLACK, f"detected after {took:.1f} s (bound {BOUND} s)"
        assert f"no answer within {ALIVE_TIMEOUT} s" in str(done["error"]), done["error"]
        assert runner.down_reason is not None

        # the storage service marked the host down in the database, with the reason
        reason = service.host_down_reason("san")
        assert reason is not None and "is down: no answer within" in reason, reason
        assert f"{lab.net}.50" in reason
        assert service.exporter_for("san") is None

        # later commands fail at once, naming the host and why
        t1 = time.monotonic()
        with pytest.raises(HostDown, match=r"storage host root@[\d.]+:2222 is down: no answer"):
            runner.run(["true"], timeout=120)
        assert time.monotonic() - t1 < 0.5
    finally:
        _come_back(how, lab, host)

    # back: the next attempt (the service's poller calls revive) connects again
    deadline = time.monotonic() + 30
    while True:
        try:
            runner.revive()
            break
        except HostDown:
            assert time.monotonic() < deadline, "the host came back but no connection"
            time.sleep(0.5)
    assert runner.down_reason is None
    assert runner.run(["echo", "back"]).stdout == "back\n"
