"""LIO exporter decision logic against a fake rtslib-fb module (no configfs on this host)."""

from __future__ import annotations

import types

import pytest

from storage.exporters import ExporterUnavailable, ExportSpec, IscsiSession, LioExporter
from storage.exporters.lio import TPG_ATTRIBUTES, backstore_name


class FakeRts:
    """Records what a real rtslib-fb would be asked to build."""

    def __init__(self):
        self.log: list[tuple] = []
        self.targets: list = []
        rts = self

        class Obj:
            def __init__(self, *a, **kw):
                self.args, self.kw = a, kw
                self.deleted = False
                rts.log.append((type(self).__name__, a, kw))

            def delete(self):
                self.deleted = True
                rts.log.append(("delete", type(self).__name__))

        class FabricModule(Obj):
            name = "iscsi"

        class Target(Obj):
            def __init__(self, fm, wwn, mode):
                super().__init__(fm, wwn, mode=mode)
                self.fabric_module, self.wwn, self.tpgs = fm, wwn, []
                rts.targets.append(self)

            def delete(self):
                super().delete()
                rts.targets.remove(self)

        class TPG(Obj):
            def __init__(self, target, tag, mode):
                super().__init__(target.wwn, tag, mode=mode)
                self.attrs, self.luns, self.node_acls, self.enable = {}, [], [], False
                target.tpgs.append(self)

            def set_attribute(self, k, v):
                self.attrs[k] = v

        class LUN(Obj):
            def __init__(self, tpg, lun, so):
                super().__init__(lun, so.kw["dev"])
                self.lun, self.storage_object = lun, so
                tpg.luns.append(self)

        class StorageObject(Obj):
            @property
            def udev_path(self):
                return self.kw["dev"]

        class NodeACL(Obj):
            def __init__(self, tpg, wwn, mode):
                super().__init__(wwn, mode=mode)
                self.node_wwn, self.chap_userid, self.chap_password = wwn, "", ""
                self.session = None  # rtslib parses <acl>/info; None = "No active ..."
                tpg.node_acls.append(self)

        class MappedLUN(Obj):
            def __init__(self, acl, mapped, tpg_lun):
                super().__init__(acl.node_wwn, mapped, tpg_lun.lun)

        ns = dict(FabricModule=FabricModule, Target=Target, TPG=TPG, LUN=LUN, NodeACL=NodeACL,
                  MappedLUN=MappedLUN, NetworkPortal=type("NetworkPortal", (Obj,), {}),
                  FileIOStorageObject=type("FileIOStorageObject", (StorageObject,), {}),
                  BlockStorageObject=type("BlockStorageObject", (StorageObject,), {}),
                  RTSRoot=lambda: types.SimpleNamespace(targets=list(rts.targets)))  # fmt: skip
        self.module = types.SimpleNamespace(**ns)


@pytest.fixture
def lio(tmp_path):
    img = tmp_path / "host01.img"
    img.write_bytes(b"\0" * 4096)
    fake = FakeRts()
    spec = ExportSpec("iqn.2025-01.test.pxe:host01", str(img), "iqn.2025-01.test.pxe:init01",
                      "host01", "Secr3tSecr3tAB")  # fmt: skip
    return LioExporter("10.77.0.1", 3260, configfs=str(tmp_path), rts=fake.module), fake, spec


def test_sessions_are_the_logged_in_acl_sessions(lio):
    """rtslib's NodeACL.session shape (rtslib_fb/target.py _get_session); no LIO here."""
    ex, fake, spec = lio
    ex.export(spec)
    assert ex.sessions(spec.target_iqn) == []
    (acl,) = fake.targets[0].tpgs[0].node_acls
    acl.session = {"state": "LOGGED_IN", "connections": [{"cid": 0, "address": "10.77.0.50"}]}
    assert ex.sessions(spec.target_iqn) == [IscsiSession(spec.initiator_iqn, ("10.77.0.50",))]
    assert ex.sessions("iqn.2025-01.test.pxe:other") == []
    acl.session = {"state": "FAILED", "connections": []}
    assert ex.sessions(spec.target_iqn) == []


def test_export_builds_locked_down_tpg(lio):
    ex, fake, spec = lio
    out = ex.export(spec)
    assert out.lun == 0
    (target,) = fake.targets
    (tpg,) = target.tpgs
    assert tpg.attrs == TPG_ATTRIBUTES and tpg.attrs["generate_node_acls"] == "0"
    assert tpg.enable is True
    (acl,) = tpg.node_acls
    assert (acl.node_wwn, acl.chap_userid, acl.chap_password) == (
        "iqn.2025-01.test.pxe:init01",
        "host01",
        "Secr3tSecr3tAB",
    )
    kinds = [e[0] for e in fake.log]
    assert kinds.index("FileIOStorageObject") < kinds.index("LUN") < kinds.index("MappedLUN")
    portal = next(e for e in fake.log if e[0] == "NetworkPortal")
    assert portal[1][1:] == ("10.77.0.1", 3260)
    so = next(e for e in fake.log if e[0] == "FileIOStorageObject")
    assert so[1] == (backstore_name(spec.target_iqn),) and so[2]["size"] == 4096


def test_export_is_idempotent_and_list_roundtrips(lio):
    ex, fake, spec = lio
    ex.export(spec)
    n = len(fake.log)
    ex.export(spec)
    assert len(fake.log) == n
    assert [s.key() for s in ex.list_exports()] == [spec.with_lun(0).key()]


def test_changed_export_replaced_and_unexport_deletes_backstore(lio):
    ex, fake, spec = lio
    ex.export(spec)
    ex.export(ExportSpec(spec.target_iqn, spec.path, "iqn.2025-01.test.pxe:other", "host01",
                         "Secr3tSecr3tAB"))  # fmt: skip
    assert ("delete", "Target") in fake.log and ("delete", "FileIOStorageObject") in fake.log
    assert fake.targets[0].tpgs[0].node_acls[0].node_wwn == "iqn.2025-01.test.pxe:other"
    ex.unexport(spec.target_iqn)
    ex.unexport(spec.target_iqn)
    assert fake.targets == []


def test_failure_rolls_back(lio):
    ex, fake, spec = lio

    def boom(*a, **kw):
        raise OSError("configfs write failed")

    fake.module.NodeACL = boom
    with pytest.raises(OSError):
        ex.export(spec)
    assert fake.targets == [] and ("delete", "FileIOStorageObject") in fake.log


def test_check_exact_reason_without_configfs(tmp_path):
    ex = LioExporter("10.77.0.1", configfs=str(tmp_path / "target"))
    with pytest.raises(ExporterUnavailable) as ei:
        ex.check()
    assert str(ei.value) == (
        f"lio: {tmp_path / 'target'} missing (configfs not mounted or target_core_mod not "
        'loaded: no LIO in this kernel); use exporter = "tgt"')  # fmt: skip


def test_backstore_name_stable_and_safe():
    a = backstore_name("iqn.2025-01.test.pxe:host/01 x")
    assert a == backstore_name("iqn.2025-01.test.pxe:host/01 x") and "/" not in a and " " not in a
    assert a != backstore_name("iqn.2025-01.test.pxe:host_01_x")
