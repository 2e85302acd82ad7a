"""One WebSocket's outbound side: a bounded send queue drained by its own writer task.

Fan-out only ever enqueues, so a slow client cannot delay anybody else; when its queue is full
the connection is closed with `CloseCode.SLOW_CONSUMER` and the client resynchronises on
reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocket

from realtime.channels.codec import Codec, Encoded
from realtime.errors import CloseCode

log = logging.getLogger(__name__)


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Connection:
    overflows = 0  # process-wide count of connections dropped as slow (for metrics)

    def __init__(self, websocket: WebSocket, codec: Codec, queue_size: int) -> None:
        self.websocket = websocket
        self.codec = codec
        self.closing = False
        self.close_code: int | None = None
        self._queue: asyncio.Queue[bytes | str | _Close] = asyncio.Queue(queue_size)
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="ws-writer")

    def send(self, message: dict[str, Any]) -> bool:
        return self.send_encoded(Encoded(message))

    def send_encoded(self, message: Encoded) -> bool:
        """Queue a message; False if the connection is closing or was just dropped as slow."""
        if self.closing:
            return False
        try:
            self._queue.put_nowait(message.frame(self.codec))
        except asyncio.QueueFull:
            Connection.overflows += 1
            self.abort(CloseCode.SLOW_CONSUMER, "send queue overflow")
            return False
        return True

    def close(self, code: int, reason: str = "") -> None:
        """Close after everything already queued has been sent."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        try:
            self._queue.put_nowait(_Close(code, reason))
        except asyncio.QueueFull:
            self._drop_queue()
            self._queue.put_nowait(_Close(code, reason))

    def abort(self, code: int, reason: str) -> None:
        """Close now, dropping whatever is still queued."""
        self.closing = True
        self.close_code = code
        self._drop_queue()
        self._queue.put_nowait(_Close(code, reason))

    def _drop_queue(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _write_loop(self) -> None:
        ws = self.websocket
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _Close):
                    await ws.close(item.code, item.reason)
                    return
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                else:
                    await ws.send_text(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer went away mid-send
            log.debug("writer stopped: %r", exc)
            self.closing = True

    async def stop(self) -> None:
        """Give the writer a moment to flush a pending close, then stop it."""
        if self._writer is None:
            return
        if self.closing and not self._writer.done():
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._writer), 1.0)
        if not self._writer.done():
            self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._writer
