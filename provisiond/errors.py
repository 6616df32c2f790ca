"""Error types shared by the service layer, CLI, API and web UI.

Each carries a message that names the object and what to do; the API maps
them to HTTP status codes (NotFound 404, Conflict 409, Invalid 400).
"""

from __future__ import annotations


class ProvisiondError(Exception):
    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field


class NotFound(ProvisiondError):
    status = 404


class Conflict(ProvisiondError):
    status = 409


class Invalid(ProvisiondError):
    status = 400


class Unauthorized(ProvisiondError):
    status = 401
