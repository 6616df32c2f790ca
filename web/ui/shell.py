"""Web shell views: open a terminal on an idle resource, feed it, read it, close it.

Owns ``/resources/<id>/shell`` (the page with xterm.js) and
``/shell/<sid>/{input,output,resize,close}``. The terminal speaks to a
:class:`provisiond.webshell.ShellManager` session through long polls (see
that module for why). Opening needs the operator role (a viewer cannot
change anything, and a root shell changes everything); only the user who
opened a session can read or write it.
"""

from __future__ import annotations

import base64

from flask import current_app, jsonify, render_template, request

from provisiond import remote, resources
from provisiond.errors import Invalid
from provisiond.lifecycle import ResourceState as RS
from provisiond.webshell import ShellManager
from web.api.auth import actor, current, requires
from web.api.common import ctx, int_arg
from web.ui import bp

POLL_WAIT = 20.0


def manager() -> ShellManager:
    mgr = current_app.extensions.get("webshell")
    if mgr is None:
        c = ctx()

        def connect(ip: str, hostkey: str):
            return remote.connect(ip, hostkey, c.config.ssh_key_path)

        mgr = current_app.extensions.setdefault("webshell", ShellManager(c.db, connect))
    return mgr


@bp.get("/resources/<int:rid>/shell")
@requires("operator")
def shell_page(rid: int):
    with ctx().db.reader() as s:
        res = resources.find(s, str(rid))
        return render_template("shell.html", rid=rid, name=res.display_name, state=res.state)


@bp.post("/resources/<int:rid>/shell")
def shell_open(rid: int):
    with ctx().db.reader() as s:
        res = resources.find(s, str(rid))
        if res.state != RS.IDLE:
            raise Invalid(f"{res.display_name} is {res.state}: the web shell is for idle resources")
        if not res.ip or not res.hostkey:
            raise Invalid(f"{res.display_name} has not registered an address and host key yet")
        target, ip, hostkey = resources.remote_target(res)
    try:
        sess = manager().open(current().user_id, actor(), target, ip, hostkey)
    except remote.RemoteError as exc:
        return jsonify({"error": str(exc), "field": "resource"}), 502
    return jsonify({"id": sess.id, "target": target}), 201


@bp.post("/shell/<sid>/input")
def shell_input(sid: str):
    mgr = manager()
    mgr.write(mgr.get(sid, current().user_id), request.get_data()[:65536])
    return "", 204


@bp.post("/shell/<sid>/resize")
def shell_resize(sid: str):
    mgr = manager()
    cols, rows = int_arg("cols", 80, 1, 1000), int_arg("rows", 24, 1, 1000)
    mgr.resize(mgr.get(sid, current().user_id), cols, rows)
    return "", 204


@bp.get("/shell/<sid>/output")
def shell_output(sid: str):
    sess = manager().get(sid, current().user_id)
    since = int_arg("since", 0, 0, 2**62)
    data, end, closed = sess.read(since, POLL_WAIT)
    return jsonify(
        {
            "data": base64.b64encode(data).decode(),
            "next": end,
            "closed": closed,
            "reason": sess.reason if closed else "",
        }
    )


@bp.post("/shell/<sid>/close")
def shell_close(sid: str):
    mgr = manager()
    mgr.close(mgr.get(sid, current().user_id))
    return "", 204
