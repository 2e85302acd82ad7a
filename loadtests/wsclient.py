"""A lean WebSocket client for the benchmark: websockets' sans-I/O protocol on an asyncio Protocol.

No task, no queue and no buffer per connection beyond what the transport needs: frames are
decoded and handed to a callback from `data_received`, so one process holds 10,000 sockets
while leaving most of the machine to the server under test.

Every chunk read is stamped (`clock()`) before anything is parsed; the callback finds the
stamp of the chunk that completed its frame in `peer.arrived_at`. By default a chunk is
parsed at once, in `data_received` (`inline`). With a shared `ReadFirst` (the benchmark's
default), `data_received` only stamps the chunk and queues it: the parsing (frames, msgpack,
the callback and whatever it writes back, e.g. an ack) runs later, in slices between the
loop's polls, so a burst across thousands of sockets is read, and stamped, as it comes
rather than one socket after the other's parse, as thousands of separate machines would.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from loadtests.common import MSGPACK, decode, encode

OnMessage = Callable[["WsPeer", dict[str, Any]], None]
OnClose = Callable[["WsPeer"], None]
clock = time.perf_counter  # the stamps' clock (on Linux CLOCK_MONOTONIC, as time.monotonic)
READ_MODES = ("read-first", "inline")


class ReadFirst:
    """Reads first, parses later: one queue of what any number of `WsPeer`s read.

    `data_received` (and the end of a stream, and the connection's loss) only appends to the
    queue, with the chunk's stamp; the queue is worked off in slices of at most `slice_s`
    seconds, each scheduled with `call_soon`, so the event loop polls the sockets between two
    slices and a chunk's stamp is at most about one slice later than its arrival in the socket
    (for as long as reading alone keeps up with the sender). Everything is handled in the
    order it was read: each socket's chunks, end and loss in their own order.
    """

    def __init__(self, slice_s: float = 0.0005) -> None:
        self.slice_s = slice_s
        self.pending: deque[tuple[Callable[[Any, float], None], Any, float]] = deque()
        self.scheduled = False
        self.most_pending = 0  # the longest the queue got

    def push(self, handle: Callable[[Any, float], None], arg: Any, at: float) -> None:
        self.pending.append((handle, arg, at))
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._work)

    def _work(self) -> None:
        pending = self.pending
        self.most_pending = max(self.most_pending, len(pending))
        until = clock() + self.slice_s
        try:
            while pending:
                handle, arg, at = pending.popleft()
                handle(arg, at)
                if clock() >= until:
                    break
        finally:  # one socket's error (the loop reports it) does not stop the others'
            if pending:
                asyncio.get_running_loop().call_soon(self._work)
            else:
                self.scheduled = False


class WsPeer(asyncio.Protocol):
    """One client WebSocket. `await connect(...)` returns it once the handshake is done."""

    def __init__(
        self,
        url: str,
        protocol: str,
        on_message: OnMessage,
        on_close: OnClose | None = None,
        headers: dict[str, str] | None = None,
        deflate: bool = False,
        reader: ReadFirst | None = None,
    ) -> None:
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        self.ws = ClientProtocol(
            parse_uri(url), subprotocols=[Subprotocol(protocol)], max_size=256 * 1024 * 1024,
            extensions=extensions,
        )
        self.protocol = protocol
        self.headers = headers or {}
        self.on_message = on_message
        self.on_close = on_close
        self.transport: Any = None  # an asyncio.Transport (uvloop's is not a subclass)
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.closing = False  # we asked for it
        self.close_code: int | None = None
        self.received = 0
        self.sent = 0
        self.reader = reader
        self.arrived_at = 0.0  # clock() when the chunk completing the current frame was read

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        request = self.ws.connect()
        for name, value in self.headers.items():
            request.headers[name] = value
        self.ws.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        at = clock()  # first: the frame's arrival, before any parsing
        if self.reader is not None:
            self.reader.push(self._parse, data, at)
        else:
            self._parse(data, at)

    def _parse(self, data: bytes, at: float) -> None:
        self.arrived_at = at
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if self.handshake.done():
                    continue
                if self.ws.handshake_exc is not None:
                    self.handshake.set_exception(self.ws.handshake_exc)
                else:
                    self.handshake.set_result(None)
            elif isinstance(event, Frame):
                self.on_frame(event)
        self._flush()
        if self.ws.close_expected() and self.transport is not None:
            self.close_code = self.ws.close_code
            asyncio.get_running_loop().call_later(1.0, self._force_close)

    def on_frame(self, frame: Frame) -> None:
        """A data frame arrived: decode it as a realtime message (subclasses speak others)."""
        if frame.opcode is Opcode.BINARY:
            self.received += 1
            self.on_message(self, decode(bytes(frame.data)))
        elif frame.opcode is Opcode.TEXT:
            self.received += 1
            self.on_message(self, decode(bytes(frame.data).decode()))

    def eof_received(self) -> bool | None:
        if self.reader is not None:  # after the chunks read before it
            self.reader.push(self._eof, None, clock())
        else:
            self._eof(None, 0.0)
        return None

    def _eof(self, _: None, at: float) -> None:
        self.ws.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reader is not None:  # after the chunks read before it
            self.reader.push(self._lost, exc, clock())
        else:
            self._lost(exc, 0.0)

    def _lost(self, exc: Exception | None, at: float) -> None:
        self.closed = True
        if self.close_code is None:
            self.close_code = self.ws.close_code
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(f"connection lost: {exc!r}"))
        if self.on_close is not None:
            self.on_close(self)

    # -- ours -------------------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()

    def _force_close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def send(self, message: dict[str, Any]) -> bool:
        if self.closed or self.ws.state is not State.OPEN:
            return False
        frame = encode(message, self.protocol)
        if isinstance(frame, bytes):
            self.ws.send_binary(frame)
        else:
            self.ws.send_text(frame.encode())
        self.sent += 1
        self._flush()
        return True

    def close(self) -> None:
        """A clean close handshake (code 1000)."""
        self.closing = True
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
            self._flush()
            asyncio.get_running_loop().call_later(2.0, self._force_close)
        else:
            self._force_close()

    def abort(self) -> None:
        """Drop the TCP connection at once, as a dead network would (RST, no TIME_WAIT)."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


async def connect(
    url: str,
    on_message: OnMessage,
    *,
    protocol: str = MSGPACK,
    on_close: OnClose | None = None,
    headers: dict[str, str] | None = None,
    deflate: bool = False,
    timeout: float = 30.0,
    reader: ReadFirst | None = None,
) -> WsPeer:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    peer = WsPeer(url, protocol, on_message, on_close, headers, deflate, reader)
    async with asyncio.timeout(timeout):
        await loop.create_connection(lambda: peer, parts.hostname or "127.0.0.1", parts.port or 80)
        await peer.handshake
    return peer


async def watch_exam(
    url: str,
    exam_id: str,
    token: str,
    *,
    protocol: str = MSGPACK,
    on_message: OnMessage | None = None,
    timeout: float = 60.0,
) -> WsPeer:
    """A dashboard (`url` is the proctor socket's) subscribed to `exam_id`, returned once its
    snapshot is in; every later message goes to `on_message`."""
    snapshot: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_dashboard(peer: WsPeer, message: dict[str, Any]) -> None:
        if message.get("type") == "snapshot" and not snapshot.done():
            snapshot.set_result(None)
        elif on_message is not None:
            on_message(peer, message)

    peer = await connect(url, on_dashboard, protocol=protocol,
                         headers={"Authorization": f"Bearer {token}"})
    peer.send({"type": "subscribe", "exam_id": exam_id})
    await asyncio.wait_for(snapshot, timeout)
    return peer
