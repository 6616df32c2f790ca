"""LVM backend and LIO exporter against the real host, when it has them.

Here (no device-mapper, no configfs) both skip with the exact reason their
``check()`` gives. LVM runs only with a scratch VG named in PROVISIOND_TEST_VG.
"""

from __future__ import annotations

import os

import pytest

from storage.backends import BackendUnavailable, LvmBackend
from storage.exporters import ExporterUnavailable, ExportSpec, LioExporter, new_chap_secret

pytestmark = pytest.mark.interop
MiB = 1 << 20


def test_lvm_create_clone_delete():
    vg = os.environ.get("PROVISIOND_TEST_VG", "provisiond-test")
    lvm = LvmBackend(vg, thin_pool=os.environ.get("PROVISIOND_TEST_THINPOOL"))
    try:
        lvm.check()
    except BackendUnavailable as e:
        pytest.skip(reason=str(e))
    golden = lvm.create("pvtest-golden", 64 * MiB)
    try:
        clone = lvm.clone("pvtest-golden", "pvtest-clone")
        assert clone.origin == "pvtest-golden" and os.path.exists(clone.path)
        assert {"pvtest-golden", "pvtest-clone"} <= {v.name for v in lvm.list()}
    finally:
        lvm.delete("pvtest-clone")
        lvm.delete(golden.name)
    assert lvm.get("pvtest-clone") is None


def test_lio_export_roundtrip(tmp_path):
    lio = LioExporter("127.0.0.1", 13260)
    try:
        lio.check()
    except ExporterUnavailable as e:
        pytest.skip(reason=str(e))
    img = tmp_path / "lio.img"
    img.write_bytes(bytes(MiB))
    iqn = "iqn.2025-01.test.provisiond:lio-roundtrip"
    spec = ExportSpec(iqn, str(img), "iqn.2025-01.test.provisiond:init", "u", new_chap_secret())
    try:
        lio.export(spec)
        assert [s.key() for s in lio.list_exports() if s.target_iqn == iqn] == [
            spec.with_lun(0).key()
        ]
    finally:
        lio.unexport(iqn)
    assert all(s.target_iqn != iqn for s in lio.list_exports())
