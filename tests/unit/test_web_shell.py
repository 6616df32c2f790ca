"""Web shell session buffer: offsets, long-poll wake-up, bounded memory, end of stream."""

from __future__ import annotations

import threading

from provisiond import webshell
from provisiond.webshell import ShellSession


def _session() -> ShellSession:
    return ShellSession(id="s", owner=1, target="r-1", chan=None, client=None)


def test_read_returns_what_follows_the_offset():
    s = _session()
    s.feed(b"hello ")
    s.feed(b"world")
    assert s.read(0, 0) == (b"hello world", 11, False)
    assert s.read(6, 0) == (b"world", 11, False)
    assert s.read(11, 0) == (b"", 11, False)


def test_long_poll_wakes_on_output():
    s = _session()
    threading.Timer(0.05, s.feed, args=(b"x",)).start()
    data, end, closed = s.read(0, 5)
    assert (data, end, closed) == (b"x", 1, False)


def test_buffer_is_bounded_and_a_late_reader_skips_ahead(monkeypatch):
    monkeypatch.setattr(webshell, "MAX_BUFFER", 8)
    s = _session()
    s.feed(b"0123456789abcdef")
    assert s.base == 8
    assert s.read(0, 0) == (b"89abcdef", 16, False)


def test_closed_is_reported_once_everything_was_read():
    s = _session()
    s.feed(b"bye")
    s.finish("the remote shell exited")
    assert s.read(0, 0) == (b"bye", 3, True)
    assert s.reason == "the remote shell exited"
