"""Install endpoints (``/install/v1``): what an installing machine fetches and calls.

Views only; the work is in :mod:`provisiond.templatedeploy` and
:mod:`provisiond.rootfs`.

=========================================  =====================================
GET  /install/v1/bundle/<cmd>               the rendered set (tar) of install
                                            command <cmd>; agent bearer token,
                                            only while the command runs (else 410)
GET  /install/v1/rootfs/<name>.tar.zst      the root file-system archive (Range
                                            requests; it holds no secrets: no
                                            host keys, no passwords)
POST /install/v1/done                       the installed OS reports in, once:
                                            ``Authorization: Bearer <one-time
                                            token>``, form hostname=, hostkey=;
                                            also a local deploy's booted OS
                                            (token from its disk's report-in
                                            slot, provisiond/reportslot.py)
GET  /install/v1/<res>/<token>/progress/<s> an installer reports step <s> (a
                                            word) into the install job's log;
                                            same token, same rule (else 404)
GET  /install/v1/<res>/<token>/<file>       an installer's answer file (preseed,
                                            ks.cfg, user-data, ...), rendered
                                            for that resource; only while it
                                            installs: 404 otherwise
=========================================  =====================================
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request, send_file

from provisiond import logs, rootfs, templatedeploy
from provisiond.context import Context
from provisiond.templating import check_name
from web.stream import agent_auth

bp = Blueprint("install", __name__, url_prefix="/install/v1")
log = logs.get("http")


def _ctx() -> Context:
    return current_app.extensions["provisiond"]


@bp.get("/bundle/<int:cmd_id>")
@agent_auth
def bundle(resource_id: int, cmd_id: int):
    path = templatedeploy.bundle_for(_ctx(), resource_id, cmd_id)
    return send_file(path, mimetype="application/x-tar", max_age=0)


@bp.get("/rootfs/<name>.tar.zst")
def rootfs_archive(name: str):
    check_name(name, "rootfs name")
    return send_file(rootfs.archive_path(name), mimetype="application/zstd", conditional=True)


@bp.post("/done")
def done():
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or len(header) < 20:
        return Response("missing or invalid install token\n", status=401, mimetype="text/plain")
    hostname = request.form.get("hostname", "")[:253]
    hostkey = request.form.get("hostkey", "")[:1024]
    name = templatedeploy.report_in(_ctx(), header[7:].strip(), request.remote_addr, hostname,
                                    hostkey)  # fmt: skip
    return jsonify({"resource": name, "state": "active"})


@bp.route("/<int:resource_id>/<token>/progress/<step>", methods=["GET", "POST"])
def progress(resource_id: int, token: str, step: str):
    """An installer's step (busybox wget in d-i can only GET; curl may POST)."""
    text = templatedeploy.installer_progress(_ctx(), resource_id, token, step)
    return Response(text + "\n", mimetype="text/plain")


@bp.get("/<int:resource_id>/<token>/<path:path>")
def answer(resource_id: int, token: str, path: str):
    """The installer's answer file (and its siblings): only while that resource installs."""
    text = templatedeploy.answer_file(_ctx(), resource_id, token, path)
    log.info("answer file %s served to resource %d (%s)", path, resource_id, request.remote_addr)
    return Response(text, mimetype="text/plain")
