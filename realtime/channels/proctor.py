"""`WS /ws/proctor`: staff watch one exam live and send commands.

`subscribe` answers with a `snapshot` (all sessions + the exam sequence number), or, when the
client says which sequence it saw last and the event log still reaches back, with the missed
`events`. Then ordered `event` deltas follow. `command` messages are answered by a
`command_result` carrying the client's `request_id`.

Group scope (`realtime.identity.scope`) is checked on subscribe (an exam out of scope answers
`not_found` like an unknown one), on the snapshot and catch-up, and on every delta; a change of
the exam's groups that changes what the dashboard may see closes it (4403).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocket

from realtime.auth.principal import Principal
from realtime.channels.common import (
    accept,
    error_message,
    messages,
    optional_number,
    request_id_of,
    required_str,
)
from realtime.channels.watching import scope_watch, start_watching
from realtime.commands import parse_command
from realtime.errors import (
    BadRequest,
    CloseCode,
    ErrorCode,
    Forbidden,
    RealtimeError,
    backend_down,
)
from realtime.hub.connection import Connection
from realtime.hub.hub import Watcher
from realtime.identity.audit import Ctx
from realtime.identity.web import (
    authenticate_websocket,
    client_ip,
    credential_watch,
    identity_of,
)
from realtime.limits.refusals import Kind
from realtime.limits.setup import limits_of
from realtime.runtime import Runtime, runtime_of

log = logging.getLogger(__name__)


async def proctor_endpoint(websocket: WebSocket) -> None:
    runtime = runtime_of(websocket)
    conn = await accept(websocket, runtime.settings)
    if conn is None:
        return
    watcher: list[Watcher | None] = [None]
    try:
        principal, token, refused = await authenticate_websocket(
            websocket, runtime.auth, runtime.settings
        )
        if principal is None:
            unauthorized = refused == CloseCode.UNAUTHORIZED
            conn.send(
                error_message(
                    ErrorCode.UNAUTHORIZED if unauthorized else ErrorCode.FORBIDDEN,
                    "a valid staff token is required" if unauthorized else "not allowed here",
                )
            )
            conn.close(refused, "unauthorized" if unauthorized else "forbidden")
            return
        interval = runtime.settings.auth_recheck_interval
        async with (
            credential_watch(conn, runtime.auth, token, principal, interval),
            scope_watch(conn, runtime, principal, watcher, interval),
        ):
            await _serve(websocket, conn, runtime, principal, watcher)
    except asyncio.CancelledError:
        if not conn.stopped:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the server cut off a stalled peer: clean up below
    except Exception:
        log.exception("proctor connection failed")
        conn.abort(1011, "internal error")
    finally:
        if watcher[0] is not None:
            runtime.hub.remove_watcher(watcher[0])
        with contextlib.suppress(Exception):
            await conn.stop()


async def _serve(
    websocket: WebSocket,
    conn: Connection,
    runtime: Runtime,
    principal: Principal,
    current: list[Watcher | None],
) -> None:
    limiter = limits_of(websocket).message_limiter(Kind.DASHBOARD_MESSAGE, websocket)
    async for message in messages(websocket, conn, runtime.settings, None, limiter):
        kind = message["type"]
        try:
            request_id = request_id_of(message)
        except BadRequest as exc:
            conn.send(error_message(exc.code, exc.message, request=kind))
            continue
        extra = {"request_id": request_id} if request_id is not None else {}
        try:
            if kind == "subscribe":
                current[0] = await _subscribe(runtime, conn, principal, message, current[0])
            elif kind == "command":
                if current[0] is None:
                    raise BadRequest(
                        "subscribe to an exam before sending commands", ErrorCode.OUT_OF_ORDER
                    )
                action, target, params = parse_command(message)
                result = await runtime.service.command(
                    current[0].exam_id, action, target, principal, params
                )
                conn.send({"type": "command_result", **extra, **result.to_dict()})
            elif kind in ("pong", "ping"):
                t = optional_number(message, "t")
                if kind == "ping":
                    conn.send({"type": "pong", "t": t})
            else:
                raise BadRequest(f"unknown message type {kind!r}", ErrorCode.UNKNOWN_TYPE)
        except Forbidden as exc:
            if kind == "subscribe":  # command denials are audited by the service
                await identity_of(websocket).audit.record(
                    Ctx(principal.actor, client_ip(websocket)),
                    "permission_denied",
                    f"exam:{message.get('exam_id')}",
                    request="subscribe",
                    message=exc.message,
                )
            conn.send(error_message(exc.code, exc.message, request=kind, **extra))
        except RealtimeError as exc:
            conn.send(error_message(exc.code, exc.message, request=kind, **extra))
        except Exception as exc:
            if not backend_down(exc):
                raise
            log.warning("dashboard %s not served, backend down: %r", kind, exc)
            conn.send(error_message(ErrorCode.UNAVAILABLE,
                                    "a backend does not answer; nothing was applied; retry",
                                    request=kind, **extra))


async def _subscribe(
    runtime: Runtime,
    conn: Connection,
    principal: Principal,
    message: dict[str, Any],
    previous: Watcher | None,
) -> Watcher:
    exam_id = required_str(message, "exam_id", 128)
    last_seq = message.get("last_seq")
    if last_seq is not None and (
        not isinstance(last_seq, int) or isinstance(last_seq, bool) or last_seq < 0
    ):
        raise BadRequest("'last_seq' must be a non-negative integer")
    return await start_watching(runtime, conn, principal, exam_id, last_seq, previous)
