"""Remote root shell on idle resources: paramiko with the pinned host key.

Owns SSH to agents. The host key a resource registered is the only one
accepted (``RejectPolicy``; no auto-accept): a changed key is refused with
:class:`HostKeyMismatch`. The client authenticates with the server's own
Ed25519 key, which the agent installed as its only authorized key.
"""

from __future__ import annotations

import base64
import os
import select
import sys
from pathlib import Path

import paramiko


class RemoteError(Exception):
    pass


class HostKeyMismatch(RemoteError):
    pass


def _pinned_key(hostkey_line: str) -> paramiko.PKey:
    kind, b64 = hostkey_line.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(b64))


def connect(
    host: str, hostkey_line: str, key_path: Path, port: int = 22, timeout: float = 10
) -> paramiko.SSHClient:
    if not hostkey_line:
        raise RemoteError(f"{host}: no pinned host key (the agent has not registered)")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    pinned = _pinned_key(hostkey_line)
    name = host if port == 22 else f"[{host}]:{port}"
    client.get_host_keys().add(name, pinned.get_name(), pinned)
    try:
        client.connect(
            host,
            port=port,
            username="root",
            pkey=paramiko.Ed25519Key.from_private_key_file(str(key_path)),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except paramiko.BadHostKeyException as exc:
        raise HostKeyMismatch(
            f"{host} presented host key {exc.key.fingerprint} but {exc.expected_key.fingerprint} "
            "is pinned: refusing (the machine changed or someone is in between; "
            "reboot it into the agent to register a new key)"
        )
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise HostKeyMismatch(f"{host}: host key type differs from the pinned one; refusing")
        raise RemoteError(f"{host}: SSH failed: {exc}")
    except OSError as exc:
        raise RemoteError(f"{host}:{port}: cannot connect ({exc}); is the agent up?")
    return client


def run(client: paramiko.SSHClient, command: str, timeout: float = 600) -> tuple[int, bytes]:
    chan = client.get_transport().open_session(timeout=timeout)
    chan.set_combine_stderr(True)
    chan.settimeout(timeout)
    chan.exec_command(command)
    out = bytearray()
    while True:
        data = chan.recv(65536)
        if not data:
            break
        out += data
    return chan.recv_exit_status(), bytes(out)


def interactive(client: paramiko.SSHClient) -> int:
    """Attach the local terminal to a remote root shell until it exits."""
    chan = client.invoke_shell(term=os.environ.get("TERM", "vt100"))
    stdin_fd = sys.stdin.fileno()
    restore = None
    if os.isatty(stdin_fd):
        import termios
        import tty

        restore = termios.tcgetattr(stdin_fd)
        tty.setraw(stdin_fd)
    try:
        while True:
            ready, _, _ = select.select([chan, stdin_fd], [], [])
            if chan in ready:
                data = chan.recv(4096)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if stdin_fd in ready:
                data = os.read(stdin_fd, 4096)
                if not data:
                    chan.shutdown_write()
                    continue
                chan.sendall(data)
    finally:
        if restore is not None:
            import termios

            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, restore)
    return chan.recv_exit_status() if chan.exit_status_ready() else 0
