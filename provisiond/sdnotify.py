"""systemd readiness: ``sd_notify`` over ``$NOTIFY_SOCKET`` (``Type=notify``).

Owns telling the service manager ``READY=1`` once every service listens and
``STOPPING=1`` when the stop begins. Without ``NOTIFY_SOCKET`` (not started
by systemd) it does nothing. Standard library only: one datagram to a unix
socket (``@name`` is the abstract namespace), as sd_notify(3) describes.
"""

from __future__ import annotations

import os
import socket


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``); False when there is no socket or sending failed."""
    path = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
        return True
    except OSError:
        return False
