"""The assign workflow: idle resource + image + mode + parameters, review, confirm.

Owns ``/assign``. Step 1 is one form (the resource pre-selected when coming
from its page); step 2 shows what will happen and asks for confirmation;
confirming creates the appliance and starts it in one unit of work through
:func:`web.api.work.create_appliance` (so the API and UI share it). A refusal
is shown next to the field at fault and the form keeps what was typed.
Further modes plug in by adding a row to :data:`MODE_FIELDS`.
"""

from __future__ import annotations

from flask import redirect, render_template, request
from sqlalchemy import select

from provisiond import appliances, resources
from provisiond.errors import Invalid, ProvisiondError
from provisiond.lifecycle import IllegalTransition
from provisiond.lifecycle import ResourceState as RS
from provisiond.model import Image, Resource
from provisiond.modes import ApplianceMode as M
from web.api.auth import actor
from web.api.common import ctx
from web.ui import bp

#: mode -> extra parameters: (key, label, placeholder)
MODE_FIELDS: dict[str, list[tuple[str, str, str]]] = {
    M.SANBOOT: [],
    M.LOCAL: [("disk", "Target disk", "/dev/sda or /dev/vda")],
    M.TEMPLATE: [("template", "Install template", "name of a template")],
}
MODE_HELP = {
    M.SANBOOT: "boots the image over iSCSI (a copy-on-write clone); nothing is written to disk",
    M.LOCAL: "writes the image onto the machine's disk, then boots from it",
    M.TEMPLATE: "installs an OS onto the machine's disk from a template set (e.g. fai-debian-12)",
}
FIELDS = ("resource", "image", "mode", "name", "params", "disk", "template")


def _choices(selected: str) -> tuple[list, list]:
    with ctx().db.reader() as s:
        idle = s.scalars(
            select(Resource).where(Resource.state == RS.IDLE).order_by(Resource.id).limit(500)
        ).all()
        res = [(str(r.id), f"{r.display_name} ({r.ip or r.mac})") for r in idle]
        if selected and selected not in {rid for rid, _ in res}:
            try:
                r = resources.find(s, selected)
                res.insert(0, (str(r.id), f"{r.display_name} ({r.state})"))
            except ProvisiondError:
                pass
        imgs = [
            (i.name, f"{i.name} ({i.size // 2**20} MiB)")
            for i in s.scalars(select(Image).where(Image.state == "ready").order_by(Image.name))
        ]
    return res, imgs


def _form(form: dict, errors: dict, status: int = 200):
    res, imgs = _choices(form.get("resource", ""))
    return render_template(
        "assign.html",
        form=form,
        errors=errors,
        resources=res,
        images=imgs,
        modes=appliances.MODES,
        mode_fields=MODE_FIELDS,
        mode_help=MODE_HELP,
    ), status


def _parse_params(text: str) -> dict[str, str]:
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise Invalid(f"line {n}: write KEY=VALUE", field="params")
        out[key.strip()] = value.strip()
    return out


def _data(form: dict) -> dict:
    """The form as an appliance-create request (raises Invalid naming the field)."""
    if not form.get("resource"):
        raise Invalid("pick an idle resource", field="resource")
    if form.get("mode") not in appliances.MODES:
        raise Invalid("pick a deployment mode", field="mode")
    params = _parse_params(form.get("params", ""))
    for key, label, _ in MODE_FIELDS[form["mode"]]:
        if not form.get(key):
            raise Invalid(f"{label} is required for mode {form['mode']}", field=key)
        params[key] = form[key]
    with ctx().db.reader() as s:
        res = resources.find(s, form["resource"])
        if res.state != RS.IDLE:
            raise Invalid(f"resource {res.display_name} is {res.state}, not idle", "resource")
        default_name = f"app-{res.display_name}"
    return {
        "resource": form["resource"],
        "mode": form["mode"],
        "image": form.get("image") or None,
        "name": form.get("name") or default_name,
        "params": params,
        "start": True,
    }


@bp.route("/assign", methods=["GET", "POST"])
def assign():
    if request.method == "GET":
        form = {"resource": request.args.get("resource", ""), "mode": M.SANBOOT.value}
        return _form(form, {})
    form = {k: request.form.get(k, "").strip() for k in FIELDS}
    try:
        data = _data(form)
        if request.form.get("step") != "confirm":
            with ctx().db.reader() as s:
                res = resources.find(s, form["resource"])
                summary = {"resource": res.display_name, "ip": res.ip, "mac": res.mac}
            return render_template("assign_confirm.html", form=form, data=data, summary=summary)
        out = _create(data)
    except (ProvisiondError, IllegalTransition) as exc:
        field = getattr(exc, "field", None) or "form"
        message = getattr(exc, "message", str(exc))
        return _form(form, {field: message}, getattr(exc, "status", 409))
    return redirect(f"/appliances/{out['name']}")


def _create(data: dict) -> dict:
    from web.api.work import create_appliance

    return create_appliance(data, actor())
