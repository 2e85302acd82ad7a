"""What an idle candidate socket keeps alive, with thousands of them open (docs/performance.md,
"memory per idle connection"): no coroutine frame of a middleware, of Starlette's router or
exception middleware, and no send deque of its own.

The app runs in this process (its lifespan driven over ASGI, SQLite in a temporary directory),
so the socket's task can be looked at while it waits for the page's first message.
"""

from __future__ import annotations

import asyncio
import gc
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from realtime.app import create_app
from realtime.config import Settings
from realtime.hub.connection import Connection


class Running:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async def send(message: dict[str, Any]) -> None:
            await self.replies.put(message)

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self.task = asyncio.create_task(self.app(scope, self.events.get, send))
        await self.events.put({"type": "lifespan.startup"})
        reply = await asyncio.wait_for(self.replies.get(), 30)
        assert reply["type"] == "lifespan.startup.complete", reply

    async def stop(self) -> None:
        assert self.task is not None
        await self.events.put({"type": "lifespan.shutdown"})
        reply = await asyncio.wait_for(self.replies.get(), 30)
        assert reply["type"] == "lifespan.shutdown.complete", reply
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Any]:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'rt.db'}")
    app = create_app(settings)
    running = Running(app)
    await running.start()
    try:
        yield app
    finally:
        await running.stop()


async def test_an_idle_candidate_socket_keeps_no_router_or_middleware_frames(app: Any) -> None:
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    waiting = asyncio.Event()  # set: the app waits for a message nobody sent yet

    async def receive() -> dict[str, Any]:
        if incoming.empty():
            waiting.set()
        return await incoming.get()

    async def send(message: dict[str, Any]) -> None:
        await sent.put(message)

    scope = {
        "type": "websocket", "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1", "scheme": "ws", "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 40000), "root_path": "", "path": "/ws/candidate",
        "raw_path": b"/ws/candidate", "query_string": b"", "headers": [],
        "subprotocols": [], "state": {}, "extensions": {},
    }
    await incoming.put({"type": "websocket.connect"})
    task = asyncio.create_task(app(scope, receive, send))
    try:
        accepted = await asyncio.wait_for(sent.get(), 10)
        assert accepted["type"] == "websocket.accept", accepted
        await asyncio.wait_for(waiting.wait(), 10)  # for the page's first message
        chain = _chain(task)
        assert any("realtime/channels/candidate.py" in c for c in chain), chain
        held = [c for c in chain if any(name in c for name in (
            "starlette/routing.py", "starlette/_exception_handler.py",
            "starlette/middleware/exceptions.py", "realtime/channels/transport.py",
            "realtime/api/inputs.py", "realtime/limits/body.py",
        ))]
        assert held == [], held
        conns = [o for o in gc.get_objects() if isinstance(o, Connection)]
        assert conns
        for conn in conns:  # an idle connection keeps no send deque
            assert not any(isinstance(o, deque) for o in gc.get_referents(conn))
    finally:
        await incoming.put({"type": "websocket.disconnect", "code": 1001})
        await asyncio.wait_for(task, 10)


def _chain(task: asyncio.Task[None]) -> list[str]:
    """The coroutines the task is suspended in, outermost first ("file:function")."""
    chain: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and getattr(awaited, "cr_code", None) is not None:
        chain.append(f"{awaited.cr_code.co_filename}:{awaited.cr_code.co_name}")
        awaited = awaited.cr_await
    return chain
