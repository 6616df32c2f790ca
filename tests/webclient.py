"""A small browser-like HTTP client for interop tests of the real daemon's UI and API.

Owns what a browser does that urllib does not do the way an attacker wants:
keep the session cookie by hand (so a test can save it and replay it later),
never follow redirects (the Location header is what is checked), bind a chosen
source address (127.0.0.2 is another client on loopback), and speak HTTPS with
a given CA file.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self):
        return json.loads(self.body)


@dataclass
class Browser:
    base: str  # http://127.0.0.1:8080 or https://...
    source: str = ""  # source address to bind, "" = any
    cafile: str = ""
    cookie: str = ""  # "provisiond_session=..."
    csrf: str = ""
    timeout: float = 60.0
    extra: dict[str, str] = field(default_factory=dict)

    def _conn(self) -> http.client.HTTPConnection:
        u = urllib.parse.urlsplit(self.base)
        src = (self.source, 0) if self.source else None
        if u.scheme == "https":
            ctx = ssl.create_default_context(cafile=self.cafile or None)
            return http.client.HTTPSConnection(
                u.hostname, u.port, timeout=self.timeout, source_address=src, context=ctx
            )
        return http.client.HTTPConnection(u.hostname, u.port, timeout=self.timeout,
                                          source_address=src)  # fmt: skip

    def request(self, method: str, path: str, *, form: dict | None = None, body=None,
                headers: dict[str, str] | None = None) -> Reply:  # fmt: skip
        hdrs = dict(self.extra)
        if self.cookie:
            hdrs["Cookie"] = self.cookie
        if form is not None:
            body = urllib.parse.urlencode(form)
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        elif isinstance(body, dict):
            body = json.dumps(body)
            hdrs["Content-Type"] = "application/json"
        if method not in ("GET", "HEAD") and self.csrf:
            hdrs.setdefault("X-CSRF-Token", self.csrf)
        hdrs.update(headers or {})
        conn = self._conn()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            reply = Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()
        for line in reply.headers.get_all("Set-Cookie") or []:
            m = re.match(r"(provisiond_session)=([^;]*)", line)
            if m:
                self.cookie = f"{m.group(1)}={m.group(2)}" if m.group(2) else ""
        return reply

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def login_form(self) -> str:
        """Fetch the log-in page (a session with a CSRF token); returns that token."""
        page = self.get("/login")
        self.csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        return self.csrf

    def login(self, name: str, password: str, nxt: str | None = None) -> Reply:
        self.login_form()
        form = {"name": name, "password": password, "csrf_token": self.csrf}
        if nxt is not None:
            form["next"] = nxt
        reply = self.request("POST", "/login", form=form)
        if reply.status == 302:  # the session was rotated: read its new CSRF token
            page = self.get("/")
            m = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
            self.csrf = m.group(1) if m else ""
        return reply

    def api(self, method: str, path: str, body=None) -> Reply:
        return self.request(method, "/api/v1" + path, body=body)


def admin_password(init_stdout: str) -> str:
    """The admin password ``provisiond init`` prints once."""
    return re.search(r"admin password .*: (\S+)", init_stdout).group(1)


def init_and_start(daemon) -> str:
    """``provisiond init`` then ``serve`` for a tests' Daemon; returns the admin password."""
    out = daemon.cli("init")
    assert out.returncode == 0, out.stdout + out.stderr
    daemon.start()
    return admin_password(out.stdout)


def kill(daemon) -> None:
    if daemon.proc and daemon.proc.poll() is None:
        daemon.proc.kill()
        daemon.proc.wait()
