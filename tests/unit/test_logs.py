"""Secrets never reach a log line: table-driven redaction, and the filter on a handler."""

from __future__ import annotations

import io
import logging

import pytest

from provisiond import logs

CASES = [
    ("kernel ... provisiond.token=abc123XYZ BOOTIF=01-52", "provisiond.token=***", "abc123XYZ"),
    ("Authorization: Bearer s3cr3tT0ken", "Authorization: Bearer ***", "s3cr3tT0ken"),
    ('{"password": "hunter2hunter2"}', '"password": "***"', "hunter2hunter2"),
    ("set password Ab12Cd34Ef56Gh78", "password ***", "Ab12Cd34Ef56Gh78"),
    ("chap_secret=Zz9Yy8Xx7Ww6", "chap_secret=***", "Zz9Yy8Xx7Ww6"),
    ("postgresql://u:pw@db/x?password=topsecret", "password=***", "topsecret"),
    (
        "import of https://bob:Hun7er2x@img.example/d.raw failed",
        "https://bob:***@img.example",
        "Hun7er2x",
    ),
    ("ha notify_url http://hook:W3bh00kPw@10.0.0.9/x failed", "hook:***@", "W3bh00kPw"),
]


@pytest.mark.parametrize(("line", "kept", "gone"), CASES, ids=[c[2] for c in CASES])
def test_redact(line, kept, gone):
    out = logs.redact(line)
    assert kept in out and gone not in out


def test_plain_lines_are_untouched():
    line = "r-525400123456 registered (idle) from 10.77.0.100"
    assert logs.redact(line) == line


def test_filter_scrubs_formatted_arguments():
    stream = io.StringIO()
    logs.setup("info", stream)
    logging.getLogger("provisiond.test").info("script cmdline: %s", "provisiond.token=leaky42")
    text = stream.getvalue()
    assert "leaky42" not in text and "provisiond.test: script cmdline" in text
