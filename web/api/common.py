"""Helpers shared by the REST API views: context, JSON body, pagination, field checks.

Owns the list envelope ``{"items": [...], "total": N, "limit": L, "offset": O}``
and the rules of ``limit`` (1..500, default 50) and ``offset`` (>= 0). Bad
input raises :class:`provisiond.errors.Invalid` naming the field; the app's
error handler turns it into ``{"error": ..., "field": ...}`` with status 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app, request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provisiond.context import Context
from provisiond.errors import Invalid

MAX_LIMIT = 500


def ctx() -> Context:
    return current_app.extensions["provisiond"]


def body(allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:
    """The JSON object of the request, with unknown and missing fields refused."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise Invalid("the request body must be a JSON object", field="body")
    for key in data:
        if key not in allowed:
            raise Invalid(f"unknown field {key!r}; allowed: {', '.join(sorted(allowed))}", key)
    for key in sorted(required):
        if data.get(key) in (None, ""):
            raise Invalid(f"{key} is required", field=key)
    return data


def typed(data: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = data.get(key, default)
    if value is not None and not isinstance(value, kind):
        raise Invalid(f"{key} must be a {kind.__name__}", field=key)
    if kind is int and isinstance(value, bool):
        raise Invalid(f"{key} must be an integer", field=key)
    return value


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"{name} must be an integer", field=name)
    if not lo <= value <= hi:
        raise Invalid(f"{name} must be between {lo} and {hi}", field=name)
    return value


def page_args() -> tuple[int, int]:
    return int_arg("limit", 50, 1, MAX_LIMIT), int_arg("offset", 0, 0, 10**9)


def paginate(session: Session, query, row: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    limit, offset = page_args()
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    items = [row(obj) for obj in session.scalars(query.limit(limit).offset(offset))]
    return {"items": items, "total": total, "limit": limit, "offset": offset}
