"""The LIO helper: runs on a storage host, drives rtslib-fb there, speaks JSON on stdin/stdout.

Owns the storage host's side of :mod:`storage.exporters.lio_remote`. It is
not installed on the host: every call ships this module and the pure modules
it needs (``storage.backends.base``, ``storage.exporters.base``,
``storage.exporters.lio``) in one JSON document on stdin, together with the
request, and runs them with the host's ``python3`` (Debian: python3-rtslib-fb).
So the host runs exactly the :class:`~storage.exporters.lio.LioExporter` code
this server has, one SSH exec per operation, and CHAP secrets travel only on
stdin (never on a command line the host's ``ps`` shows).

Request: ``{"op": "check"|"list"|"sessions"|"export"|"unexport"|"reconcile",
"portal_ip": …, "port": …, …}``. Reply (one JSON line): ``{"ok": true, …}``
or ``{"ok": false, "error": "…", "unavailable": bool}``.
"""

from __future__ import annotations

import json
import sys

FIELDS = ("target_iqn", "path", "initiator_iqn", "chap_user", "chap_secret", "lun")

#: Run by ``python3 -c`` on the host: load the shipped modules, then call main().
BOOTSTRAP = (
    "import json,sys,types\n"
    "d=json.load(sys.stdin)\n"
    "for n in d['packages']:\n"
    " m=types.ModuleType(n);m.__path__=[];sys.modules[n]=m\n"
    "for n,s in d['modules']:\n"
    " m=types.ModuleType(n);m.__file__='<'+n+'>';sys.modules[n]=m\n"
    " exec(compile(s,m.__file__,'exec'),m.__dict__)\n"
    "sys.exit(sys.modules['storage.exporters.lio_helper'].main(d['request']))\n"
)


def spec_dict(spec, secret: bool = False) -> dict:
    d = {f: getattr(spec, f) for f in FIELDS}
    if not secret:
        d["chap_secret"] = None
    return d


def handle(request: dict) -> dict:
    from storage.exporters.base import ExportSpec, reconcile
    from storage.exporters.lio import LioExporter

    exp = LioExporter(request["portal_ip"], int(request.get("port", 3260)))
    op = request["op"]
    if op == "check":
        exp.check()
        return {}
    exp.check()
    if op == "list":
        return {"exports": [spec_dict(s) for s in exp.list_exports()]}
    if op == "sessions":
        return {"sessions": [[s.initiator_iqn, list(s.addresses)]
                             for s in exp.sessions(request["target_iqn"])]}  # fmt: skip
    if op == "export":
        spec = exp.export(ExportSpec(**request["spec"]))
        return {"export": spec_dict(spec)}
    if op == "unexport":
        exp.unexport(request["target_iqn"])
        return {}
    if op == "reconcile":
        added, removed = reconcile(exp, [ExportSpec(**d) for d in request["wanted"]])
        return {"added": added, "removed": removed}
    raise ValueError(f"unknown op {op!r}")


def main(request: dict) -> int:
    from storage.exporters.base import ExporterUnavailable

    try:
        reply = {"ok": True, **handle(request)}
    except ExporterUnavailable as exc:
        reply = {"ok": False, "unavailable": True, "error": str(exc)}
    except Exception as exc:  # reported to the server, which raises it as StorageError
        reply = {"ok": False, "unavailable": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(reply) + "\n")
    return 0 if reply["ok"] else 1
