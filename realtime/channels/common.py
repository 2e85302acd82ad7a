"""What both WebSocket channels share: the handshake, the receive loop, error messages."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from starlette.routing import Match, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from realtime.channels.codec import Codec, choose_codec
from realtime.channels.direct import forget_handshake, sansio_protocol
from realtime.channels.transport import transport_of
from realtime.config import Settings
from realtime.errors import BadRequest, CloseCode, ErrorCode, RateLimited
from realtime.gcpolicy import note_handshake
from realtime.hub.connection import Connection
from realtime.limits.messages import MessageLimiter, Verdict
from realtime.limits.refusals import Kind
from realtime.limits.setup import limits_of, rate_limited_response


class SocketApp:
    """A WebSocket endpoint as a bare ASGI app, for `WebSocketRoute`.

    Starlette wraps a function endpoint in two coroutine layers (the session, and its
    exception handlers, which turn an escaping exception into an HTTP response a socket cannot
    use anyway) that stay alive with their frames for as long as the socket is open: ~1.5 KiB
    per idle socket. An endpoint handed over this way catches its own exceptions; what still
    escapes (the handshake failing) goes to the server, which logs it and refuses or closes
    the socket. Not a coroutine itself, so it keeps no frame either.
    """

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Callable[[WebSocket], Awaitable[None]]) -> None:
        self.endpoint = endpoint

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        return self.endpoint(WebSocket(scope, receive=receive, send=send))


class DirectSockets:
    """ASGI middleware: serves the given WebSocket routes itself, ahead of Starlette's
    exception middleware and router, whose coroutine frames would otherwise stay alive for as
    long as each socket is open (~2 KiB per idle socket). Matching is the route's own
    (`WebSocketRoute.matches`), so the path is defined once; the routes stay in the router
    too, where nothing reaches them. For routes whose endpoint catches its own exceptions
    (`SocketApp`): the exception middleware had nothing to add for them."""

    def __init__(self, app: ASGIApp, routes: Sequence[WebSocketRoute]) -> None:
        self.app = app
        self.routes = tuple(routes)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "websocket":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    return route.app(scope, receive, send)
        return self.app(scope, receive, send)


def error_message(code: ErrorCode | str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": str(code), "message": message, **extra}


def origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    if not settings.allowed_origins:
        return True
    origin = websocket.headers.get("origin")
    return origin is None or origin in settings.allowed_origins


async def refuse_handshake(websocket: WebSocket, exc: RateLimited) -> None:
    """Answer the upgrade with 429 + Retry-After (the browser sees 1006 and backs off)."""
    try:
        await websocket.send_denial_response(rate_limited_response(exc))
    except RuntimeError:  # a server without the denial-response extension: a plain 403
        await websocket.close(CloseCode.TRY_AGAIN_LATER, "rate limited")


async def accept(websocket: WebSocket, settings: Settings) -> Connection | None:
    """Check the address's handshake rate, origin and subprotocol, accept, and start the
    connection's writer."""
    note_handshake()  # the GC policy's passes space out while candidates open in numbers
    try:
        limits_of(websocket).addresses.take(Kind.HANDSHAKE, websocket)
    except RateLimited as exc:
        await refuse_handshake(websocket, exc)
        return None
    if not origin_allowed(websocket, settings):
        await websocket.close(CloseCode.FORBIDDEN, "origin not allowed")
        return None
    offered = list(websocket.scope.get("subprotocols") or [])
    codec: Codec | None = choose_codec(offered)
    if codec is None:
        await websocket.close(CloseCode.UNSUPPORTED_PROTOCOL, "unsupported subprotocol")
        return None
    await websocket.accept(subprotocol=codec.name if offered else None)
    transport = transport_of(websocket)
    protocol = sansio_protocol(transport)
    forget_handshake(protocol)  # the server's copy of the handshake's headers: not needed now
    conn = Connection(
        websocket, codec, settings.send_queue_size, settings.send_timeout, transport,
        protocol,  # frames written to the transport directly when safe
    )
    conn.start()
    return conn


def forget_request_headers(websocket: WebSocket) -> None:
    """The socket's session is open: what it needed of the upgrade request's headers (origin,
    user agent, forwarded address) has been read, and nothing reads them again. They stay
    in the scope for the socket's life otherwise (a list of byte pairs: ~0.9 KiB of an idle
    socket with a minimal client, a browser's cookies and user agent more). The list is
    emptied in place, so every holder of it lets go: the server's scope is the same dict,
    and Starlette's `websocket.headers` wraps the same list (it reads as empty from now on).
    """
    headers = websocket.scope.get("headers")
    if isinstance(headers, list):
        headers.clear()


async def messages(
    websocket: WebSocket,
    conn: Connection,
    settings: Settings,
    idle_timeout: float | None,
    limiter: MessageLimiter | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Decoded messages until the peer goes away. Bad frames get an `error`, not a crash.

    Frames over the `limiter`'s rate are dropped before they are decoded (so nothing over it
    is ever applied); a peer that keeps on is closed with 4029 and no more is read from it.

    Ends without reading further once the server cut the connection off (`conn.stopped`).
    Raises TimeoutError when nothing arrives for `idle_timeout` seconds (a dead peer), until
    the heartbeat watches the connection (`conn.watched`): then it times out only pings left
    unanswered (`conn.unanswered_since`, cleared here on every frame), which is cheaper than
    a timer per frame.
    """
    limit = settings.max_message_bytes
    receive = websocket.receive
    while True:
        conn.in_receive = True
        try:
            if idle_timeout is not None and not conn.watched:
                async with asyncio.timeout(idle_timeout):
                    raw = await receive()
            else:
                raw = await receive()
        finally:
            conn.in_receive = False
        conn.unanswered_since = None  # any frame answers the pings sent so far
        if raw["type"] == "websocket.disconnect":
            conn.peer_close_code = raw.get("code")
            return
        if conn.stopped:
            return
        frame = raw.get("bytes")
        if frame is None:
            frame = raw.get("text")
        if frame is None:
            continue
        if limiter is not None:
            verdict = limiter.admit(time.monotonic())
            if verdict is not Verdict.HANDLE:
                if verdict is Verdict.WARN:
                    retry = max(1, math.ceil(limiter.retry_after()))
                    conn.send(error_message(
                        ErrorCode.RATE_LIMITED,
                        "too many messages: this one and the next until the rate is back "
                        "under the limit are dropped; keep on and the socket is closed (4029)",
                        retry_after=retry,
                    ))
                elif verdict is Verdict.CLOSE:
                    conn.close(CloseCode.RATE_LIMITED, "too many messages")
                    return
                continue
        size = len(frame)
        if isinstance(frame, str) and size * 4 > limit:  # only then can UTF-8 exceed it
            size = len(frame.encode())
        if size > limit:
            conn.send(error_message(ErrorCode.TOO_LARGE, f"messages are limited to {limit} bytes"))
            continue
        try:
            message = conn.codec.decode(frame)
        except BadRequest as exc:
            conn.send(error_message(exc.code, exc.message))
            continue
        yield message


def optional_str(message: dict[str, Any], key: str, limit: int = 256) -> str | None:
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"'{key}' must be a string of at most {limit} characters")
    return value


def required_str(message: dict[str, Any], key: str, limit: int = 256) -> str:
    value = optional_str(message, key, limit)
    if not value:
        raise BadRequest(f"'{key}' is required")
    return value


def non_negative_int(message: dict[str, Any], key: str) -> int:
    value = message.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1_000_000:
        raise BadRequest(f"'{key}' must be an integer 0..1000000")
    return value


def optional_number(message: dict[str, Any], key: str) -> float | None:
    """A number (int or float) or absent. `decode` already refused non-finite ones."""
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BadRequest(f"'{key}' must be a number")
    return value


MAX_REQUEST_ID = 64


def request_id_of(message: dict[str, Any]) -> str | int | None:
    """The client's `request_id`, echoed in the answer: a short string or an integer."""
    value = message.get("request_id")
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= MAX_REQUEST_ID:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # decode keeps integers within ±(2**53 - 1)
    raise BadRequest(f"'request_id' must be a string of at most {MAX_REQUEST_ID} characters"
                     " or an integer")
