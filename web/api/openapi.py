"""The OpenAPI 3 description of ``/api/v1``, served at ``/api/v1/openapi.json``.

Owns :data:`OPERATIONS`, written by hand beside the views (not generated from
them), so that ``tests/unit/test_web_openapi.py`` can check it against the
routes Flask really serves: every route documented, nothing documented that
is not served, path parameters named alike.
"""

from __future__ import annotations

from typing import Any

from flask import jsonify

from provisiond.modes import ApplianceMode, EraseMode
from web.api import bp

PAGE = ["limit", "offset"]
# (method, path, summary, query parameters, request body schema or None, success status)
OPERATIONS: list[tuple[str, str, str, list[str], str | None, str]] = [
    ("get", "/me", "The caller: user, role and how authenticated", [], None, "200"),
    ("get", "/openapi.json", "This document", [], None, "200"),
    ("get", "/resources", "List resources", ["state", "q", *PAGE], None, "200"),
    ("post", "/resources", "Add a resource by MAC", [], "ResourceCreate", "201"),
    ("get", "/resources/{ref}", "Show a resource (name, MAC, IP or id)", [], None, "200"),
    ("patch", "/resources/{ref}", "Rename a resource", [], "ResourceUpdate", "200"),
    ("delete", "/resources/{ref}", "Remove a resource", [], None, "204"),
    ("post", "/resources/{ref}/accept-key", "Trust a key-changed resource's new host key",
     [], None, "200"),
    ("post", "/resources/{ref}/reboot", "Queue a reboot for the agent", [], None, "202"),
    ("post", "/resources/{ref}/run", "Queue a shell command for the agent (admin; a job)", [],
     "ResourceRun", "202"),
    ("post", "/resources/{ref}/release", "Release to idle (optionally erase first)", [],
     "ResourceRelease", "202"),
    ("post", "/resources/{ref}/erase", "Erase every disk, then idle (a job)", [],
     "ResourceErase", "202"),
    ("post", "/resources/{ref}/capture", "Capture a disk into a new image (a job)", [],
     "ResourceCapture", "202"),
    ("get", "/images", "List images", ["state", "q", *PAGE], None, "200"),
    ("post", "/images", "Import an image from a file or URL (a job)", [], "ImageImport", "202"),
    ("get", "/images/{ref}", "Show an image and what uses it", [], None, "200"),
    ("patch", "/images/{ref}", "Rename an image or set its OS", [], "ImageUpdate", "200"),
    ("delete", "/images/{ref}", "Remove an image and its volume", [], None, "204"),
    ("get", "/kernels", "List kernels", PAGE, None, "200"),
    ("post", "/kernels", "Register a kernel", [], "Kernel", "201"),
    ("get", "/kernels/{ref}", "Show a kernel", [], None, "200"),
    ("patch", "/kernels/{ref}", "Change a kernel", [], "Kernel", "200"),
    ("delete", "/kernels/{ref}", "Remove an unused kernel", [], None, "204"),
    ("get", "/storages", "List storages", PAGE, None, "200"),
    ("post", "/storages", "Refused (409): storages are declared in provisiond.toml [[storage]]",
     [], None, "409"),
    ("get", "/storages/{ref}", "Show a storage and its volumes", [], None, "200"),
    ("patch", "/storages/{ref}", "Refused (409): edit [[storage]] in provisiond.toml", [], None,
     "409"),
    ("delete", "/storages/{ref}", "Refused (409): edit [[storage]] in provisiond.toml", [], None,
     "409"),
    ("get", "/appliances", "List appliances", ["state", "mode", "q", *PAGE], None, "200"),
    ("post", "/appliances", "Create (and start) an appliance", [], "ApplianceCreate", "201"),
    ("get", "/appliances/{ref}", "Show an appliance and its jobs", [], None, "200"),
    ("patch", "/appliances/{ref}", "Change a stopped appliance", [], "ApplianceUpdate", "200"),
    ("delete", "/appliances/{ref}", "Remove a stopped appliance", [], None, "204"),
    ("post", "/appliances/{ref}/start", "Start (deploy) an appliance", [], None, "202"),
    ("post", "/appliances/{ref}/stop", "Stop an appliance", [], None, "202"),
    ("get", "/templates", "List install template sets", [], None, "200"),
    ("get", "/templates/{name}", "Template text of a set or of one SET/PATH", [], None, "200"),
    ("post", "/templates", "Store a template set (checked in the Jinja2 sandbox first)", [],
     "TemplateSet", "201"),
    ("put", "/templates/{name}", "Replace a stored template set", [], "TemplateSetUpdate", "200"),
    ("delete", "/templates/{name}", "Remove a stored template set", [], None, "204"),
    ("post", "/templates/{name}/render", "Render for a resource: what the machine would get",
     [], "TemplateRender", "200"),
    ("get", "/jobs", "List jobs, newest first",
     ["state", "kind", "resource_id", "appliance_id", "image_id", *PAGE], None, "200"),
    ("get", "/jobs/{job_id}", "Show a job with its log", [], None, "200"),
    ("post", "/jobs/{job_id}/cancel", "Cancel a queued job", [], None, "200"),
    ("get", "/events", "The audit trail, newest first",
     ["actor", "action", "target", "q", "since_id", *PAGE], None, "200"),
    ("get", "/users", "List users (admin)", PAGE, None, "200"),
    ("post", "/users", "Create a user (admin)", [], "UserCreate", "201"),
    ("get", "/users/{ref}", "Show a user (admin)", [], None, "200"),
    ("patch", "/users/{ref}", "Change a user's role or password (admin)", [], "UserUpdate", "200"),
    ("delete", "/users/{ref}", "Remove a user (admin)", [], None, "204"),
    ("get", "/tokens", "List API tokens (own; admin: all)", PAGE, None, "200"),
    ("post", "/tokens", "Create an API token; the secret is shown once", [], "TokenCreate", "201"),
    ("delete", "/tokens/{token_id}", "Revoke an API token", [], None, "204"),
    ("get", "/ha", "HA appliances and the spares of their pools", [], None, "200"),
    ("put", "/resources/{ref}/ha-pool", "Make a resource a spare of an HA pool (pool null: none)",
     [], "HaPool", "200"),
    ("post", "/appliances/{ref}/ha-token",
     "A new heartbeat reporter token for the appliance's OS (shown once)", [], None, "201"),
]  # fmt: skip

_S, _I, _B, _O = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}, {"type": "object"}


def _obj(required: list[str], **props: dict) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props,
            "additionalProperties": False}  # fmt: skip


SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": _S, "field": _S}},
    "Page": {"type": "object", "required": ["items", "total", "limit", "offset"],
             "properties": {"items": {"type": "array", "items": _O}, "total": _I,
                            "limit": _I, "offset": _I}},
    "ResourceCreate": _obj(["mac"], mac=_S, name=_S),
    "ResourceUpdate": _obj([], name=_S),
    "ImageImport": _obj(["name", "source"], name=_S, source=_S, storage=_S),
    "ImageUpdate": _obj([], name=_S, os=_S),
    "ResourceRelease": _obj([], erase={"type": "string", "enum": ["quick", "full"]}),
    "ResourceRun": _obj(["command"], command=_S),
    "ResourceErase": _obj([], mode={"type": "string", "enum": ["quick", "full"]}),
    "ResourceCapture": _obj(["disk", "name"], disk=_S, name=_S, storage=_S),
    "Kernel": _obj([], name=_S, version=_S, kernel_path=_S, initrd_path=_S, cmdline=_S,
                   is_default=_B),
    "ApplianceCreate": _obj(["resource", "mode"], name=_S, resource=_S,
                            mode={"enum": [m.value for m in ApplianceMode]}, image=_S,
                            kernel=_S, params=_O, ha=_B, ha_pool=_S, start=_B),
    "ApplianceUpdate": _obj([], params=_O, ha=_B),
    "TemplateRender": _obj(["resource"], resource=_S, params=_O),
    "TemplateSet": _obj(["name", "kind", "files"], name=_S,
                        kind={"enum": ["fai", "preseed", "autoinstall", "kickstart", "unattend"]},
                        files=_O, description=_S, answer=_S, cmdline=_S, modes=_O,
                        initrds={"type": "array", "items": _S}),
    "TemplateSetUpdate": _obj(["kind", "files"],
                              kind={"enum": ["fai", "preseed", "autoinstall", "kickstart",
                                             "unattend"]},
                              files=_O, description=_S, answer=_S, cmdline=_S, modes=_O,
                        initrds={"type": "array", "items": _S}),
    "UserCreate": _obj(["name", "password"], name=_S, password=_S,
                       role={"enum": ["viewer", "operator", "admin"]}),
    "UserUpdate": _obj([], password=_S, role={"enum": ["viewer", "operator", "admin"]}),
    "TokenCreate": _obj(["name"], name=_S, user=_S),
    "HaPool": _obj(["pool"], pool=_S),
}  # fmt: skip


# power control and bulk actions (web/api/power.py)
OPERATIONS += [
    ("get", "/resources/{ref}/power", "Power settings (never the password) and last state",
     [], None, "200"),
    ("put", "/resources/{ref}/power", "Set power settings (admin; the password is write-only)",
     [], "PowerSettings", "200"),
    ("delete", "/resources/{ref}/power", "Remove power settings (admin)", [], None, "204"),
    ("post", "/resources/{ref}/power", "Power on, off, cycle or read status through the BMC",
     [], "PowerAction", "200"),
    ("post", "/resources/bulk", "One action (on, off, cycle, release, assign) on many resources",
     [], "Bulk", "200"),
]  # fmt: skip
SCHEMAS.update({
    "PowerSettings": _obj(["driver"], driver={"enum": ["ipmi", "redfish", "wol", "qemu"]},
                          address=_S, user=_S, password=_S, options=_O),
    "PowerAction": _obj(["action"], action={"enum": ["on", "off", "cycle", "status"]}),
    "Bulk": _obj(["resources", "action"], resources={"type": "array", "items": _S},
                 action={"enum": ["on", "off", "cycle", "release", "assign"]},
                 erase={"enum": [m.value for m in EraseMode]},
                 mode={"enum": [m.value for m in ApplianceMode]}, image=_S, kernel=_S,
                 fanout=_obj([], transport={"enum": ["auto", "mcast", "unicast"]},
                             max_wait=_I, rate=_S)),
})  # fmt: skip


def _param(name: str, where: str) -> dict[str, Any]:
    schema = _I if name in ("limit", "offset", "job_id", "token_id") or name.endswith("_id") else _S
    return {"name": name, "in": where, "required": where == "path", "schema": schema}


def _error(desc: str) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {"description": desc, "content": content}


def _operation(method, path, summary, query, schema, status) -> dict[str, Any]:
    params = [_param(p.strip("{}"), "path") for p in path.split("/") if p.startswith("{")]
    op: dict[str, Any] = {
        "summary": summary,
        "operationId": method + path.replace("/", "_").replace("{", "").replace("}", ""),
        "parameters": params + [_param(q, "query") for q in query],
        "responses": {
            status: _error("refused; the error says what to edit instead")
            if status.startswith("4")
            else {"description": "success"},
            "400": _error("bad input; 'field' names the culprit"),
            "401": _error("no or bad credentials"),
            "403": _error("the caller's role may not do this"),
            "404": _error("no such object"),
        },
    }
    if "limit" in query:
        page = {"$ref": "#/components/schemas/Page"}
        op["responses"][status]["content"] = {"application/json": {"schema": page}}
    if schema:
        ref = {"$ref": f"#/components/schemas/{schema}"}
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
    return op


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, query, schema, status in OPERATIONS:
        paths.setdefault(path, {})[method] = _operation(
            method, path, summary, query, schema, status
        )
    return {
        "openapi": "3.0.3",
        "info": {"title": "provisiond", "version": "1"},
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "provisiond_session"},
            },
        },
        "security": [{"token": []}, {"session": []}],
    }


@bp.get("/openapi.json")
def openapi():
    return jsonify(document())
