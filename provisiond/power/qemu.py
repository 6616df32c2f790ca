"""The ``qemu`` power driver: a QEMU machine switched over its QMP unix socket.

Owns speaking QMP (the QEMU Machine Protocol: JSON lines over a unix socket,
greeting, ``qmp_capabilities``, then commands) for the test bed, where a
QEMU process plays the server and the QMP socket plays its BMC.

Settings: ``address`` is the QMP socket path (QEMU started with
``-qmp unix:PATH,server=on,wait=off``); ``options.pidfile`` (QEMU's
``-pidfile``) lets the driver tell a dead QEMU (off: nothing runs) from an
unreachable socket (an error: maybe it runs). How the actions map:

=========  ==========================================================
status     ``query-status``: ``running`` is on; a paused, shut-down or
           not-yet-started machine is off; no socket and a dead pid is off
off        ``stop`` (the vCPUs halt: the guest runs no instruction, writes
           nothing) -- the QEMU process stays so ``on`` can follow
on         ``system_reset`` then ``cont``: the machine starts from its
           firmware, as after pressing the power button
cycle      ``system_reset`` (and ``cont`` when it was off)
=========  ==========================================================

A killed QEMU cannot be switched on again through QMP (nothing listens):
``on`` then says so (:class:`NotSupported`); ``off`` on it succeeds, since
the machine already is off -- that is what lets HA fence a crashed VM.

The wire format (:func:`encode`, :class:`QmpReader`) is pure; the socket
part (:class:`QmpClient`) is small.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from provisiond.power import (
    BmcUnreachable,
    NotSupported,
    PowerAction,
    PowerError,
    PowerSettings,
    PowerState,
    register,
)

#: query-status "status" values that mean the guest runs (the rest: off)
RUNNING = frozenset({"running", "debug"})


class QmpProtocolError(PowerError):
    """The peer did not speak QMP (or answered with an error)."""


# -- wire format (pure) --------------------------------------------------------


def encode(command: str, arguments: dict[str, Any] | None = None) -> bytes:
    msg: dict[str, Any] = {"execute": command}
    if arguments:
        msg["arguments"] = arguments
    return json.dumps(msg).encode() + b"\r\n"


class QmpReader:
    """Splits the byte stream into QMP messages; asynchronous events are kept aside."""

    def __init__(self) -> None:
        self._buf = b""
        self.events: list[dict[str, Any]] = []

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Messages completed by ``data`` (greeting, returns, errors), events excluded."""
        self._buf += data
        out = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                raise QmpProtocolError(f"QMP: not JSON: {line[:80]!r}") from None
            if not isinstance(msg, dict):
                raise QmpProtocolError(f"QMP: not an object: {line[:80]!r}")
            if "event" in msg:
                self.events.append(msg)
            else:
                out.append(msg)
        return out


def result(msg: dict[str, Any], command: str) -> Any:
    """The ``return`` of an answer, or QmpProtocolError naming QEMU's error."""
    if "error" in msg:
        err = msg["error"]
        raise QmpProtocolError(f"QMP {command}: {err.get('class')}: {err.get('desc')}")
    if "return" not in msg:
        raise QmpProtocolError(f"QMP {command}: unexpected answer {str(msg)[:120]}")
    return msg["return"]


# -- socket ----------------------------------------------------------------------


class QmpClient:
    """One QMP session on a unix socket (context manager)."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path, self.timeout = path, timeout
        self._sock: socket.socket | None = None
        self._reader = QmpReader()
        self._pending: list[dict[str, Any]] = []

    def __enter__(self) -> QmpClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise BmcUnreachable(
                f"QMP socket {self.path}: {exc.strerror or exc}; is QEMU running with "
                f"-qmp unix:{self.path},server=on,wait=off?"
            ) from None
        self._sock = sock
        greeting = self._next("greeting")
        if "QMP" not in greeting:
            raise QmpProtocolError(f"QMP socket {self.path}: no QMP greeting")
        self.call("qmp_capabilities")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _next(self, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while not self._pending:
            if time.monotonic() > deadline:
                raise BmcUnreachable(f"QMP socket {self.path}: no {what} within {self.timeout} s")
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise BmcUnreachable(
                    f"QMP socket {self.path}: no {what} within {self.timeout} s"
                ) from None
            except OSError as exc:
                raise BmcUnreachable(f"QMP socket {self.path}: {exc}") from None
            if not data:
                raise BmcUnreachable(f"QMP socket {self.path}: closed before the {what}")
            self._pending += self._reader.feed(data)
        return self._pending.pop(0)

    def call(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        try:
            self._sock.sendall(encode(command, arguments))
        except OSError as exc:
            raise BmcUnreachable(f"QMP socket {self.path}: {exc}") from None
        return result(self._next(f"answer to {command}"), command)


# -- the driver --------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class QemuDriver:
    """PowerDriver over QMP (see the module docstring for the action mapping)."""

    def __init__(self, settings: PowerSettings) -> None:
        if not settings.address:
            raise NotSupported("qemu power driver: --address must be the QMP socket path")
        self.path = settings.address
        self.pidfile = str(settings.options.get("pidfile", "") or "")
        self.timeout = settings.timeout

    def process_gone(self) -> bool:
        """True when the pidfile proves no QEMU runs (missing file, or a dead pid)."""
        if not self.pidfile:
            return False
        try:
            pid = int(Path(self.pidfile).read_text().strip())
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            return False
        return not _pid_alive(pid)

    def _session(self) -> QmpClient:
        return QmpClient(self.path, self.timeout)

    def status(self) -> PowerState:
        try:
            with self._session() as q:
                st = q.call("query-status")
        except BmcUnreachable:
            if self.process_gone():
                return PowerState.OFF
            raise
        return PowerState.ON if st.get("status") in RUNNING else PowerState.OFF

    def act(self, action: PowerAction) -> None:
        action = PowerAction(action)
        if action == PowerAction.STATUS:
            self.status()
            return
        try:
            with self._session() as q:
                running = q.call("query-status").get("status") in RUNNING
                if action == PowerAction.OFF:
                    if running:
                        q.call("stop")
                elif action == PowerAction.ON:
                    if not running:
                        q.call("system_reset")
                        q.call("cont")
                else:  # cycle
                    q.call("system_reset")
                    if not running:
                        q.call("cont")
        except BmcUnreachable:
            if not self.process_gone():
                raise
            if action == PowerAction.OFF:
                return  # nothing runs: it is off
            raise NotSupported(
                f"qemu {self.path}: the QEMU process is gone (pidfile {self.pidfile}); "
                "a killed QEMU cannot be powered on over QMP: start it again"
            ) from None


@register("qemu")
def _factory(settings: PowerSettings) -> QemuDriver:
    return QemuDriver(settings)
