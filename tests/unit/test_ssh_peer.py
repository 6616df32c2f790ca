"""SshRunner against a scripted SSH peer: output read to its end; down told first.

1. A command's output is read to its end, not to its exit status.

An SSH server may send ``exit-status`` before the last of the command's
output (OpenSSH does when the process exits while its pipe still holds
data; RFC 4254 puts no order between them): the storage VM's sshd cut
``dd bs=1`` to its first byte or two that way. The peer here is paramiko's
own server side on a real loopback socket, scripted to send exit-status
first, then output, then EOF — or never EOF, as when the command left a
daemon holding its stdout.

2. When the kept connection stops answering, ``on_down`` (the storage
service marking the host down) is told before the command in flight fails:
whoever sees the command fail finds the host already down in the database
(CI once read the database between the two and found it up).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import paramiko
import pytest

from storage import ssh
from storage.ssh import HostDown, SshRunner, SshTarget

EARLY, LATE = b"early|", b"late output after the exit status"


class Peer(paramiko.ServerInterface):
    def __init__(self, client: paramiko.PKey, eof: bool, silent: bool = False) -> None:
        self.client, self.eof, self.silent = client, eof, silent

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        same = key.get_base64() == self.client.get_base64()
        return paramiko.AUTH_SUCCESSFUL if same else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.silent:
            return True  # a command that runs on and on
        threading.Thread(target=self._answer, args=(channel,), daemon=True).start()
        return True

    def _answer(self, chan: paramiko.Channel) -> None:
        time.sleep(0.05)  # after the exec request's success went out
        chan.sendall(EARLY)
        chan.send_exit_status(0)
        time.sleep(0.3)  # the client has the exit status in hand meanwhile
        chan.sendall(LATE)
        if self.eof:
            chan.shutdown_write()
            chan.close()


def keypair(path) -> paramiko.Ed25519Key:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paramiko.Ed25519Key.from_private_key_file(str(path))


@pytest.fixture
def peer(tmp_path):
    """``start(eof, silent)`` -> an SshRunner connected to a scripted paramiko server."""
    listener = socket.create_server(("127.0.0.1", 0))
    transports: list[paramiko.Transport] = []
    runners: list[SshRunner] = []

    def start(eof: bool = True, silent: bool = False) -> SshRunner:
        client, host = keypair(tmp_path / "client"), keypair(tmp_path / "host")

        def serve() -> None:
            sock, _ = listener.accept()
            t = paramiko.Transport(sock)
            t.add_server_key(host)
            t.start_server(server=Peer(client, eof, silent))
            transports.append(t)

        threading.Thread(target=serve, daemon=True).start()
        target = SshTarget("127.0.0.1", tmp_path / "client", port=listener.getsockname()[1],
                           host_key=f"{host.get_name()} {host.get_base64()}",
                           alive_interval=60)  # fmt: skip
        runners.append(SshRunner(target))
        return runners[-1]

    yield start
    for r in runners:
        r.close()
    for t in transports:
        t.close()
    listener.close()


@pytest.mark.parametrize("eof", [True, False], ids=["then-eof", "never-eof"])
def test_output_after_the_exit_status_is_kept(peer, eof):
    runner = peer(eof=eof)
    t0 = time.monotonic()
    out = runner.run(["dd", "if=/dev/vg/lv", "bs=1", "count=49"]).stdout
    took = time.monotonic() - t0
    assert out == (EARLY + LATE).decode()
    # with EOF the run ends at EOF; without, at most EOF_GRACE after the exit status
    assert took < (2.0 if eof else ssh.EOF_GRACE + 2.0), took


def test_on_down_is_told_before_the_command_in_flight_fails(peer):
    runner = peer(silent=True)
    failed = threading.Event()
    seen: dict[str, object] = {}

    def long_command() -> None:
        try:
            runner.run(["sleep", "60"], timeout=30)
        except HostDown as exc:
            seen["error"] = exc
        failed.set()

    def on_down(reason: str) -> None:  # the storage service writes the database meanwhile
        time.sleep(0.3)  # six of the command loop's 50 ms checks
        seen["failed_before_told"] = failed.is_set()

    runner.on_down = on_down
    worker = threading.Thread(target=long_command)
    worker.start()
    time.sleep(0.3)  # the command runs on the peer
    runner._went_down("no answer within 2 s (probe timed out)")  # what the liveness thread does
    worker.join(10)
    assert not worker.is_alive(), "the command in flight still waits on a host known down"
    assert seen["failed_before_told"] is False
    assert "is down: no answer within 2 s" in str(seen["error"]), seen["error"]
