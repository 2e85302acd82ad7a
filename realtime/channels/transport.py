"""The server's transport of a WebSocket or an event stream, so a peer that stopped reading
can be aborted.

ASGI gives an application no way to drop a connection whose close frame cannot be delivered
(the server flushes its buffer first, which a peer that never reads never lets it do). uvicorn's
`send` is a method of its protocol object, which holds the transport; Starlette wraps `send`
on the way to the endpoint, so this middleware, outside that wrapping, puts the transport in
the scope. With another server the key is absent and the deadline falls back to stopping the
reader (the socket then lingers until the peer reads or the server closes it).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from realtime.hub.connection import PeerTransport

SCOPE_KEY = "realtime.transport"


class TransportMiddleware:
    """Records the server's transport of each WebSocket and event stream in its scope, and
    which WebSocket implementation of the server's serves the sockets (`protocols`)."""

    def __init__(self, app: ASGIApp, protocols: set[str] | None = None) -> None:
        self.app = app
        # The server's WebSocket implementations seen so far (metrics): which one serves the
        # sockets is uvicorn's `ws` setting, not the app's.
        self.protocols = protocols if protocols is not None else set()
        self._seen: set[type] = set()

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: no frame of this layer stays alive while a socket is open.
        if scope["type"] == "websocket":
            owner = getattr(send, "__self__", None)
            if owner is not None and type(owner) not in self._seen:
                self._seen.add(type(owner))
                self.protocols.add(implementation_name(type(owner)))
        elif scope["type"] == "http" and scope["path"].endswith("/events"):
            # Starlette's error middleware wraps an HTTP `send`; uvicorn's `receive` is a
            # method of the same request cycle, which holds the transport.
            owner = getattr(receive, "__self__", None)
        else:
            owner = None
        transport: Any = getattr(owner, "transport", None)
        if callable(getattr(transport, "abort", None)) and callable(
            getattr(transport, "get_write_buffer_size", None)
        ):
            scope[SCOPE_KEY] = transport
        return self.app(scope, receive, send)


# uvicorn's modules of its WebSocket implementations, by the name its `ws` setting gives them
UVICORN_WS_MODULES = {
    "uvicorn.protocols.websockets.websockets_sansio_impl": "websockets-sansio",
    "uvicorn.protocols.websockets.wsproto_impl": "wsproto",
    "uvicorn.protocols.websockets.websockets_impl": "websockets",
}


def implementation_name(protocol: type) -> str:
    """uvicorn's name of the WebSocket implementation a protocol class belongs to (its `ws`
    setting), or the class's own dotted name for any other server."""
    module = protocol.__module__
    return UVICORN_WS_MODULES.get(module) or f"{module}.{protocol.__qualname__}"


def transport_of(websocket: WebSocket) -> PeerTransport | None:
    return transport_in(websocket.scope)


def transport_in(scope: Scope) -> PeerTransport | None:
    transport: PeerTransport | None = scope.get(SCOPE_KEY)
    return transport
