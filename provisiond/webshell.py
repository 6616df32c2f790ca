"""Web shell sessions: a root terminal on an idle resource, relayed over HTTP long polls.

Owns :class:`ShellManager` and :class:`ShellSession`. Transport choice: the
browser talks to the daemon's existing waitress server through two plain
HTTP endpoints — ``POST input`` (keystrokes, resize) and ``GET output?since=N``
(a long poll that returns as soon as bytes past offset N exist, or after
``wait`` seconds). No extra port, no websocket server, no new dependency,
and every call passes the same session cookie, CSRF check and role check
as the rest of the UI; the price is one HTTP round trip per burst of output,
which is invisible for an interactive shell. Each session holds a paramiko
channel opened with :func:`provisiond.remote.connect` (pinned host key,
``RejectPolicy``) and a reader thread that appends to a bounded buffer
(the newest 1 MiB; a client that falls behind is told how much it lost).

Sessions are owned by the user who opened them, limited in number, closed
after ``idle_timeout`` seconds without a poll, and every open and close is
an Event (who, which resource, how long, how it ended).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from provisiond import events, logs
from provisiond.db import Database
from provisiond.errors import Conflict, NotFound

log = logs.get("webshell")
MAX_BUFFER = 1024 * 1024


@dataclass
class ShellSession:
    id: str
    owner: int
    target: str  # resource display name
    chan: object  # paramiko.Channel
    client: object  # paramiko.SSHClient
    started: float = field(default_factory=time.monotonic)
    last_poll: float = field(default_factory=time.monotonic)
    buffer: bytearray = field(default_factory=bytearray)
    base: int = 0  # stream offset of buffer[0]
    closed: bool = False
    reason: str = ""
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def end(self) -> int:
        return self.base + len(self.buffer)

    def feed(self, data: bytes) -> None:
        with self.cond:
            self.buffer += data
            if len(self.buffer) > MAX_BUFFER:
                drop = len(self.buffer) - MAX_BUFFER
                del self.buffer[:drop]
                self.base += drop
            self.cond.notify_all()

    def read(self, since: int, wait: float) -> tuple[bytes, int, bool]:
        """Bytes after offset ``since`` (waiting up to ``wait`` s), the new offset, closed?"""
        self.last_poll = time.monotonic()
        with self.cond:
            if since >= self.end and not self.closed:
                self.cond.wait(wait)
            start = max(since, self.base)
            data = bytes(self.buffer[start - self.base :])
            return data, self.end, self.closed and start + len(data) >= self.end

    def finish(self, reason: str) -> None:
        with self.cond:
            if not self.closed:
                self.closed, self.reason = True, reason
            self.cond.notify_all()


class ShellManager:
    """Open, find, feed and reap web shell sessions (one per browser terminal)."""

    def __init__(
        self,
        db: Database,
        connect: Callable[[str, str], object],
        max_sessions: int = 16,
        idle_timeout: float = 600,
    ) -> None:
        self.db, self._connect = db, connect
        self.max_sessions, self.idle_timeout = max_sessions, idle_timeout
        self._sessions: dict[str, ShellSession] = {}
        self._lock = threading.Lock()

    def open(self, owner: int, actor: str, target: str, ip: str, hostkey: str) -> ShellSession:
        self.reap()
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise Conflict(f"{self.max_sessions} web shells are open; close one first")
        client = self._connect(ip, hostkey)  # raises remote.RemoteError with a plain message
        chan = client.invoke_shell(term="xterm-256color", width=80, height=24)
        sess = ShellSession(secrets.token_urlsafe(16), owner, target, chan, client)
        with self._lock:
            self._sessions[sess.id] = sess
        self._event(actor, "resource.webshell.open", target, f"ssh root@{ip}")
        threading.Thread(
            target=self._pump, args=(sess, actor), name=f"webshell-{target}", daemon=True
        ).start()
        return sess

    def get(self, sid: str, owner: int) -> ShellSession:
        sess = self._sessions.get(sid)
        if sess is None or sess.owner != owner:
            raise NotFound("this web shell has ended; open a new one from the resource page")
        return sess

    def write(self, sess: ShellSession, data: bytes) -> None:
        if sess.closed:
            raise Conflict(f"the shell on {sess.target} has ended ({sess.reason})")
        sess.last_poll = time.monotonic()
        sess.chan.sendall(data)

    def resize(self, sess: ShellSession, cols: int, rows: int) -> None:
        if not sess.closed:
            sess.chan.resize_pty(width=max(10, min(cols, 500)), height=max(5, min(rows, 200)))

    def close(self, sess: ShellSession, reason: str = "closed by the user") -> None:
        sess.finish(reason)
        try:
            sess.client.close()
        except Exception:
            log.debug("closing %s", sess.id, exc_info=True)

    def reap(self) -> None:
        now = time.monotonic()
        with self._lock:
            items = list(self._sessions.items())
        for sid, sess in items:
            if not sess.closed and now - sess.last_poll > self.idle_timeout:
                self.close(sess, f"idle for {int(self.idle_timeout)} s")
            if sess.closed and now - sess.last_poll > 60:
                with self._lock:
                    self._sessions.pop(sid, None)

    def close_all(self) -> None:
        for sess in list(self._sessions.values()):
            self.close(sess, "daemon stopping")

    def _pump(self, sess: ShellSession, actor: str) -> None:
        reason = "the remote shell exited"
        try:
            while True:
                data = sess.chan.recv(65536)
                if not data:
                    break
                sess.feed(data)
        except Exception as exc:
            reason = f"connection lost ({exc})"
        if not sess.closed:
            sess.finish(reason)
        secs = int(time.monotonic() - sess.started)
        self._event(actor, "resource.webshell.close", sess.target, f"{sess.reason}; {secs} s")
        try:
            sess.client.close()
        except Exception:
            pass

    def _event(self, actor: str, action: str, target: str, detail: str) -> None:
        with self.db.transaction() as s:
            events.record(s, actor, action, target, detail)
