"""ExportSpec validation, CHAP secrets, reconcile and the exporter chooser."""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import pytest

from storage.backends import StorageError
from storage.exporters import (
    ExportSpec,
    LioExporter,
    TgtExporter,
    choose_exporter,
    new_chap_secret,
    reconcile,
)


def test_chap_secrets():
    seen = {new_chap_secret() for _ in range(50)}
    assert len(seen) == 50
    assert all(len(s) == 16 and set(s) <= set(string.ascii_letters + string.digits) for s in seen)
    assert len(new_chap_secret(12)) == 12
    for bad in (11, 17):
        with pytest.raises(ValueError):
            new_chap_secret(bad)


def test_secret_not_in_repr():
    s = ExportSpec("iqn.2025-01.a.b:t", "/x", "iqn.2025-01.a.b:i", "u", "Secr3tSecr3tAB")
    assert "Secr3t" not in repr(s)


@pytest.mark.parametrize(
    "iqn, ok",
    [("iqn.2025-01.test.pxe:host01", True), ("iqn.1991-05.com.microsoft:pc-1", True),
     ("iqn.2025-01.test", True), ("ALL", False), ("iqn.25-01.test:x", False),
     ("eui.02004567A425678D", False), ("iqn.2025-01.Test:x", False), ("", False)],
)  # fmt: skip
def test_iqn_validation(iqn, ok):
    spec = ExportSpec("iqn.2025-01.a.b:t", "/x", iqn)
    if ok:
        spec.validate()
    else:
        with pytest.raises(StorageError):
            spec.validate()


@dataclass
class MemExporter:
    kind: str = "mem"
    default_lun: int = 1
    have: dict = field(default_factory=dict)
    ops: list = field(default_factory=list)

    def check(self): ...

    def export(self, spec):
        self.ops.append(("export", spec.target_iqn))
        self.have[spec.target_iqn] = spec.with_lun(1)
        return spec

    def unexport(self, iqn):
        self.ops.append(("unexport", iqn))
        self.have.pop(iqn, None)

    def list_exports(self):
        return list(self.have.values())

    def sessions(self, target_iqn):
        return []


def S(n: int, path: str = "/v/x", user: str | None = None) -> ExportSpec:
    return ExportSpec(f"iqn.2025-01.t.p:h{n}", path, "iqn.2025-01.t.p:i", user,
                      "Secr3tSecr3tAB" if user else None)  # fmt: skip


def test_reconcile():
    ex = MemExporter()
    assert reconcile(ex, [S(1), S(2)]) == (["iqn.2025-01.t.p:h1", "iqn.2025-01.t.p:h2"], [])
    assert reconcile(ex, [S(1), S(2)]) == ([], [])
    added, removed = reconcile(ex, [S(1, path="/v/y"), S(3)])
    assert removed == ["iqn.2025-01.t.p:h1", "iqn.2025-01.t.p:h2"]
    assert added == ["iqn.2025-01.t.p:h1", "iqn.2025-01.t.p:h3"]
    assert ex.have["iqn.2025-01.t.p:h1"].path == "/v/y"
    assert reconcile(ex, []) == ([], ["iqn.2025-01.t.p:h1", "iqn.2025-01.t.p:h3"])
    assert ex.have == {}


@pytest.mark.parametrize(
    "setting, configfs_exists, cls",
    [("auto", True, LioExporter), ("auto", False, TgtExporter), ("tgt", True, TgtExporter),
     ("lio", False, LioExporter)],
)  # fmt: skip
def test_choose_exporter(tmp_path, setting, configfs_exists, cls):
    cfs = tmp_path / "target"
    if configfs_exists:
        cfs.mkdir()
    ex = choose_exporter(setting, portal_ip="10.0.0.1", configfs=str(cfs))
    assert type(ex) is cls
    assert ex.default_lun == (0 if cls is LioExporter else 1)


def test_choose_unknown():
    with pytest.raises(StorageError):
        choose_exporter("iet", portal_ip="10.0.0.1")
