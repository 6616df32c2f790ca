"""Unit tests of the sans-IO transfer (windowing, duplicates, timers, rollover)
and of FileStore (containment, symlinks, cache bounds) on a tmp directory."""

from __future__ import annotations

import os

import pytest

from pxe.tftp.codec import Params, PathRefused
from pxe.tftp.files import FileStore, NotRegularFile, Source
from pxe.tftp.transfer import State, Transfer


def mem(data: bytes) -> Source:
    return Source(len(data), memoryview(data))


def blocks(datagrams) -> list[int]:
    """Wire block numbers of DATA datagrams."""
    return [int.from_bytes(bytes(d[0])[2:4], "big") for d in datagrams]


def payload(datagrams) -> bytes:
    return b"".join(bytes(d[1]) for d in datagrams)


def test_lockstep_without_options():
    t = Transfer(mem(b"a" * 1000), Params(blksize=512))
    first = t.start(0.0)
    assert blocks(first) == [1] and payload(first) == b"a" * 512
    assert blocks(t.on_ack(1, 0.1)) == [2]
    assert t.on_ack(2, 0.2) == [] and t.state is State.DONE


def test_exact_multiple_ends_with_empty_block():
    t = Transfer(mem(b"x" * 1024), Params(blksize=512))
    t.start(0.0)
    t.on_ack(1, 0)
    last = t.on_ack(2, 0)
    assert blocks(last) == [3] and payload(last) == b""
    t.on_ack(3, 0)
    assert t.state is State.DONE


def test_empty_file_is_one_empty_block():
    t = Transfer(mem(b""), Params())
    assert payload(t.start(0)) == b"" and blocks(t.start(0)) == [1]


def test_oack_first_then_data_after_ack_0():
    t = Transfer(mem(b"z" * 100), Params(blksize=1428), (("blksize", "1428"),))
    first = t.start(0.0)
    assert first == [(b"\0\x06blksize\x001428\0",)]
    assert blocks(t.on_ack(0, 0.1)) == [1]


def test_duplicate_ack_never_retransmits():  # Sorcerer's Apprentice
    t = Transfer(mem(b"q" * 5000), Params())
    t.start(0)
    assert blocks(t.on_ack(1, 0)) == [2]
    assert t.on_ack(1, 0) == []
    assert t.on_ack(0, 0) == []
    assert t.on_ack(9, 0) == []  # future block
    assert blocks(t.on_ack(2, 0)) == [3]


def test_window_sends_windowsize_blocks_and_restarts_after_partial_ack():
    t = Transfer(mem(bytes(512 * 40)), Params(windowsize=16))
    assert blocks(t.start(0)) == list(range(1, 17))
    assert blocks(t.on_ack(16, 0)) == list(range(17, 33))
    # RFC 7440 section 4: client lost block 21 and ACKs 20 -> resend from 21
    assert blocks(t.on_ack(20, 0)) == list(range(21, 37))
    assert blocks(t.on_ack(36, 0)) == [37, 38, 39, 40, 41]  # 41 is the empty last block


def test_timeout_resends_window_and_gives_up_after_max_retries():
    t = Transfer(mem(bytes(5000)), Params(timeout=1.0, windowsize=4), max_retries=2)
    t.start(0.0)
    assert t.on_timer(0.5) == []  # not due yet
    assert blocks(t.on_timer(1.0)) == [1, 2, 3, 4]
    assert blocks(t.on_timer(2.0)) == [1, 2, 3, 4]
    assert t.on_timer(3.0) == [] and t.state is State.FAILED
    assert t.retransmits == 2 and "timed out" in t.reason


def test_progress_resets_retries():
    t = Transfer(mem(bytes(5000)), Params(timeout=1.0), max_retries=1)
    t.start(0)
    t.on_timer(1.0)
    t.on_ack(1, 1.5)
    assert blocks(t.on_timer(2.5)) == [2] and t.state is State.RUNNING


def test_block_number_rollover():
    # blksize 8: 65536 blocks are 512 KiB; the file needs blocks past 65535.
    data = os.urandom(8 * 65540 + 3)
    t = Transfer(mem(data), Params(blksize=8, windowsize=64))
    got, out = [], t.start(0)
    while out:
        got += out
        out = t.on_ack(blocks(out)[-1], 0)
    assert t.state is State.DONE
    assert payload(got) == data
    wire = blocks(got)
    assert wire[65534:65538] == [65535, 0, 1, 2]


# --------------------------------------------------------------------------- FileStore


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "boot"
    (r / "efi").mkdir(parents=True)
    (r / "undionly.kpxe").write_bytes(b"U" * 100)
    (r / "efi" / "ipxe.efi").write_bytes(b"E" * 300)
    (r / "big.img").write_bytes(b"B" * 5000)
    (tmp_path / "secret").write_text("outside")
    (r / "escape").symlink_to(tmp_path / "secret")
    (r / "passwd").symlink_to("/etc/passwd")
    (r / "dirlink").symlink_to(tmp_path)
    (r / "inside").symlink_to("efi/ipxe.efi")
    return r


def read_all(src: Source) -> bytes:
    data = bytes(src.read(0, src.size))
    src.close()
    return data


def test_store_serves_files_and_inside_symlinks(root):
    store = FileStore(root)
    assert read_all(store.open("undionly.kpxe")) == b"U" * 100
    assert read_all(store.open("inside")) == b"E" * 300


@pytest.mark.parametrize("name", ["escape", "passwd", "dirlink/secret"])
def test_store_refuses_symlinks_that_leave_the_root(root, name):
    with pytest.raises(PathRefused):
        FileStore(root).open(name)


def test_store_missing_and_directory(root):
    store = FileStore(root)
    with pytest.raises(FileNotFoundError):
        store.open("nope")
    with pytest.raises(NotRegularFile):
        store.open("efi")


def test_store_streams_big_files_and_bounds_the_cache(root):
    store = FileStore(root, cache_file_max=1000, cache_total=350)
    big = store.open("big.img")
    assert big.read(4990, 100) == b"B" * 10  # pread from the fd, not cached
    big.close()
    read_all(store.open("undionly.kpxe"))
    read_all(store.open("efi/ipxe.efi"))
    read_all(store.open("inside"))  # same inode: cache hit
    assert store._cached_bytes <= 350


def test_store_sees_a_changed_file(root):
    store = FileStore(root)
    assert read_all(store.open("undionly.kpxe")) == b"U" * 100
    (root / "undionly.kpxe").write_bytes(b"new")
    assert read_all(store.open("undionly.kpxe")) == b"new"


def test_store_netascii(root):
    (root / "t.txt").write_bytes(b"a\nb\n")
    src = FileStore(root).open("t.txt", netascii=True)
    assert src.size == 6 and read_all(src) == b"a\r\nb\r\n"
