"""The OpenAPI document against the routes Flask really serves."""

# ruff: noqa: F811  (pytest fixtures imported from tests.unit.weblab)
from __future__ import annotations

import re

from tests.unit.weblab import api, app, tokens  # noqa: F401


def served(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule.removeprefix("/api/v1"))
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((method.lower(), path))
    return out


def test_document_lists_exactly_the_served_routes(app, api):
    doc = api("GET", "/openapi.json", "viewer").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == served(app)


def test_path_parameters_are_declared(api):
    doc = api("GET", "/openapi.json").get_json()
    for path, ops in doc["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for op in ops.values():
            declared = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert declared == names, path
            assert "401" in op["responses"]


def test_request_schemas_resolve(api):
    doc = api("GET", "/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    for ops in doc["paths"].values():
        for op in ops.values():
            body = op.get("requestBody")
            if body:
                ref = body["content"]["application/json"]["schema"]["$ref"]
                assert ref.rsplit("/", 1)[1] in schemas


def test_openapi_needs_authentication(app):
    assert app.test_client().get("/api/v1/openapi.json").status_code == 401
