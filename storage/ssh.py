"""``SshRunner``: the storage Runner for a remote storage host, over SSH (paramiko).

Owns one SSH connection to one storage host and running commands there with
the same contract as :class:`storage.runner.Runner` (``Result``, exit codes,
``CommandFailed`` with stderr, timeouts, secrets redacted in logs), so the
LVM backend and the exporters run unchanged against a remote host.

Host keys are pinned. A key given in the configuration (``host_key =
"ssh-ed25519 AAAA…"``) is the only one accepted. Without one, the first key
the host presents is pinned in ``storage-hostkeys.json`` in the state
directory (trust on first use, logged as such) and every later connection
must present the same key. A different key is refused with
:class:`HostKeyMismatch` before authentication: no command runs. The server
authenticates with its own key (``ssh_key`` in the state directory).

A host that cannot be reached raises :class:`HostDown` (the message says
which host and why); the next call reconnects.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from storage.backends.base import StorageError
from storage.runner import Arg, CommandFailed, Result, Runner, show

log = logging.getLogger("provisiond.storage.ssh")  # under the daemon's handler and redaction


#: how the TCP connection is made: ``socket.create_connection``, or e.g. one made
#: inside a network namespace (the test bed)
Connect = Callable[[tuple[str, int], float], socket.socket]


class HostDown(StorageError):
    """The storage host cannot be reached or refused the login (message says why)."""


class HostKeyMismatch(HostDown):
    """The host presented a key other than the pinned one: nothing was run."""


@dataclass(frozen=True)
class SshTarget:
    host: str
    key_path: Path  # the server's private key (Ed25519, RSA or ECDSA)
    port: int = 22
    user: str = "root"
    host_key: str = ""  # "type base64 [comment]"; empty = pin on first use in pins_path
    pins_path: Path | None = None  # storage-hostkeys.json
    connect_timeout: float = 10.0

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def parse_host_key(line: str) -> paramiko.PKey:
    """A public key from an OpenSSH line ("ssh-ed25519 AAAA… [comment]")."""
    parts = line.split()
    if len(parts) < 2:
        raise StorageError(f"host key {line!r}: expected 'TYPE BASE64' (a line of a .pub file)")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except Exception as exc:
        raise StorageError(f"host key {line[:40]!r}…: not a valid SSH public key ({exc})")


def key_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


class HostKeyPins:
    """Host keys pinned on first use: ``{"host:port": "type base64"}`` in a 0600 JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def get(self, host: str, port: int) -> str | None:
        return self._load().get(f"{host}:{port}")

    def pin(self, host: str, port: int, line: str) -> None:
        with self._lock:
            pins = self._load()
            pins[f"{host}:{port}"] = line
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(pins, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.path)

    def _load(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            raise StorageError(f"{self.path}: unreadable host key pins ({exc}); fix or remove it")


def verify_host_key(target: SshTarget, presented: paramiko.PKey) -> str:
    """Check ``presented`` against the configured or pinned key; pins on first use.

    Returns how it was accepted ("configured", "pinned", "pinned now");
    raises :class:`HostKeyMismatch` otherwise.
    """
    got = key_line(presented)
    if target.host_key:
        want = key_line(parse_host_key(target.host_key))
        source = "the configured host_key"
    else:
        pins = HostKeyPins(target.pins_path) if target.pins_path else None
        pinned = pins.get(target.host, target.port) if pins else None
        if pinned is None:
            if pins is None:
                raise HostKeyMismatch(
                    f"storage host {target.label}: no host_key configured and nowhere to pin "
                    "one; set host_key in its [[storage]] entry"
                )
            pins.pin(target.host, target.port, got)
            log.warning("storage host %s: host key %s pinned on first use (%s)",
                        target.label, presented.fingerprint, pins.path)  # fmt: skip
            return "pinned now"
        want, source = pinned, f"the key pinned in {target.pins_path}"
    if got != want:
        raise HostKeyMismatch(
            f"storage host {target.label} presented host key {presented.fingerprint}, not "
            f"{source}: refusing to run anything (the host was reinstalled, or someone is in "
            "between; if the change is expected, update host_key or remove the pin)"
        )
    return "configured" if target.host_key else "pinned"


class SshRunner(Runner):
    """Runs commands on ``target`` over one kept SSH connection (reconnects when lost)."""

    remote = True

    def __init__(self, target: SshTarget, connect: Connect | None = None) -> None:
        self.target = target
        self._connect_sock = connect or socket.create_connection
        self._transport: paramiko.Transport | None = None
        self._lock = threading.Lock()

    # -- connection -------------------------------------------------------
    def _connect(self) -> paramiko.Transport:
        t = self.target
        try:
            sock = self._connect_sock((t.host, t.port), t.connect_timeout)
        except OSError as exc:
            raise HostDown(f"storage host {t.label}: cannot connect ({exc})")
        transport = paramiko.Transport(sock)
        try:
            if t.host_key:  # negotiate the configured key's type
                transport.get_security_options().key_types = [parse_host_key(t.host_key).get_name()]
            transport.start_client(timeout=t.connect_timeout)
            verify_host_key(t, transport.get_remote_server_key())
            pkey = paramiko.PKey.from_path(t.key_path)
            transport.auth_publickey(t.user, pkey)
        except HostDown:
            transport.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise HostDown(f"storage host {t.label}: SSH failed ({exc})")
        transport.set_keepalive(15)
        return transport

    def transport(self) -> paramiko.Transport:
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                self._transport = self._connect()
            return self._transport

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    def ping(self) -> None:
        """Raise :class:`HostDown` unless the host answers a trivial command."""
        self.run(["true"], timeout=self.target.connect_timeout)

    # -- Runner -----------------------------------------------------------
    def run(
        self,
        argv: Sequence[Arg],
        *,
        input: str | bytes | None = None,
        timeout: float = 120.0,
        check: bool = True,
    ) -> Result:
        log.debug("run on %s: %s", self.target.host, show(argv))
        command = shlex.join(str(a) for a in argv)
        rc, out, err = self.exec(command, input=input, timeout=timeout, argv=argv)
        res = Result(rc, out, err)
        if check and rc != 0:
            raise CommandFailed(argv, rc, err)
        return res

    def exec(
        self,
        command: str,
        *,
        input: str | bytes | None = None,
        timeout: float = 120.0,
        argv: Sequence[Arg] = (),
    ) -> tuple[int, str, str]:
        """Run a shell ``command`` on the host: (rc, stdout, stderr); rc -1 = timed out."""
        try:
            chan = self.transport().open_session(timeout=self.target.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise HostDown(f"storage host {self.target.label}: SSH channel failed ({exc})")
        deadline = time.monotonic() + timeout
        try:
            chan.settimeout(1.0)
            chan.exec_command(command)
            if input is not None:
                chan.sendall(input.encode() if isinstance(input, str) else input)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                    continue
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    continue
                if chan.exit_status_ready() and not chan.recv_ready():
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(65536)
                    break
                if time.monotonic() > deadline:
                    raise CommandFailed(argv or [command], -1, f"timed out after {timeout} s")
                if not self._transport or not self._transport.is_active():
                    raise HostDown(f"storage host {self.target.label}: connection lost")
                chan.status_event.wait(0.05)
            rc = chan.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise HostDown(f"storage host {self.target.label}: connection lost ({exc})")
        finally:
            chan.close()
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    def open_exec(self, command: str) -> paramiko.Channel:
        """A channel running shell ``command`` on the host, for streaming (see remotewrite)."""
        try:
            chan = self.transport().open_session(timeout=self.target.connect_timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise HostDown(f"storage host {self.target.label}: SSH channel failed ({exc})")
        return chan

    def start(self, argv, *, log_path=None):
        raise StorageError(
            f"storage host {self.target.host}: long-lived daemons are started on the host "
            "itself (its init system), not by provisiond"
        )
