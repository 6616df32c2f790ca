"""What an image import may read: which server files, which URLs (issue 11, findings 3-4).

Owns the rule, so the CLI, the API and the UI apply the same one:

- a server path is imported only when its real path (symlinks and ``..``
  resolved) is a regular file with one link (a hard link could be any file
  of that file system) inside one of ``[images] import_dirs``, is not
  under ``state_dir`` (the SSH key, the session secret, the database) and is
  not the daemon's own database, wherever that lives;
- a URL is ``http`` or ``https`` only, and every address it resolves or
  redirects to must not be loopback, link-local, unspecified, multicast or
  one of the server's own addresses, unless it lies in
  ``[images] allow_networks``. The check runs again at connect time on the
  address actually used (:mod:`storage.fetch`), so DNS rebinding gains
  nothing.

"Own address" is asked of the kernel: an address this host can ``bind()``
is one of its own (every interface, present or added later, without a list
to keep in step).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
import urllib.parse

from provisiond.config import Config
from provisiond.errors import Invalid
from storage.fetch import SCHEMES, URLRefused, redact_url

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_url(source: str) -> bool:
    return "://" in source


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _database_files(config: Config) -> set[str]:
    db = config.sqlite_path
    if db is None:
        return set()
    real = os.path.realpath(db)
    return {real + suffix for suffix in ("", "-wal", "-shm", "-journal")}


def check_file(config: Config, source: str) -> str:
    """The real path of an importable server file, or :class:`Invalid` naming the rule."""
    dirs = config.images.import_dirs
    if not dirs:
        raise Invalid(
            f"{source}: importing server files is off; list the folders that hold images in "
            "[images] import_dirs in the config file (or import from an http(s) URL)",
            field="source",
        )
    shown = ", ".join(str(d) for d in dirs)
    if not os.path.isabs(source):
        raise Invalid(f"{source}: give an absolute path inside {shown}", field="source")
    real = os.path.realpath(source)
    if _inside(real, os.path.realpath(config.state_dir)):
        raise Invalid(
            f"{source} is under state_dir ({config.state_dir}); the daemon's own files are "
            "never imported",
            field="source",
        )
    if real in _database_files(config):
        raise Invalid(
            f"{source} is the daemon's own database; it is never imported", field="source"
        )
    if not any(_inside(real, os.path.realpath(d)) for d in dirs):
        where = f" (it resolves to {real})" if real != os.path.normpath(source) else ""
        raise Invalid(
            f"{source} is outside the import folders ([images] import_dirs = {shown}){where}",
            field="source",
        )
    try:
        st = os.stat(real)
    except OSError as exc:
        raise Invalid(f"{source}: {exc.strerror}", field="source")
    if not stat.S_ISREG(st.st_mode):
        raise Invalid(f"{source} is not a regular file", field="source")
    if st.st_nlink > 1:  # a hard link can be any file of that file system, e.g. /etc/shadow
        raise Invalid(
            f"{source} has {st.st_nlink} hard links; copy it into the folder instead",
            field="source",
        )
    return real


def is_own_address(addr: Address) -> bool:
    """True when this host holds ``addr`` (it can bind to it)."""
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((str(addr), 0))
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):
                return False
            raise
    return True


class AddressCheck:
    """The connect-time check handed to :func:`storage.fetch.open_url`."""

    def __init__(self, config: Config) -> None:
        self.allow = config.images.allow_networks
        self.server = config.address

    def why_refused(self, text: str) -> str | None:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        if any(addr.version == net.version and addr in net for net in self.allow):
            return None
        if addr.is_loopback:
            return "a loopback address"
        if addr.is_link_local:
            return "a link-local address"
        if addr.is_unspecified or addr.is_multicast:
            return "not a unicast address"
        if addr == self.server or is_own_address(addr):
            return "one of the server's own addresses"
        return None

    def __call__(self, text: str) -> None:
        why = self.why_refused(text)
        if why:
            raise URLRefused(
                f"refused: {text} is {why}; images are not fetched from the server itself or "
                "its local networks (add the network to [images] allow_networks to permit it)"
            )


def check_url(config: Config, source: str) -> AddressCheck:
    """Refuse a URL early (scheme, host, resolution); returns the connect-time check."""
    shown = redact_url(source)
    try:
        parts = urllib.parse.urlsplit(source)
        host = parts.hostname
        port = parts.port or 80
    except ValueError as exc:
        raise Invalid(f"{shown}: not a valid URL ({exc})", field="source")
    if parts.scheme not in SCHEMES:
        raise Invalid(f"{shown}: only http and https URLs can be imported", field="source")
    if not host:
        raise Invalid(f"{shown}: the URL names no host", field="source")
    check = AddressCheck(config)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Invalid(f"{shown}: cannot resolve {host} ({exc.strerror})", field="source")
    try:
        for *_rest, sockaddr in infos:
            check(sockaddr[0])
    except URLRefused as exc:
        raise Invalid(f"{shown}: {exc}", field="source")
    return check


def checked_source(config: Config, source: str) -> tuple[str, AddressCheck | None]:
    """``(what to read, connect-time check)`` for an allowed source; :class:`Invalid` else."""
    if is_url(source):
        return source, check_url(config, source)
    return check_file(config, source), None
