"""`GET /api/v1/exams/{exam_id}/events`: one exam's events as Server-Sent Events.

For automation (`curl -N`, an `EventSource`): the same watcher as a dashboard socket
(`realtime.channels.watching`), so the same gap-free guarantee. Each event's SSE `id` is its
exam sequence number; a client that reconnects with `Last-Event-ID` (or `?last_event_id=`)
gets exactly what it missed, or a `snapshot` when the event log no longer reaches back.

Frames: `event: snapshot` (the exam and its sessions, `id` = the exam's seq), then one
unnamed (`message`) event per exam event, `: keep-alive` comments while nothing happens
(REALTIME_SSE_HEARTBEAT), and a final `event: close` when the server ends the stream
(resync, slow consumer, shutdown, revoked credentials, changed scope): `resume` says whether
to reconnect with Last-Event-ID.

Starlette's `StreamingResponse`, not sse-starlette: the framing is four lines, and the parts
that matter here (a bounded buffer, a send deadline, the watcher's lifetime) are ours anyway.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from realtime.api.routes import principal_of
from realtime.channels.codec import Encoded
from realtime.channels.transport import transport_in
from realtime.channels.watching import scope_watch, start_watching
from realtime.errors import BadRequest, CloseCode
from realtime.hub.connection import Connection
from realtime.hub.hub import Watcher
from realtime.identity.web import credential_watch, request_token
from realtime.jsonsafe import dumps
from realtime.runtime import Runtime, runtime_of

RETRY_MS = 2000  # how long an EventSource waits before it reconnects
MAX_SEQ = 2**53 - 1


def sse_frames(message: dict[str, Any]) -> bytes:
    """A watcher's message as SSE frames (empty when it carries nothing to deliver)."""
    kind = message.get("type")
    if kind == "snapshot":
        body = {k: v for k, v in message.items() if k != "type"}
        return b"id: %d\nevent: snapshot\ndata: %s\n\n" % (message["seq"], dumps(body))
    if kind == "event":
        events = [message["event"]]
    elif kind in ("events", "event_batch"):
        events = message["events"]
    elif kind == "error":
        return b"event: error\ndata: %s\n\n" % dumps(
            {"code": message.get("code"), "message": message.get("message")}
        )
    else:
        return b""
    return b"".join(b"id: %d\ndata: %s\n\n" % (e["seq"], dumps(e)) for e in events)


def close_frame(code: int, reason: str) -> bytes:
    resume = code != CloseCode.UNAUTHORIZED
    return b"event: close\ndata: %s\n\n" % dumps(
        {"code": int(code), "reason": reason, "resume": resume}
    )


class EventStream:
    """A watcher's outlet for one SSE response: a bounded queue the response drains.

    Fan-out only enqueues (never waits); a client that falls `limit` messages behind has its
    queue dropped and gets a final `close` event (4008): it reconnects with Last-Event-ID and
    gets exactly what it missed, at no cost in server memory."""

    def __init__(self, limit: int) -> None:
        self.closing = False
        self._limit = limit
        self._queue: deque[dict[str, Any]] = deque()
        self._final: tuple[int, str] | None = None
        self._wake = asyncio.Event()

    def send(self, message: dict[str, Any]) -> bool:
        if self.closing:
            return False
        if len(self._queue) >= self._limit:
            Connection.overflows += 1
            self.abort(CloseCode.SLOW_CONSUMER, "fell behind; resume with Last-Event-ID")
            return False
        self._queue.append(message)
        self._wake.set()
        return True

    def send_encoded(self, message: Encoded) -> bool:
        return self.send(message.message)

    def close(self, code: int, reason: str = "") -> None:
        """End the stream after what is already queued."""
        if self.closing:
            return
        self.closing = True
        self._final = (code, reason)
        self._wake.set()

    def abort(self, code: int, reason: str) -> None:
        """End the stream now, dropping what is queued (and any close already asked for)."""
        self._queue.clear()
        self.closing = True
        self._final = (code, reason)
        self._wake.set()

    async def chunks(self, heartbeat: float) -> AsyncIterator[bytes]:
        """The response body: frames as they are queued, a comment every `heartbeat` seconds
        of silence, and the final `close` event."""
        yield b"retry: %d\n\n" % RETRY_MS
        while True:
            if self._queue:
                frames = sse_frames(self._queue.popleft())
                if frames:
                    yield frames
                continue
            if self._final is not None:
                yield close_frame(*self._final)
                return
            self._wake.clear()
            try:
                async with asyncio.timeout(heartbeat):
                    await self._wake.wait()
            except TimeoutError:
                yield b": keep-alive\n\n"


class EventStreamResponse(StreamingResponse):
    """Streams an `EventStream` while its watcher is registered, its credentials and scope
    re-checked; removes the watcher however the response ends. A send that waits longer than
    REALTIME_SEND_TIMEOUT (a client that stopped reading) aborts the connection."""

    def __init__(
        self, runtime: Runtime, stream: EventStream, watcher: Watcher, token: str,
        heartbeat: float,
    ) -> None:
        super().__init__(
            stream.chunks(heartbeat),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.runtime = runtime
        self.stream = stream
        self.watcher = watcher
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime, stream, watcher = self.runtime, self.stream, self.watcher
        settings = runtime.settings
        deadline = settings.send_timeout
        transport = transport_in(scope)

        async def send_in_time(message: Any) -> None:
            if deadline <= 0:
                await send(message)
                return
            try:
                async with asyncio.timeout(deadline):
                    await send(message)
            except TimeoutError:
                # The client read nothing for that long: drop it (the server's later sends
                # then return at once, and the body ends).
                Connection.send_timeouts += 1
                stream.abort(CloseCode.SLOW_CONSUMER, "read nothing")
                if transport is not None:
                    transport.abort()
                else:
                    raise

        try:
            interval = settings.auth_recheck_interval
            async with (
                credential_watch(stream, runtime.auth, self.token, watcher.principal, interval),
                scope_watch(stream, runtime, watcher.principal, [watcher], interval),
            ):
                await super().__call__(scope, receive, send_in_time)
        finally:
            runtime.hub.remove_watcher(watcher)


def last_event_id(request: Request) -> int | None:
    """The seq the client saw last: `Last-Event-ID`, else `?last_event_id=`; 400 if neither
    is a non-negative integer."""
    raw = request.headers.get("last-event-id")
    if raw is None:
        raw = request.query_params.get("last_event_id")
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 16 or int(raw) > MAX_SEQ:
        raise BadRequest("Last-Event-ID must be a non-negative integer (an event's id)")
    return int(raw)


async def exam_events(request: Request) -> StreamingResponse:
    """The exam's events as `text/event-stream` (see the module docstring). 401 without a
    valid token, 404 for an exam unknown or out of the caller's scope."""
    runtime = runtime_of(request)
    principal = await principal_of(request)
    since = last_event_id(request)
    stream = EventStream(runtime.settings.send_queue_size)
    watcher = await start_watching(
        runtime, stream, principal, request.path_params["exam_id"], since
    )
    token, _ = request_token(request)
    return EventStreamResponse(runtime, stream, watcher, token, runtime.settings.sse_heartbeat)
