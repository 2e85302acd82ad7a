"""Request-body limits, enforced while the body streams in (ASGI middleware).

A body is never read whole before its size is known to be acceptable: a `Content-Length` over
the limit is refused before anything is read, and a chunked body is counted chunk by chunk and
refused (413) as soon as it goes over, so a client cannot make the server hold more than the
limit plus one chunk.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Sequence

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from realtime.errors import ErrorCode, PayloadTooLarge


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is limited to {limit} bytes here")


class BodyLimit:
    """`limit` bytes for every request body, or the limit of the first `larger` path pattern
    that matches (for the few endpoints that genuinely take bulk input)."""

    def __init__(
        self, app: ASGIApp, limit: int, larger: Sequence[tuple[re.Pattern[str], int]] = ()
    ) -> None:
        self.app = app
        self.limit = limit
        self.larger = list(larger)

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.larger:
            if pattern.match(path):
                return limit
        return self.limit

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: a WebSocket is handed on without this layer keeping a
        # coroutine frame alive for as long as the socket is open.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        return self._limited(scope, receive, send)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit_for(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            await _refuse(too_large(limit), scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except PayloadTooLarge as exc:  # normally answered by the app's error handler
            if started:
                raise
            await _refuse(exc, scope, receive, send)


async def _refuse(exc: PayloadTooLarge, scope: Scope, receive: Receive, send: Send) -> None:
    body = {"error": {"code": str(ErrorCode.TOO_LARGE), "message": exc.message}}
    # The rest of the body is not read: close the connection rather than drain it.
    response = JSONResponse(body, status_code=413, headers={"Connection": "close"})
    await response(scope, receive, send)
