"""One WebSocket's outbound side: a bounded send queue drained by a writer task.

Fan-out only ever enqueues, so a slow client cannot delay anybody else; when its queue is full
the connection is closed with `CloseCode.SLOW_CONSUMER` and the client resynchronises on
reconnect. The writer task exists only while something is queued: an idle connection holds
no task, which keeps tens of thousands of idle sockets cheap.

A peer that stops reading would otherwise hold its socket (and its session) forever: the close
frame waits behind data it never reads. So sends have a deadline: while a send waits, one
timer checks every `send_timeout` that the peer read something; when it read nothing for that
long (or a close has waited that long), the socket is aborted and its reader stops.

On uvicorn's websockets-sansio server a frame sent while nothing waits is written to the
transport directly, framed once per message (`realtime.channels.direct`, which says when that
is safe); everything else goes through the ASGI send as described here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any, Protocol

from starlette.websockets import WebSocket

from realtime.channels import direct
from realtime.channels.codec import Codec, Encoded
from realtime.errors import CloseCode

log = logging.getLogger(__name__)
OPEN = direct.OPEN


class PeerTransport(Protocol):
    """What the deadline needs of the server's transport (asyncio's, or uvloop's)."""

    def abort(self) -> None: ...

    def get_write_buffer_size(self) -> int: ...


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class _Resume:
    """Await the rest of a coroutine that was started by hand and is waiting on `waiting`."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self.coro, self.waiting
        while True:
            try:
                sent = yield value
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return


class FrameCounts:
    """Frames this process wrote to its sockets since start (for metrics): pre-framed to the
    transport directly, or handed to the ASGI send (now or queued for the writer task). An
    instance, not class attributes of `Connection`: writing a class attribute at every frame
    would invalidate the interpreter's attribute caches of every `Connection` method."""

    __slots__ = ("asgi", "direct")

    def __init__(self) -> None:
        self.direct = 0
        self.asgi = 0


FRAMES = FrameCounts()


class Connection:
    overflows = 0  # process-wide count of connections dropped as slow (for metrics)
    send_timeouts = 0  # of those, cut off because the peer read nothing within the deadline
    __slots__ = (
        "_cut",
        "_deadline",
        "_direct",
        "_direct_conn",
        "_direct_ready",
        "_direct_transport",
        "_limit",
        "_progress",
        "_queue",
        "_send_timeout",
        "_sends",
        "_writer",
        "close_code",
        "closing",
        "codec",
        "in_receive",
        "peer_close_code",
        "reader",
        "stopped",
        "timed_out",
        "transport",
        "unanswered_since",
        "watched",
        "websocket",
    )

    def __init__(
        self,
        websocket: WebSocket,
        codec: Codec,
        queue_size: int,
        send_timeout: float = 0.0,
        transport: PeerTransport | None = None,
        server_protocol: Any = None,
    ) -> None:
        self.websocket = websocket
        self.codec = codec
        self.transport = transport  # the server's, to abort a peer that stopped reading
        # uvicorn's websockets-sansio protocol object of this socket, when frames may be
        # written to its transport directly (`direct.sansio_protocol`, and what cannot change
        # after the handshake allows it: `direct.settled`); else None. With it, the objects
        # whose state `direct.open_now` reads at every frame (uvicorn's for the protocol's
        # life): taken once here, so a frame reads their state and nothing of uvicorn's
        # protocol object but its two flags.
        self._direct = None
        self._direct_conn: Any = None
        self._direct_ready: asyncio.Event | None = None
        self._direct_transport: Any = None
        if server_protocol is not None and direct.settled(server_protocol):
            self._direct = server_protocol
            self._direct_conn = server_protocol.conn
            self._direct_ready = server_protocol.writable
            self._direct_transport = server_protocol.transport
        self.closing = False
        self.stopped = False  # cut off by the server (ping or send deadline): stop reading
        self.close_code: int | None = None  # set when the server closes
        self.peer_close_code: int | None = None  # the peer's, when it went away first
        # When the oldest ping the peer has not answered yet was queued, on the heartbeat's
        # liveness clock (which leaves out the time the event loop was stalled); None when
        # the peer has sent something since. Any frame from the peer counts as an answer.
        self.unanswered_since: float | None = None
        self.reader: asyncio.Task[Any] | None = None  # the task reading this socket
        self.timed_out = False
        self.watched = False  # the heartbeat checks unanswered pings; no per-frame timer needed
        self.in_receive = False  # the reader is waiting for the next frame
        self._limit = queue_size
        # Created when a send has to wait and dropped once drained: an idle connection holds
        # no deque (an empty one is ~0.7 KiB).
        self._queue: deque[bytes | str | _Close] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._send_timeout = send_timeout  # 0: no deadline
        self._deadline: asyncio.TimerHandle | None = None  # armed only while a send waits
        self._sends = 0  # sends the writer task completed (progress, for the deadline)
        self._progress: tuple[int, int, bool] = (0, 0, False)
        self._cut = False  # aborted by the deadline

    def start(self) -> None:
        """Remember the reading task, so a silent peer can be cut off by the heartbeat."""
        self.reader = asyncio.current_task()

    def send(self, message: dict[str, Any]) -> bool:
        return self.send_encoded(Encoded(message))

    def send_encoded(self, message: Encoded) -> bool:
        """Queue a message; False if the connection is closing or was just dropped as slow."""
        if self.closing:
            return False
        queue = self._queue
        if queue is not None and len(queue) >= self._limit:
            Connection.overflows += 1
            self.abort(CloseCode.SLOW_CONSUMER, "send queue overflow")
            return False
        if self._writer is None and not queue:  # nothing waiting: write it now
            server = self._direct
            if server is not None:
                # `direct.open_now`, inlined: a fan-out runs this for every socket, whose
                # objects are cold (docs/performance.md, "ninth session")
                peer, transport = self._direct_conn, self._direct_transport
                if (
                    not server.close_sent
                    and not server.disconnected
                    and self._direct_ready.is_set()  # type: ignore[union-attr]
                    and peer.state is OPEN
                    and not peer.writes
                    and not peer.expect_continuation_frame
                    and not transport.is_closing()
                ):
                    # framed once per message and codec, written as uvicorn's send would
                    FRAMES.direct += 1
                    try:
                        transport.write(message.wire(self.codec))
                    except Exception as exc:  # the peer went away
                        self._gone(exc)
                    return True
            FRAMES.asgi += 1  # `_send_now`, without wrapping the frame first
            ws, frame = self.websocket, message.frame(self.codec)
            self._drive(ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_text(frame),
                        False)
            return True
        FRAMES.asgi += 1
        self._enqueue(message.frame(self.codec))
        return True

    def close(self, code: int, reason: str = "") -> None:
        """Close after everything already queued has been sent."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self._enqueue(_Close(code, reason))

    def abort(self, code: int, reason: str) -> None:
        """Close now, dropping whatever is still queued."""
        if self._cut:
            return
        self.closing = True
        self.close_code = code
        self._queue = None
        self._enqueue(_Close(code, reason))

    def time_out(self) -> None:
        """The peer went silent: close, and stop the reader if it waits for a frame (never in
        the middle of handling one, so no change is cut in half)."""
        if not self.timed_out:
            self.timed_out = True
            self.stopped = True
            self.abort(CloseCode.PING_TIMEOUT, "no answer to pings")
        self._stop_reader()

    def _stop_reader(self) -> None:
        if self.in_receive and self.reader is not None and not self.reader.done():
            self.reader.cancel()

    def cut_off(self) -> None:
        """The peer read nothing within the send deadline: abort the socket (its close frame
        could not get through either), drop what is queued and stop reading from it. The
        reader then ends through the usual disconnect path."""
        if self._cut:
            return
        self._cut = True
        Connection.send_timeouts += 1
        log.info("peer read nothing for %.1f s: connection aborted", self._send_timeout)
        self.stopped = True
        self.closing = True
        self.close_code = CloseCode.SLOW_CONSUMER
        self._clear()
        self._disarm()
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
        if self.transport is not None:
            # The server notices the lost connection and hands the reader a disconnect.
            self.transport.abort()
        else:
            self._stop_reader()

    def _arm(self) -> None:
        """A send has to wait: check on the peer once per `send_timeout` until it is done."""
        if self._send_timeout <= 0 or self._deadline is not None or self._cut:
            return
        self._progress = self._mark()
        self._deadline = asyncio.get_running_loop().call_later(
            self._send_timeout, self._check_deadline
        )

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _mark(self) -> tuple[int, int, bool]:
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return (self._sends, buffered, self.closing)

    def _check_deadline(self) -> None:
        self._deadline = None
        if self._writer is None or self._cut:
            return
        sends, buffered, _ = self._mark()
        last_sends, last_buffered, was_closing = self._progress
        # Progress: a send went out, or the peer took bytes off the transport's buffer. A
        # close gets one deadline however slowly the peer reads.
        if not was_closing and (sends != last_sends or buffered < last_buffered):
            self._arm()
            return
        self.cut_off()

    def _clear(self) -> None:
        if self._queue is not None:
            self._queue.clear()  # the writer task may be holding it

    def _enqueue(self, item: bytes | str | _Close) -> None:
        if self._writer is None and not self._queue:
            self._send_now(item)
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.append(item)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain(None))
            self._arm()

    def _send_coro(self, item: bytes | str | _Close) -> Coroutine[Any, Any, None]:
        ws = self.websocket
        if isinstance(item, _Close):
            return ws.close(item.code, item.reason)
        if isinstance(item, bytes):
            return ws.send_bytes(item)
        return ws.send_text(item)

    def _send_now(self, item: bytes | str | _Close) -> None:
        """Send without a task: the ASGI send of a writable socket completes without waiting
        (it only waits while the transport applies backpressure), so drive it by hand. Only
        if it does wait does the rest go to a writer task. A fan-out to thousands of sockets
        then costs no task per message."""
        self._drive(self._send_coro(item), isinstance(item, _Close))

    def _drive(self, coro: Coroutine[Any, Any, None], is_close: bool) -> None:
        try:
            waiting = coro.send(None)
        except StopIteration:
            if is_close:
                self._clear()
            return
        except Exception as exc:  # the peer went away
            coro.close()
            self._gone(exc)
            return
        self._writer = asyncio.get_running_loop().create_task(
            self._drain((coro, waiting, is_close))
        )
        self._arm()

    def _gone(self, exc: BaseException) -> None:
        log.debug("writer stopped: %r", exc)
        self.closing = True
        self._clear()

    async def _drain(self, started: tuple[Coroutine[Any, Any, None], Any, bool] | None) -> None:
        try:
            if started is not None:
                coro, waiting, was_close = started
                await _Resume(coro, waiting)
                self._sends += 1
                if was_close:
                    self._clear()
                    return
            while self._queue:
                item = self._queue.popleft()
                await self._send_coro(item)
                self._sends += 1
                if isinstance(item, _Close):
                    self._clear()
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer went away mid-send
            self._gone(exc)
        finally:
            self._writer = None
            if not self._queue:
                self._queue = None
            self._disarm()

    async def stop(self) -> None:
        """Give the writer a moment to flush a pending close, then stop it."""
        self.reader = None  # a finished reader's traceback would hold this connection
        writer = self._writer
        if writer is None:
            self._disarm()
            return
        if self.closing and not writer.done():
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(writer), 1.0)
        if not writer.done():
            writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
        self._disarm()
