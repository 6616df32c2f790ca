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
which host and why). Liveness is bounded apart from command timeouts (a
command may rightly run for minutes): while a connection is kept, a probe
(one SSH channel open, a round trip to the server) runs every
``alive_interval`` seconds, also during a long command; one not answered
within ``alive_timeout`` seconds means the host is down — a host that
vanished with the connection open (powered off, unplugged, hung) is noticed
within about ``alive_interval + alive_timeout`` seconds, not after each
command's own timeout. The connection is also kept busy with SSH keepalives
and its socket gets ``TCP_USER_TIMEOUT``, so the kernel gives up on it in
the same bound. Then ``on_down(reason)`` is called (the storage service
marks the host down and polls it), the command in flight fails, and later
commands fail at once with "storage host X is down: …"; at most one
connection attempt per ``alive_interval`` is made until :meth:`SshRunner.revive`
(or such an attempt) connects again.
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
EOF_GRACE = 2.0  # s a command's output may trail its exit status (a daemon it started keeps stdout)


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
    alive_interval: float = 5.0  # seconds between liveness probes of a kept connection
    alive_timeout: float = 10.0  # a probe unanswered this long: the host is down

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
    """Runs commands on ``target`` over one kept SSH connection (reconnects when lost).

    ``on_down(reason)`` is called (from the liveness thread or a command's
    thread) when a kept connection stops answering; see the module docstring.
    """

    remote = True

    def __init__(
        self,
        target: SshTarget,
        connect: Connect | None = None,
        on_down: Callable[[str], None] | None = None,
    ) -> None:
        self.target = target
        self.on_down = on_down
        self._connect_sock = connect or socket.create_connection
        self._transport: paramiko.Transport | None = None
        self._lock = threading.Lock()
        self._down: str | None = None  # why the host is down: commands fail fast
        self._down_tried = 0.0  # monotonic time of the last connection attempt while down
        self._reported = False  # on_down was told of the current loss
        self._monitor: threading.Event | None = None  # set = that liveness thread stops

    # -- connection -------------------------------------------------------
    def _connect(self) -> paramiko.Transport:
        t = self.target
        try:
            sock = self._connect_sock((t.host, t.port), t.connect_timeout)
        except OSError as exc:
            raise HostDown(f"storage host {t.label}: cannot connect ({exc})")
        _bound_unacked(sock, t.alive_interval + t.alive_timeout)
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
        transport.set_keepalive(max(1, int(t.alive_interval)))
        return transport

    @property
    def down_reason(self) -> str | None:
        """Why the host is down (None: not known to be down)."""
        return self._down

    def _fail_fast(self) -> None:
        if (
            self._down is not None
            and time.monotonic() - self._down_tried < self.target.alive_interval
        ):
            raise HostDown(f"storage host {self.target.label} is down: {self._down}")

    def transport(self) -> paramiko.Transport:
        self._fail_fast()  # outside the lock: never wait behind another thread's attempt
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                self._fail_fast()
                if self._down is not None:
                    self._down_tried = time.monotonic()
                try:
                    self._transport = self._connect()
                except HostDown as exc:
                    self._down, self._down_tried = self._reason(exc), time.monotonic()
                    raise
                if self._down is not None:
                    log.info("storage host %s answers again", self.target.label)
                    self._down = None
                self._reported = False
                if self._monitor is None:
                    self._monitor = threading.Event()
                    threading.Thread(target=self._watch, args=(self._monitor,), daemon=True,
                                     name=f"ssh-alive-{self.target.host}").start()  # fmt: skip
            return self._transport

    def revive(self) -> None:
        """Try to connect now, even within the fail-fast interval; HostDown if it cannot."""
        self._down_tried = 0.0
        self.transport()

    def _reason(self, exc: BaseException) -> str:
        text = str(exc)
        prefix = f"storage host {self.target.label}: "
        return text[len(prefix) :] if text.startswith(prefix) else text

    def _drop(self) -> None:
        """Forget the connection (the liveness thread stays; the next command reconnects)."""
        t, self._transport = self._transport, None
        if t is not None:
            t.close()

    def _went_down(self, reason: str) -> None:
        """The kept connection stopped answering: drop it, fail fast from now on, tell on_down."""
        first, self._reported = not self._reported, True  # once per loss of a kept connection
        if first:  # told before the commands in flight fail: whoever sees them fail sees it down
            log.warning("storage host %s is down: %s", self.target.label, reason)
            if self.on_down is not None:
                try:
                    self.on_down(reason)
                except Exception:  # the watcher must not die with its listener
                    log.exception("storage host %s: on_down failed", self.target.label)
        self._down, self._down_tried = reason, time.monotonic()
        self._drop()

    def probe(self) -> None:
        """One bounded round trip on the kept connection; HostDown unless answered in time."""
        t = self._transport
        if t is None or not t.is_active():
            t = self.transport()  # lost on its own (EOF, TCP timeout): can we reconnect?
        try:
            chan = t.open_session(timeout=self.target.alive_timeout)
        except paramiko.ChannelException:
            return  # the server answered (refused a channel: MaxSessions): it is alive
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostDown(
                f"storage host {self.target.label}: no answer within "
                f"{self.target.alive_timeout:g} s ({exc or type(exc).__name__})"
            )
        chan.close()

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.target.alive_interval):
            kept = self._transport
            if kept is None or self._down is not None:
                continue  # nothing kept (dropped or down): the storage service polls
            try:
                self.probe()
            except HostDown as exc:
                if stop.is_set() or self._transport not in (kept, None):
                    continue  # closed on purpose, or replaced meanwhile: not a verdict
                self._went_down(self._reason(exc))
            except Exception:  # never let the watcher die
                log.exception("storage host %s: liveness probe failed", self.target.label)

    def close(self) -> None:
        """Close the connection and stop its liveness thread (a later command reconnects)."""
        with self._lock:
            if self._monitor is not None:
                self._monitor.set()
                self._monitor = None
            self._drop()

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
            self._drop()
            raise HostDown(f"storage host {self.target.label}: SSH channel failed ({exc})")
        deadline = time.monotonic() + timeout
        try:
            chan.settimeout(1.0)
            chan.exec_command(command)
            if input is not None:
                chan.sendall(input.encode() if isinstance(input, str) else input)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            exited = 0.0  # when the exit status came: output may still follow it (OpenSSH)
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                    continue
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    continue
                if chan.exit_status_ready():
                    # sshd may send exit-status before the rest of the output: the output ends at
                    # EOF (or close); a background child holding stdout open gets EOF_GRACE
                    if chan.eof_received or chan.closed:
                        break
                    exited = exited or time.monotonic()
                    if time.monotonic() - exited > EOF_GRACE:
                        break
                    time.sleep(0.005)
                    continue
                if time.monotonic() > deadline:
                    raise CommandFailed(argv or [command], -1, f"timed out after {timeout} s")
                if self._down is not None:
                    raise HostDown(f"storage host {self.target.label} is down: {self._down}")
                if not self._transport or not self._transport.is_active():
                    raise HostDown(f"storage host {self.target.label}: connection lost")
                chan.status_event.wait(0.05)
            rc = chan.recv_exit_status()
            if rc == -1:  # closed without an exit status: the connection went away
                if self._down is not None:
                    raise HostDown(f"storage host {self.target.label} is down: {self._down}")
                if not self._transport or not self._transport.is_active():
                    raise HostDown(f"storage host {self.target.label}: connection lost")
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._drop()
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
            self._drop()
            raise HostDown(f"storage host {self.target.label}: SSH channel failed ({exc})")
        return chan

    def start(self, argv, *, log_path=None):
        raise StorageError(
            f"storage host {self.target.host}: long-lived daemons are started on the host "
            "itself (its init system), not by provisiond"
        )


def _bound_unacked(sock: socket.socket, seconds: float) -> None:
    """Let the kernel drop the connection when sent data stays unacknowledged ``seconds``."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and hasattr(socket, "TCP_USER_TIMEOUT"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
        except OSError:
            pass  # not TCP after all (a test's socket pair): the probes still bound it
