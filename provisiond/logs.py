"""Logging: one line per event, prefixed with the subsystem; secrets redacted.

Loggers are named ``provisiond.<subsystem>`` (dhcp, tftp, dns, http, agent,
jobs, storage...). :class:`RedactSecrets` scrubs anything that looks like a
token, password, CHAP secret or URL password from every record before it is written, so a
careless ``log.info("%s", url)`` cannot leak ``provisiond.token=...``.
"""

from __future__ import annotations

import logging
import re
import sys

_SECRET = re.compile(
    r"(?i)(token|password|passwd|secret|chap[_-]?secret|authorization)(\s*[=:]\s*|\"\s*:\s*\"|\s+)"
    r"(bearer\s+)?[^\s&\"',;]+"
)


# a URL's password: scheme://user:PASSWORD@host (an import source, a notify URL, a DSN)
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^@\s/]+@")


def redact(text: str) -> str:
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}***", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def setup(level: str = "info", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("waitress", "alembic", "tftpy", "paramiko", "scapy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get(subsystem: str) -> logging.Logger:
    return logging.getLogger(f"provisiond.{subsystem}")
