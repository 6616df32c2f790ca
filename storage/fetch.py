"""Guarded HTTP(S) download for image import: the address is checked where it is used.

Owns :func:`open_url`, which fetches an ``http``/``https`` URL and refuses,
before any byte is sent, a connection whose peer address the caller's
``check(address)`` rejects (provisiond passes a check refusing loopback,
link-local and the server's own addresses). Each host name is resolved
once, every resolved address is checked, and the socket connects to the
checked address itself, so a DNS answer that changes between the check and
the connection (DNS rebinding) cannot redirect it. Redirects are followed
by hand (at most ``MAX_REDIRECTS``), each hop checked the same way; the
credentials of a ``user:password@`` URL become a Basic ``Authorization``
header, sent only to the URL's own host. :func:`redact_url` is the one way
a URL is shown (in errors, the API, the UI and logs): its password is
replaced by ``***``.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import urllib.parse
from collections.abc import Callable

from storage.backends.base import StorageError

MAX_REDIRECTS = 5
SCHEMES = ("http", "https")
Check = Callable[[str], None]  # raises URLRefused for an address that must not be reached


class URLRefused(StorageError):
    """The URL's scheme, or an address it resolves or redirects to, is not allowed."""


def redact_url(source: str) -> str:
    """``source`` with the password (or a lone user token) of its URL replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(source)
    except ValueError:
        return source
    if not parts.scheme or "@" not in parts.netloc:
        return source
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def _resolve(host: str, port: int, check: Check) -> list[tuple]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StorageError(f"cannot resolve {host}: {exc.strerror}")
    for *_rest, sockaddr in infos:
        check(sockaddr[0])  # every answer, so no round-robin picks an unchecked one
    return infos


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to an already-checked address, whatever the name resolves to now."""

    def __init__(self, host: str, port: int, infos: list[tuple], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._infos = infos

    def _raw_connect(self) -> socket.socket:
        err: OSError | None = None
        for family, type_, proto, _c, sockaddr in self._infos:
            sock = socket.socket(family, type_, proto)
            sock.settimeout(self.timeout)
            try:
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                err = exc
        raise err or OSError(f"no address for {self.host}")

    def connect(self) -> None:
        self.sock = self._raw_connect()


class _PinnedHTTPS(_PinnedHTTP):
    def __init__(self, host, port, infos, timeout, context: ssl.SSLContext) -> None:
        super().__init__(host, port, infos, timeout)
        self._context = context

    def connect(self) -> None:
        self.sock = self._context.wrap_socket(self._raw_connect(), server_hostname=self.host)


def _request(url: str, check: Check, timeout: float, auth: str | None):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise URLRefused(f"{redact_url(url)}: only http and https URLs can be imported")
    host = parts.hostname
    if not host:
        raise URLRefused(f"{redact_url(url)}: the URL names no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = _resolve(host, port, check)
    if parts.scheme == "https":
        conn = _PinnedHTTPS(host, port, infos, timeout, ssl.create_default_context())
    else:
        conn = _PinnedHTTP(host, port, infos, timeout)
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    headers = {"User-Agent": "provisiond-import"}
    if auth:
        headers["Authorization"] = auth
    conn.request("GET", path, headers=headers)
    return conn, conn.getresponse()


def _basic_auth(parts: urllib.parse.SplitResult) -> str | None:
    if parts.username is None:
        return None
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def open_url(url: str, check: Check, timeout: float = 30.0) -> http.client.HTTPResponse:
    """The 200 response for ``url`` (read it, then close it); see the module doc."""
    first = urllib.parse.urlsplit(url)
    auth, origin = _basic_auth(first), (first.scheme, first.hostname, first.port)
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(current)
        same = (parts.scheme, parts.hostname, parts.port) == origin
        try:
            conn, resp = _request(current, check, timeout, auth if same else None)
        except (OSError, http.client.HTTPException) as exc:
            raise StorageError(f"download of {redact_url(current)} failed: {exc}")
        if resp.status in (301, 302, 303, 307, 308):
            location = resp.getheader("Location") or ""
            conn.close()
            if not location:
                raise StorageError(f"{redact_url(current)}: redirect without a Location")
            current = urllib.parse.urljoin(current, location)
            continue
        if resp.status != 200:
            conn.close()
            raise StorageError(f"download of {redact_url(current)}: HTTP {resp.status}")
        return resp
    raise StorageError(f"{redact_url(url)}: more than {MAX_REDIRECTS} redirects")
