"""Exporter identity: /proc/locks and portal parsing, the ours-or-not decision, its message."""

from __future__ import annotations

import os
import re

import pytest

from storage.exporters import ExporterIdentityError, TgtExporter
from storage.exporters.identity import (
    LockHolder,
    TgtIdentity,
    check_identity,
    check_lio_portal,
    lio_portals,
    lock_owner,
    parse_portals,
    parse_proc_locks,
    serves,
)
from storage.runner import FakeRunner

LOCKS = """\
1: POSIX  ADVISORY  READ 6225 fe:00:2148465 128 128
2: -> POSIX  ADVISORY  WRITE 7000 fe:00:1523947 0 0
5: FLOCK  ADVISORY  WRITE 8727 fe:00:2147076 0 EOF
6: POSIX  ADVISORY  WRITE 8751 fe:00:1523947 0 0
7: OFDLCK ADVISORY  WRITE -1 08:11:99 0 EOF
garbage line
"""


def test_parse_proc_locks_skips_waiters_and_garbage():
    assert parse_proc_locks(LOCKS) == [
        LockHolder(6225, 0xFE, 0, 2148465),
        LockHolder(8727, 0xFE, 0, 2147076),
        LockHolder(8751, 0xFE, 0, 1523947),
        LockHolder(-1, 0x08, 0x11, 99),
    ]


def test_lock_owner_matches_device_and_inode(tmp_path):
    lock = tmp_path / "socket.7.lock"
    lock.write_text("")
    st = os.stat(lock)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    text = (
        f"1: POSIX  ADVISORY  WRITE 111 {dev}:{st.st_ino + 1} 0 0\n"
        f"2: -> POSIX  ADVISORY  WRITE 222 {dev}:{st.st_ino} 0 0\n"
        f"3: POSIX  ADVISORY  WRITE 333 {dev}:{st.st_ino} 0 0\n"
    )
    assert lock_owner(str(lock), text) == 333
    assert lock_owner(str(lock), text.splitlines()[0]) is None
    assert lock_owner(str(tmp_path / "absent.lock"), text) is None


def test_parse_portals():
    out = "Portal: 10.0.0.1:3260,1\nPortal: [::]:3260,1\nsomething else\n"
    assert parse_portals(out) == ("10.0.0.1:3260", "[::]:3260")
    assert parse_portals("") == ()


@pytest.mark.parametrize(
    "portals, want, ok",
    [
        (("10.0.0.1:3260",), "10.0.0.1:3260", True),
        (("10.0.0.2:3260",), "10.0.0.1:3260", False),
        (("10.0.0.1:3261",), "10.0.0.1:3260", False),
        (("0.0.0.0:3260",), "10.0.0.1:3260", True),
        (("[::]:3260",), "10.0.0.1:3260", True),
        (("0.0.0.0:3261",), "10.0.0.1:3260", False),
        ((), "10.0.0.1:3260", False),
    ],
)
def test_serves(portals, want, ok):
    assert serves(portals, want) is ok


NS, OTHER = "net:[4026531833]", "net:[4026532999]"


@pytest.mark.parametrize(
    "ident, error",
    [
        (TgtIdentity(0, 42, NS, ("10.0.0.1:3260",)), None),
        (TgtIdentity(0, None, None, ("10.0.0.1:3260",)), None),  # pid invisible: portal decides
        (TgtIdentity(0, 42, OTHER, ("10.0.0.1:3260",)), "network namespace net:[4026532999]"),
        (TgtIdentity(0, 42, NS, ("10.253.7.1:3260",)), "it serves 10.253.7.1:3260, not"),
        (TgtIdentity(0, 42, NS, ()), "it serves no portal"),
    ],
)
def test_check_identity(ident, error):
    if error is None:
        check_identity(ident, want_portal="10.0.0.1:3260", want_netns=NS)
        return
    with pytest.raises(ExporterIdentityError) as exc:
        check_identity(ident, want_portal="10.0.0.1:3260", want_netns=NS)
    msg = str(exc.value)
    assert error in msg
    assert "control port 0" in msg and "portal wanted 10.0.0.1:3260" in msg
    assert "iscsi.tgt_control_port" in msg and "tgtadm -C 0 --op delete --mode system" in msg


def test_exporter_refuses_foreign_tgtd_before_export():
    r = FakeRunner().on(["tgtadm", "-C", "7", "--lld", "iscsi", "--op", "show", "--mode",
                         "portal"], "Portal: 10.253.7.1:3260,1\n")  # fmt: skip
    ex = TgtExporter(r, control_port=7, expect_portal="10.0.0.1:3260", expect_netns=None)
    from storage.exporters import ExportSpec

    spec = ExportSpec("iqn.2025-01.test.pxe:a", "/v/a", "iqn.2025-01.test.pxe:r", "a", "x" * 16)
    with pytest.raises(
        ExporterIdentityError, match=re.escape("10.253.7.1:3260, not 10.0.0.1:3260")
    ):
        ex.export(spec)
    assert not any("new" in c for c in r.calls)  # nothing changed on the stranger


@pytest.mark.parametrize("through", [None, "runner"])
def test_lio_portal_check(tmp_path, through):
    """Read directly, or through a Runner (a storage host's configfs: here a local sh)."""
    from storage.runner import Runner

    runner = Runner() if through else None
    iqn = "iqn.2025-01.test.pxe:a"
    (tmp_path / "iscsi" / iqn / "tpgt_1" / "np" / "10.0.0.1:3260").mkdir(parents=True)
    (tmp_path / "iscsi" / iqn / "tpgt_2" / "np" / "10.0.0.2:3260").mkdir(parents=True)
    assert lio_portals(str(tmp_path), iqn, runner) == ("10.0.0.1:3260", "10.0.0.2:3260")
    check_lio_portal(str(tmp_path), iqn, "10.0.0.1:3260", runner)
    check_lio_portal(str(tmp_path), "iqn.2025-01.test.pxe:absent", "10.9.9.9:3260", runner)
    (tmp_path / "iscsi" / "iqn.2025-01.test.pxe:b" / "tpgt_1" / "np").mkdir(parents=True)
    with pytest.raises(ExporterIdentityError, match="listens on no portal"):
        check_lio_portal(str(tmp_path), "iqn.2025-01.test.pxe:b", "10.0.0.1:3260", runner)
    with pytest.raises(
        ExporterIdentityError, match=re.escape("listens on 10.0.0.1:3260, 10.0.0.2:3260, not 10.9")
    ):
        check_lio_portal(str(tmp_path), iqn, "10.9.9.9:3260", runner)
