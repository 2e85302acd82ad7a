"""The peer the benchmark compares against: the fan-out floor a Python user would pick instead.

A minimal python-socketio `AsyncServer` (ASGI, websocket transport only) with an
`AsyncRedisManager` on a private redis-server, served by uvicorn like the real server:

    PEER_REDIS_URL=redis://127.0.0.1:6390/0 \\
        python -m uvicorn loadtests.peer_socketio:create_app --factory --port 8100

No state, no auth, no SQL. It does the same fan-out as the real server:

* a candidate connects with auth `{"role": "candidate", "exam": E, "candidate": C}` and joins
  the rooms `exam:E` and `cand:C`; a dashboard connects with `{"role": "proctor", "exam": E}`
  and joins `proctors:E`;
* `POST /command` `{"exam", "target": C | "all", "action", "command_id"}` emits `command` to
  `cand:C` (targeted) or to `exam:E` ("pause all"), and an `event` (one `event_batch` for
  "all") to the dashboards; it answers `{"applied": n}` (n = candidates of the room on this
  process);
* a candidate's `progress` and `ack` events are re-emitted to the dashboards as `event`s of
  kind `progress` / `delivered`, as the real server's deltas.

Every emit goes through the Redis manager (publish, then the listener delivers), as it would
with several peer processes.
"""

from __future__ import annotations

import os
import time
from typing import Any

import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PEER_REDIS_URL = "PEER_REDIS_URL"
PEER_PING_INTERVAL = "PEER_PING_INTERVAL"


def create_app() -> Any:
    redis_url = os.environ.get(PEER_REDIS_URL, "")
    ping_interval = float(os.environ.get(PEER_PING_INTERVAL, "5"))
    manager = socketio.AsyncRedisManager(redis_url, channel="peer") if redis_url else None
    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=manager, ping_interval=ping_interval,
        ping_timeout=20, transports=["websocket"], cors_allowed_origins="*",
        logger=False, engineio_logger=False,
    )
    who: dict[str, tuple[str, str]] = {}  # sid -> (exam, candidate)

    @sio.event  # type: ignore[untyped-decorator,unused-ignore]
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        auth = auth if isinstance(auth, dict) else {}
        exam = str(auth.get("exam", ""))
        if not exam:
            return False
        if auth.get("role") == "proctor":
            await sio.enter_room(sid, f"proctors:{exam}")
            return True
        candidate = str(auth.get("candidate", ""))
        if not candidate:
            return False
        who[sid] = (exam, candidate)
        await sio.enter_room(sid, f"exam:{exam}")
        await sio.enter_room(sid, f"cand:{candidate}")
        return True

    @sio.event  # type: ignore[untyped-decorator,unused-ignore]
    async def disconnect(sid: str, *args: Any) -> None:
        who.pop(sid, None)

    @sio.event  # type: ignore[untyped-decorator,unused-ignore]
    async def progress(sid: str, data: Any) -> None:
        exam, candidate = who.get(sid, ("", ""))
        if not exam or not isinstance(data, dict):
            return
        await sio.emit("event", {
            "kind": "progress", "session_id": candidate, "at": time.time(),
            "changes": {"position": data.get("position"), "answered": data.get("answered")},
        }, room=f"proctors:{exam}")

    @sio.event  # type: ignore[untyped-decorator,unused-ignore]
    async def ack(sid: str, data: Any) -> None:
        exam, candidate = who.get(sid, ("", ""))
        if not exam or not isinstance(data, dict):
            return
        await sio.emit("event", {
            "kind": "delivered", "session_id": candidate, "at": time.time(),
            "details": {"command_id": data.get("command_id")},
        }, room=f"proctors:{exam}")

    async def command(request: Request) -> JSONResponse:
        body = await request.json()
        exam, target = str(body.get("exam", "")), body.get("target")
        action, command_id = str(body.get("action", "")), str(body.get("command_id", ""))
        if not exam or not target or not action:
            return JSONResponse({"error": "exam, target and action are needed"}, status_code=400)
        message = {"command_id": command_id, "action": action, "at": time.time()}
        if target == "all":
            room = f"exam:{exam}"
            members = [c for e, c in who.values() if e == exam]
            await sio.emit("command", message, room=room)
            await sio.emit("event_batch", {"events": [
                {"kind": action, "session_id": c, "details": {"command_id": command_id}}
                for c in members]}, room=f"proctors:{exam}")
            return JSONResponse({"applied": len(members)})
        await sio.emit("command", message, room=f"cand:{target}")
        await sio.emit("event", {"kind": action, "session_id": target,
                                 "details": {"command_id": command_id}},
                       room=f"proctors:{exam}")
        return JSONResponse({"applied": 1})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "connected": len(who)})

    http = Starlette(routes=[Route("/command", command, methods=["POST"]),
                             Route("/healthz", healthz)])
    return socketio.ASGIApp(sio, other_asgi_app=http)
