"""What an iSCSI export is (ExportSpec), the Exporter protocol, CHAP secrets, reconcile.

An export is one target with one LUN backed by one volume, reachable by one
initiator (ACL by initiator IQN) that must authenticate with CHAP. There is no
demo mode and no "ALL" binding anywhere in this package.

IQN syntax: RFC 3720 §3.2.6.3.1 ("iqn." yyyy-mm "." reversed domain [":" any]).
CHAP secret length: RFC 3720 §8.2.1 wants at least 96 bits (12 bytes) when
IPsec is not used; Microsoft's initiator accepts at most 16 characters.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from storage.backends.base import BackendUnavailable, StorageError

_IQN = re.compile(r"^iqn\.\d{4}-\d{2}\.[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[^\s]+)?$")
# Letters and digits only: safe in iPXE settings, iscsi:// URLs and shell lines.
CHAP_ALPHABET = string.ascii_letters + string.digits
CHAP_MIN, CHAP_MAX = 12, 16


class ExporterUnavailable(BackendUnavailable):
    """The exporter cannot work on this host; the message says why and what to use."""


def check_iqn(iqn: str, what: str = "IQN") -> str:
    if not iqn or not _IQN.match(iqn):
        raise StorageError(f"invalid {what} {iqn!r} (RFC 3720 §3.2.6.3.1: iqn.yyyy-mm.domain:x)")
    return iqn


def new_chap_secret(length: int = CHAP_MAX) -> str:
    """A fresh CHAP secret: ``length`` (12-16) random letters/digits from ``secrets``."""
    if not CHAP_MIN <= length <= CHAP_MAX:
        raise ValueError(f"CHAP secret length must be {CHAP_MIN}-{CHAP_MAX}")
    return "".join(secrets.choice(CHAP_ALPHABET) for _ in range(length))


@dataclass(frozen=True)
class ExportSpec:
    """One target, one LUN, one allowed initiator, optional (but expected) CHAP."""

    target_iqn: str
    path: str
    initiator_iqn: str
    chap_user: str | None = None
    chap_secret: str | None = field(default=None, repr=False)
    lun: int | None = None  # None: the exporter's default_lun (tgt 1, LIO 0)

    def validate(self) -> ExportSpec:
        check_iqn(self.target_iqn, "target IQN")
        check_iqn(self.initiator_iqn, "initiator IQN")  # never "ALL"
        if (self.chap_user is None) != (self.chap_secret is None):
            raise StorageError("chap_user and chap_secret go together")
        if self.chap_secret is not None and not CHAP_MIN <= len(self.chap_secret) <= CHAP_MAX:
            raise StorageError(f"CHAP secret must be {CHAP_MIN}-{CHAP_MAX} characters")
        if self.chap_user is not None and not re.fullmatch(
            r"[A-Za-z0-9._:@-]{1,64}", self.chap_user
        ):
            raise StorageError(f"invalid CHAP user {self.chap_user!r}")
        if not self.path.startswith("/"):
            raise StorageError(f"backing path must be absolute: {self.path!r}")
        return self

    def with_lun(self, default_lun: int) -> ExportSpec:
        return self if self.lun is not None else replace(self, lun=default_lun)

    def key(self) -> tuple:
        """Identity for reconcile: everything but the secret (targets never show it)."""
        return (self.target_iqn, self.path, self.lun, self.initiator_iqn, self.chap_user)


@dataclass(frozen=True)
class IscsiSession:
    """A logged-in initiator of one target (tgt's I_T nexus, LIO's ACL session)."""

    initiator_iqn: str
    addresses: tuple[str, ...] = ()


@runtime_checkable
class Exporter(Protocol):
    kind: str
    default_lun: int

    def check(self) -> None: ...
    def export(self, spec: ExportSpec) -> ExportSpec: ...
    def unexport(self, target_iqn: str) -> None: ...
    def list_exports(self) -> list[ExportSpec]: ...
    def sessions(self, target_iqn: str) -> list[IscsiSession]: ...


def reconcile(exporter: Exporter, wanted: Iterable[ExportSpec]) -> tuple[list[str], list[str]]:
    """Make the exporter serve exactly ``wanted``; returns (added, removed) target IQNs.

    A target whose LUN path, initiator or CHAP user changed is removed and
    re-added (it appears in both lists). Secrets are not visible in a target's
    state, so a secret-only change is applied by ``export`` of a new spec after
    ``unexport``; reconcile does not detect it.
    """
    want = {s.target_iqn: s.with_lun(exporter.default_lun) for s in wanted}
    have = {s.target_iqn: s for s in exporter.list_exports()}
    removed = [iqn for iqn, s in have.items() if iqn not in want or want[iqn].key() != s.key()]
    for iqn in removed:
        exporter.unexport(iqn)
    added = [iqn for iqn, s in want.items() if iqn in removed or iqn not in have]
    for iqn in added:
        exporter.export(want[iqn])
    return added, removed
