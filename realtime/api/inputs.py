"""Checks on request input that every endpoint shares: the URL and query parameters.

Bodies go through `routes.json_body` (`jsonsafe.loads`). Here: a middleware that answers 400 to
any URL carrying a NUL character (PostgreSQL cannot store or compare one, so it would reach a
query as a 500), and typed query parameters with ranges.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from realtime.errors import BadRequest
from realtime.jsonsafe import JSONResponse

_INTEGER = re.compile(r"-?[0-9]{1,18}")


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """The integer query parameter `name` within low..high; BadRequest otherwise."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not _INTEGER.fullmatch(raw.strip()) or not low <= int(raw) <= high:
        raise BadRequest(f"'{name}' must be an integer {low}..{high}")
    return int(raw)


def _has_nul(scope: Scope) -> bool:
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope.get("path", "") or b"\x00" in query or b"%00" in query


class RefuseNulInURL:
    """ASGI middleware: 400 `invalid` for an HTTP request whose path or query holds NUL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: what passes is handed on without this layer keeping a
        # coroutine frame alive (for a WebSocket, as long as it is open).
        if scope["type"] == "http" and _has_nul(scope):
            response = JSONResponse(
                {"error": {"code": "invalid",
                           "message": "the URL must not contain NUL characters"}},
                status_code=400,
            )
            return response(scope, receive, send)
        return self.app(scope, receive, send)
