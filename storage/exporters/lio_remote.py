"""``RemoteLioExporter``: LIO on a storage host, through the shipped helper over SSH.

Owns the server's side of driving a remote host's kernel target. rtslib-fb
needs the host's own configfs, so each operation is one SSH exec of
``python3 -c BOOTSTRAP`` on the host, with :mod:`storage.exporters.lio_helper`
and the modules it needs sent on stdin (see that module). The interface is
the :class:`~storage.exporters.base.Exporter` protocol, plus
:meth:`RemoteLioExporter.reconcile_all` that reconciles in one exec.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from storage.backends.base import StorageError
from storage.exporters import lio_helper
from storage.exporters.base import ExporterUnavailable, ExportSpec, IscsiSession
from storage.runner import Runner

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("storage", "storage.backends", "storage.exporters")
MODULES = (
    "storage.backends.base",
    "storage.exporters.base",
    "storage.exporters.identity",
    "storage.exporters.lio",
    "storage.exporters.lio_helper",
)


def payload(request: dict) -> str:
    """The JSON document the helper reads on stdin: packages, module sources, request."""
    mods = [[m, (ROOT / (m.replace(".", "/") + ".py")).read_text()] for m in MODULES]
    return json.dumps({"packages": list(PACKAGES), "modules": mods, "request": request})


def command(python: str = "python3") -> list[str]:
    return [python, "-c", lio_helper.BOOTSTRAP]


class RemoteLioExporter:
    kind = "lio"
    default_lun = 0

    def __init__(self, runner: Runner, portal_ip: str, port: int = 3260, host: str = "") -> None:
        self.runner, self.portal_ip, self.port = runner, portal_ip, port
        self.host = host or portal_ip

    def _call(self, op: str, timeout: float = 60.0, **args) -> dict:
        request = {"op": op, "portal_ip": self.portal_ip, "port": self.port, **args}
        res = self.runner.run(command(), input=payload(request), timeout=timeout, check=False)
        line = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            why = (res.stderr.strip() or res.stdout.strip() or f"exit {res.rc}")[-400:]
            if res.rc == 127:
                raise ExporterUnavailable(
                    f"lio on {self.host}: python3 missing (apt-get install python3 "
                    f"python3-rtslib-fb there): {why}"
                )
            raise StorageError(f"lio on {self.host}: helper failed ({op}): {why}")
        if not reply.get("ok"):
            cls = ExporterUnavailable if reply.get("unavailable") else StorageError
            raise cls(f"lio on {self.host}: {op} failed: {reply.get('error')}")
        return reply

    # -- Exporter protocol ---------------------------------------------------
    def check(self) -> None:
        self._call("check")

    def list_exports(self) -> list[ExportSpec]:
        return [ExportSpec(**d) for d in self._call("list")["exports"]]

    def sessions(self, target_iqn: str) -> list[IscsiSession]:
        rows = self._call("sessions", target_iqn=target_iqn)["sessions"]
        return [IscsiSession(iqn, tuple(addrs)) for iqn, addrs in rows]

    def export(self, spec: ExportSpec) -> ExportSpec:
        spec = spec.with_lun(self.default_lun).validate()
        self._call("export", spec=lio_helper.spec_dict(spec, secret=True))
        return spec

    def unexport(self, target_iqn: str) -> None:
        self._call("unexport", target_iqn=target_iqn)

    def reconcile_all(self, wanted: Iterable[ExportSpec]) -> tuple[list[str], list[str]]:
        """:func:`~storage.exporters.base.reconcile` run on the host, in one exec."""
        specs = [lio_helper.spec_dict(s.with_lun(self.default_lun), secret=True) for s in wanted]
        reply = self._call("reconcile", wanted=specs, timeout=300.0)
        return reply["added"], reply["removed"]
