"""Pre-framed writes: a data frame written straight to the socket's transport.

The ASGI send of one frame is ~20 µs of Python above the socket write (Starlette's wrapper,
a coroutine, uvicorn's `send` awaiting writability and checking its state, websockets'
`send_binary` -> `Frame.serialize` -> `data_to_send` -> `b"".join`; docs/performance.md,
"seventh session"). A fan-out writes the same message to thousands of sockets, so
`Connection.send_encoded` frames it once per codec (`Encoded.wire`: websockets' own
`Frame.serialize`, unmasked, no extension) and, when it is safe, writes those bytes to the
transport itself, synchronously.

That bypasses websockets' protocol state, so it is done only where the bytes are exactly what
uvicorn's `send` would have written and nothing else could be reordered with them:

* the server is uvicorn's websockets-sansio implementation (its protocol class, found from
  the socket's transport, the one `TransportMiddleware` took from the ASGI `send`'s owner),
  with every attribute read below: anything else (wsproto, legacy websockets, another
  server, a uvicorn whose class changed) is never written to directly (`sansio_protocol`);
* once, when the connection is made after the handshake (`settled`): the handshake is
  complete and no HTTP denial response was started, no extension was negotiated
  (permessage-deflate, REALTIME_WS_DEFLATE, would compress the frame) and websockets logs no
  frames (debug). None of these changes once the handshake is complete: uvicorn never unsets
  `handshake_complete` and starts a denial response only before it, websockets sets
  `extensions` in the handshake and `debug` when the protocol object is made. A connection
  made otherwise is never written to directly;
* per frame (`open_now`, which `Connection.send_encoded` inlines): uvicorn has not sent a close
  nor seen the connection lost, its write flow control says writable (`writable` event: the
  transport has not paused writing), websockets' protocol is OPEN with nothing pending in its
  buffer (`writes`), no fragmented message half sent, and the transport is not closing. The
  objects these are read from (uvicorn's `conn`, `writable` event and `transport`) are
  uvicorn's for the protocol's whole life (made in its `__init__` and `connection_made`, never
  replaced): the connection takes them once and reads their state at every frame;
* and nothing of the connection's own is queued or being written (`Connection.send_encoded`
  checks that), so frames keep their order.

Between uvicorn's `send` and the endpoint there are only this app's middleware, none of which
changes a `websocket.send` message, and Starlette's `WebSocket.send` (state checks that the
guards above cover: the application's close is uvicorn's `close_sent`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Side, State
from websockets.server import ServerProtocol

SANSIO_MODULE = "uvicorn.protocols.websockets.websockets_sansio_impl"
SANSIO_CLASS = "WebSocketsSansIOProtocol"
# What `writable` reads of uvicorn's protocol object and of its websockets protocol (`conn`)
PROTOCOL_FIELDS = ("handshake_complete", "initial_response", "close_sent", "disconnected")
CONN_FIELDS = ("state", "writes", "extensions", "expect_continuation_frame", "debug")
OPEN = State.OPEN


def framed(payload: bytes | str) -> bytes:
    """One whole data frame as a server writes it: binary for bytes, text (UTF-8) for str,
    unmasked, without extensions; websockets' own serialisation, as uvicorn's `send` makes
    it."""
    if isinstance(payload, str):
        return Frame(Opcode.TEXT, payload.encode()).serialize(mask=False, extensions=[])
    return Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])


def sansio_protocol(transport: Any) -> Any | None:
    """uvicorn's websockets-sansio protocol object serving the socket of `transport`, if it is
    one and has everything `writable` reads; else None (fail closed: that socket is written
    through the ASGI send only)."""
    get_protocol = getattr(transport, "get_protocol", None)
    if not callable(get_protocol):
        return None
    try:
        protocol = get_protocol()
    except Exception:
        return None
    cls = type(protocol)
    if cls.__module__ != SANSIO_MODULE or cls.__name__ != SANSIO_CLASS:
        return None
    if getattr(protocol, "transport", None) is not transport:
        return None
    if not (callable(getattr(transport, "write", None))
            and callable(getattr(transport, "is_closing", None))):
        return None
    if not all(hasattr(protocol, name) for name in PROTOCOL_FIELDS):
        return None
    if not isinstance(getattr(protocol, "writable", None), asyncio.Event):
        return None
    conn = getattr(protocol, "conn", None)
    if not isinstance(conn, ServerProtocol) or conn.side is not Side.SERVER:
        return None
    if not all(hasattr(conn, name) for name in CONN_FIELDS):
        return None
    if not isinstance(conn.writes, list) or not isinstance(conn.extensions, list):
        return None
    return protocol


def forget_handshake(protocol: Any) -> int:
    """Once a WebSocket is accepted, let uvicorn's protocol object forget the opening
    handshake's headers.

    uvicorn's websockets-sansio protocol keeps the handshake's request and response (websockets
    `Request` and `Response`) for as long as the socket is open, and websockets' parser keeps
    the request too; neither reads them again once the handshake is complete. Their headers
    (a dict of lists and a list of pairs each, and their strings) are ~3.7 KiB of every idle
    socket (docs/performance.md, "seventh session: memory per idle connection"). They are
    emptied with websockets' own `Headers.clear()`; the scope's headers, which the
    application reads, are a copy and stay.

    `protocol` is `sansio_protocol`'s answer (None: not that implementation). Only its class,
    only once its handshake is complete, and only what has websockets' own types: anything
    else is left as it is. Returns how many messages' headers were emptied (0: none).
    """
    if (type(protocol).__module__ != SANSIO_MODULE
            or getattr(protocol, "handshake_complete", None) is not True):
        return 0
    emptied = 0
    for name, kind in (("request", Request), ("response", Response)):
        message = getattr(protocol, name, None)
        if isinstance(message, kind) and isinstance(message.headers, Headers):
            message.headers.clear()
            emptied += 1
    return emptied


def settled(protocol: Any) -> bool:
    """The guards above that cannot change once the handshake is complete (read once, when
    the connection is made)."""
    conn = protocol.conn
    return bool(
        protocol.handshake_complete
        and protocol.initial_response is None
        and not conn.extensions
        and not conn.debug
    )


def open_now(protocol: Any, conn: Any, ready: asyncio.Event, transport: Any) -> bool:
    """The guards above read at every frame; `conn`, `ready` and `transport` are the
    protocol's `conn`, `writable` and `transport` (`Connection.send_encoded` inlines this)."""
    return bool(
        not protocol.close_sent
        and not protocol.disconnected
        and ready.is_set()
        and conn.state is OPEN
        and not conn.writes
        and not conn.expect_continuation_frame
        and not transport.is_closing()
    )


def writable(protocol: Any) -> bool:
    """Whether a pre-framed data frame may be written to this socket's transport now: every
    guard above."""
    return settled(protocol) and open_now(
        protocol, protocol.conn, protocol.writable, protocol.transport
    )
