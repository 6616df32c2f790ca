"""The REST API, ``/api/v1``: a thin JSON face on the ``provisiond`` service modules.

Owns the ``api`` blueprint. Authentication (bearer API token or session),
CSRF for session calls and roles are enforced for every route by
:func:`web.api.auth.guard`; lists are paginated (``limit``/``offset``) and
filtered by query parameters; errors are ``{"error": message, "field": name}``.
The OpenAPI 3 document is :mod:`web.api.openapi`.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from web.api import (  # noqa: E402,F401  (register routes)
    accounts,
    ha,
    inventory,
    openapi,
    power,
    templates,
    work,
)
