"""tgt exporter: show parsing (real recorded output) and exact tgtadm command sequences."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.backends import StorageError
from storage.exporters import ExportSpec, IscsiSession, TgtDaemon, TgtExporter
from storage.exporters.tgt import parse_show
from storage.runner import FakeRunner, Result

FIX = Path(__file__).parent / "fixtures" / "storage"
TWO = (FIX / "tgtadm-show-two-targets.txt").read_text()
ADM = ["tgtadm", "-C", "7", "--lld", "iscsi"]
SECRET = "Secr3tSecr3tAB"


def spec(**kw) -> ExportSpec:
    base = dict(target_iqn="iqn.2025-01.test.pxe:host05", path="/srv/san/host05.img",
                initiator_iqn="iqn.2025-01.test.pxe:init05", chap_user="host05",
                chap_secret=SECRET)  # fmt: skip
    return ExportSpec(**{**base, **kw})


def tgt(show: str = TWO) -> tuple[TgtExporter, FakeRunner]:
    r = FakeRunner().on([*ADM, "--op", "show"], show)
    return TgtExporter(r, control_port=7), r


def mutations(r: FakeRunner) -> list[list[str]]:
    """tgtadm calls (without the common prefix) and, as ["account", ...], tgt_ipc's script."""
    return [c[len(ADM) :] if c[0] == "tgtadm" else ["account", *c[3:]]
            for c in r.calls if "show" not in c]  # fmt: skip


def test_sessions_from_the_i_t_nexus_section():
    """tgtadm-show-session.txt: recorded with one iscsi-perf login (test_iscsi_tgt)."""
    ex, _ = tgt((FIX / "tgtadm-show-session.txt").read_text())
    assert ex.sessions("iqn.2025-01.test.provisiond:host01") == [
        IscsiSession("iqn.2025-01.test.provisiond:init01", ("10.111.0.2",))
    ]
    assert ex.sessions("iqn.2025-01.test.provisiond:other") == []
    ex, _ = tgt(TWO)  # targets without logins
    assert ex.sessions("iqn.2025-01.test.pxe:host01") == []


def test_parse_real_show_output():
    t1, t3 = parse_show(TWO)
    assert (t1.tid, t1.iqn, t1.luns, t1.accounts, t1.acls) == (
        1, "iqn.2025-01.test.pxe:host01", {1: "/tmp/tgtrec/a.img"}, ["host01"],
        ["iqn.2025-01.test.pxe:init01"])  # fmt: skip
    assert (t3.tid, t3.luns, t3.accounts, t3.acls) == (3, {1: "/tmp/tgtrec/b.img"}, [], [])
    assert parse_show((FIX / "tgtadm-show-empty.txt").read_text()) == []


def test_list_exports():
    ex, _ = tgt()
    first = ex.list_exports()[0]
    assert first.key() == ("iqn.2025-01.test.pxe:host01", "/tmp/tgtrec/a.img", 1,
                           "iqn.2025-01.test.pxe:init01", "host01")  # fmt: skip


def test_export_new_target_exact_commands():
    ex, r = tgt()
    out = ex.export(spec())
    assert out.lun == 1
    assert mutations(r) == [
        ["--op", "new", "--mode", "target", "--tid", "4", "-T", "iqn.2025-01.test.pxe:host05"],
        ["--op", "new", "--mode", "logicalunit", "--tid", "4", "--lun", "1", "--bstype", "rdwr",
         "-b", "/srv/san/host05.img"],
        ["--op", "bind", "--mode", "target", "--tid", "4", "--initiator-name",
         "iqn.2025-01.test.pxe:init05"],
        ["--op", "delete", "--mode", "account", "--user", "host05"],
        ["account", "7"],  # tgt_ipc.SCRIPT on control port 7; user and secret on its stdin
        ["--op", "bind", "--mode", "account", "--tid", "4", "--user", "host05"],
    ]  # fmt: skip
    assert not any("ALL" in c for c in r.calls)
    assert not any(SECRET in line for line in r.logged)
    assert not any(SECRET in arg for c in r.calls for arg in c)  # no command line holds it


def test_export_matching_target_is_noop():
    ex, r = tgt()
    ex.export(spec(target_iqn="iqn.2025-01.test.pxe:host01", path="/tmp/tgtrec/a.img",
                   initiator_iqn="iqn.2025-01.test.pxe:init01", chap_user="host01"))  # fmt: skip
    assert mutations(r) == []


def test_export_changed_target_is_replaced():
    ex, r = tgt()
    ex.export(spec(target_iqn="iqn.2025-01.test.pxe:host01", chap_user="host01"))
    m = mutations(r)
    assert m[0] == ["--op", "delete", "--mode", "target", "--force", "--tid", "1"]
    assert m[1] == ["--op", "delete", "--mode", "account", "--user", "host01"]
    assert m[2][:6] == ["--op", "new", "--mode", "target", "--tid", "4"]


def test_export_rolls_back_on_failure():
    ex, r = tgt()
    r.on([*ADM, "--op", "new", "--mode", "logicalunit"], Result(22, "", "tgtadm: invalid request"))
    with pytest.raises(Exception, match="invalid request"):
        ex.export(spec())
    assert mutations(r)[-1] == ["--op", "delete", "--mode", "target", "--force", "--tid", "4"]


def test_chap_user_of_another_target_refused():
    ex, _ = tgt()
    with pytest.raises(StorageError, match="already serves another target"):
        ex.export(spec(chap_user="host01"))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"lun": 0}, "LUN 0 is the target's controller"),
        ({"initiator_iqn": "ALL"}, "initiator IQN"),
        ({"chap_secret": "short"}, "12-16"),
        ({"chap_secret": None}, "go together"),
        ({"path": "relative.img"}, "absolute"),
    ],
)
def test_export_rejects(bad, match):
    ex, r = tgt()
    with pytest.raises(StorageError, match=match):
        ex.export(spec(**bad))
    assert mutations(r) == []


def test_unexport_deletes_target_and_its_account():
    ex, r = tgt()
    ex.unexport("iqn.2025-01.test.pxe:host01")
    assert mutations(r) == [
        ["--op", "delete", "--mode", "target", "--force", "--tid", "1"],
        ["--op", "delete", "--mode", "account", "--user", "host01"],
    ]
    ex2, r2 = tgt()
    ex2.unexport("iqn.2025-01.test.pxe:absent")
    assert mutations(r2) == []


def test_daemon_argv_in_netns():
    d = TgtDaemon("10.77.0.1", 3260, control_port=9, netns="pxe0", runner=FakeRunner())
    assert d.argv() == ["nsenter", "--net=/run/netns/pxe0", "tgtd", "-f", "-C", "9",
                        "--iscsi", "portal=10.77.0.1:3260"]  # fmt: skip


def test_daemon_refuses_when_control_port_taken():
    r = FakeRunner().on(["tgtadm", "-C", "9", "--op", "show", "--mode", "system"], "System:")
    with pytest.raises(StorageError, match="already answers"):
        TgtDaemon("10.77.0.1", control_port=9, runner=r).start()
