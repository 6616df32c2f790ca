"""iSCSI exporters (``tgt`` userspace, ``lio`` kernel), ExportSpec, reconcile, and the chooser.

``choose_exporter("auto")`` picks LIO when /sys/kernel/config/target exists,
else tgt; "lio" or "tgt" forces one.
"""

from __future__ import annotations

import os

from storage.backends.base import StorageError
from storage.exporters.base import (
    Exporter,
    ExporterUnavailable,
    ExportSpec,
    IscsiSession,
    check_iqn,
    new_chap_secret,
    reconcile,
)
from storage.exporters.identity import ExporterIdentityError, netns_named
from storage.exporters.lio import CONFIGFS, LioExporter
from storage.exporters.tgt import TgtDaemon, TgtExporter
from storage.runner import Runner

__all__ = [
    "ExportSpec",
    "Exporter",
    "ExporterIdentityError",
    "ExporterUnavailable",
    "IscsiSession",
    "LioExporter",
    "TgtDaemon",
    "TgtExporter",
    "check_iqn",
    "choose_exporter",
    "new_chap_secret",
    "reconcile",
]


def choose_exporter(
    setting: str = "auto",
    *,
    portal_ip: str,
    port: int = 3260,
    runner: Runner | None = None,
    tgt_control_port: int = 0,
    configfs: str = CONFIGFS,
) -> Exporter:
    """ "auto" -> LIO if ``configfs`` exists else tgt; "lio" / "tgt" force one (no check()).

    The tgt exporter expects its tgtd to serve ``portal_ip:port`` in this
    process's network namespace (checked by ``check()`` and before each export).
    """
    kind = setting
    if setting == "auto":
        kind = "lio" if os.path.isdir(configfs) else "tgt"
    match kind:
        case "lio":
            return LioExporter(portal_ip, port, configfs=configfs)
        case "tgt":
            return TgtExporter(
                runner,
                control_port=tgt_control_port,
                expect_portal=f"{portal_ip}:{port}",
                expect_netns=netns_named(None),
            )
        case _:
            raise StorageError(f"unknown exporter {setting!r} (auto, lio, tgt)")
