"""``lio`` exporter: the kernel iSCSI target (LIO) through rtslib-fb.

One export = target + TPG 1 with a network portal, LUN 0 on a block (block
device) or fileio (regular file) backstore, and one node ACL for the allowed
initiator carrying its CHAP credentials and a mapped LUN. The TPG is locked
down: authentication=1, generate_node_acls=0 (no demo mode), cache_dynamic_acls=0,
demo_mode_write_protect=1. ``check()`` says exactly why LIO cannot work on a
host (no /sys/kernel/config/target, rtslib-fb missing). Before an export
replaces or keeps a target that already exists, its portal list in configfs
must hold our portal (:func:`storage.exporters.identity.check_lio_portal`):
a target of that name serving elsewhere was made by another tool.

rtslib-fb is imported lazily (``rts`` may be injected: unit tests pass a fake
module, since this host has no configfs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from types import ModuleType

from storage.exporters.base import ExporterUnavailable, ExportSpec, IscsiSession
from storage.exporters.identity import check_lio_portal

CONFIGFS = "/sys/kernel/config/target"
TPG_ATTRIBUTES = {
    "authentication": "1",
    "generate_node_acls": "0",
    "cache_dynamic_acls": "0",
    "demo_mode_write_protect": "1",
}


def backstore_name(target_iqn: str) -> str:
    """A stable, short, configfs-safe backstore name for a target."""
    tail = target_iqn.rsplit(":", 1)[-1]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in tail)[:40]
    return f"pv-{safe}-{hashlib.sha256(target_iqn.encode()).hexdigest()[:8]}"


class LioExporter:
    kind = "lio"
    default_lun = 0

    def __init__(
        self,
        portal_ip: str,
        port: int = 3260,
        *,
        configfs: str = CONFIGFS,
        rts: ModuleType | None = None,
    ) -> None:
        self.portal_ip, self.port, self.configfs = portal_ip, port, configfs
        self._rts = rts

    @property
    def rts(self) -> ModuleType:
        if self._rts is None:
            try:
                import rtslib_fb
            except ImportError as e:
                raise ExporterUnavailable(
                    f'lio: rtslib-fb not importable ({e}); use exporter = "tgt"'
                )
            self._rts = rtslib_fb
        return self._rts

    # -- protocol -------------------------------------------------------
    def check(self) -> None:
        if not os.path.isdir(self.configfs):
            raise ExporterUnavailable(
                f"lio: {self.configfs} missing (configfs not mounted or target_core_mod "
                'not loaded: no LIO in this kernel); use exporter = "tgt"'
            )
        self.rts  # noqa: B018 - import check

    def list_exports(self) -> list[ExportSpec]:
        out = []
        for target in self.rts.RTSRoot().targets:
            if target.fabric_module.name != "iscsi":
                continue
            for tpg in target.tpgs:
                out.extend(_tpg_specs(target.wwn, tpg))
        return out

    def sessions(self, target_iqn: str) -> list[IscsiSession]:
        """Logged-in initiators: each node ACL's ``info`` in configfs (rtslib's session)."""
        out = []
        for target in self.rts.RTSRoot().targets:
            if target.wwn != target_iqn or target.fabric_module.name != "iscsi":
                continue
            for tpg in target.tpgs:
                for acl in tpg.node_acls:
                    sess = acl.session
                    if sess and sess.get("state") == "LOGGED_IN":
                        addrs = tuple(c.get("address", "") for c in sess.get("connections", []))
                        out.append(IscsiSession(acl.node_wwn, addrs))
        return out

    def export(self, spec: ExportSpec) -> ExportSpec:
        spec = spec.with_lun(self.default_lun).validate()
        current = next((s for s in self.list_exports() if s.target_iqn == spec.target_iqn), None)
        if current is not None:
            check_lio_portal(self.configfs, spec.target_iqn, f"{self.portal_ip}:{self.port}")
            if current.key() == spec.key():
                return spec
            self.unexport(spec.target_iqn)
        so = self._storage_object(spec)
        target = None
        try:
            target = self.rts.Target(self.rts.FabricModule("iscsi"), spec.target_iqn, mode="create")
            self._build_tpg(target, so, spec)
        except BaseException:
            if target is not None:
                with contextlib.suppress(Exception):
                    target.delete()
            with contextlib.suppress(Exception):
                so.delete()
            raise
        return spec

    def unexport(self, target_iqn: str) -> None:
        for target in self.rts.RTSRoot().targets:
            if target.wwn != target_iqn or target.fabric_module.name != "iscsi":
                continue
            objects = [lun.storage_object for tpg in target.tpgs for lun in tpg.luns]
            target.delete()
            for so in objects:
                with contextlib.suppress(Exception):
                    so.delete()

    # -- helpers ----------------------------------------------------------
    def _storage_object(self, spec: ExportSpec):
        name = backstore_name(spec.target_iqn)
        st = os.stat(spec.path)
        if stat.S_ISBLK(st.st_mode):
            return self.rts.BlockStorageObject(name, dev=spec.path)
        return self.rts.FileIOStorageObject(name, dev=spec.path, size=st.st_size)

    def _build_tpg(self, target, so, spec: ExportSpec) -> None:
        rts = self.rts
        tpg = rts.TPG(target, 1, mode="create")
        for attr, value in TPG_ATTRIBUTES.items():
            tpg.set_attribute(attr, value)
        lun = rts.LUN(tpg, spec.lun, so)
        rts.NetworkPortal(tpg, self.portal_ip, self.port, mode="create")
        acl = rts.NodeACL(tpg, spec.initiator_iqn, mode="create")
        if spec.chap_user is not None:
            acl.chap_userid = spec.chap_user
            acl.chap_password = spec.chap_secret
        rts.MappedLUN(acl, spec.lun, lun)
        tpg.enable = True


def _tpg_specs(iqn: str, tpg) -> list[ExportSpec]:
    acls = list(tpg.node_acls)
    initiator = acls[0].node_wwn if acls else ""
    user = (acls[0].chap_userid or None) if acls else None
    return [
        ExportSpec(iqn, lun.storage_object.udev_path, initiator, user, None, lun.lun)
        for lun in tpg.luns
    ]
