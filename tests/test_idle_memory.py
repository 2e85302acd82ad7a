"""What an idle candidate socket keeps alive, with thousands of them open (docs/performance.md,
"memory per idle connection"): no coroutine frame of a middleware, of Starlette's router or
exception middleware, no send deque of its own, and no headers of the opening handshake in
uvicorn's protocol object.

The app runs in this process (its lifespan driven over ASGI, SQLite in a temporary directory),
so the socket's task can be looked at while it waits for the page's first message.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from clients import Api, WsClient
from server import STAFF_TOKEN, free_port
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from realtime.app import create_app
from realtime.channels.direct import SANSIO_MODULE, forget_handshake, sansio_protocol
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


# -- the opening handshake's headers, under a real uvicorn ---------------------------------------


@contextlib.asynccontextmanager
async def _uvicorn(tmp_path: Path, ws: str) -> AsyncIterator[uvicorn.Server]:
    """The app under uvicorn in this process (as `realtime serve` configures its sockets)."""
    app = create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'rt.db'}",
                              bootstrap_staff_token=STAFF_TOKEN))
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), loop="none", lifespan="on",
                            log_level="warning", ws=ws, ws_ping_interval=None,
                            ws_per_message_deflate=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # uvicorn offers a flag, not an event
            assert not task.done(), task
            await asyncio.sleep(0.02)
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def _candidate_socket(server: uvicorn.Server) -> WsClient:
    port = server.config.port
    client = await WsClient.connect(f"ws://127.0.0.1:{port}/ws/candidate",
                                    user_agent_header="idle-memory-test",
                                    additional_headers={"X-Padding": "p" * 200})
    await client.send({"type": "progress", "position": 1, "answered": 0})
    reply = await client.recv_any()  # the socket is served: it answers before any open
    assert reply["type"] == "error" and reply["code"] == "out_of_order", reply
    return client


async def test_an_accepted_socket_keeps_no_handshake_headers_in_uvicorn(tmp_path: Path) -> None:
    """uvicorn's websockets-sansio protocol (and websockets' parser) keep the handshake's
    request and response for the socket's life: their headers are emptied once it is
    accepted, while the application's copy in the scope stays whole."""
    async with _uvicorn(tmp_path, "websockets-sansio") as server:
        client = await _candidate_socket(server)
        try:
            protocols = [p for p in server.server_state.connections
                         if type(p).__module__ == SANSIO_MODULE]
            assert len(protocols) == 1, server.server_state.connections
            protocol: Any = protocols[0]
            assert isinstance(protocol.request, Request)
            assert isinstance(protocol.response, Response)
            assert list(protocol.request.headers.raw_items()) == []
            assert list(protocol.response.headers.raw_items()) == []
            headers = dict(protocol.scope["headers"])  # what the application reads
            assert headers[b"user-agent"] == b"idle-memory-test"
            assert headers[b"x-padding"] == b"p" * 200
            # and the socket goes on working
            await client.send({"type": "pong", "t": 0})
            await client.send({"type": "nonsense"})
            reply = await client.recv_any()
            assert reply["type"] == "error" and reply["code"] == "out_of_order", reply
        finally:
            await client.close()


async def test_other_websocket_implementations_are_left_as_they_are(tmp_path: Path) -> None:
    """wsproto's protocol is not touched (fail closed), and its sockets work as before."""
    async with _uvicorn(tmp_path, "wsproto") as server:
        client = await _candidate_socket(server)
        try:
            (protocol,) = [p for p in server.server_state.connections
                           if type(p).__module__.startswith("uvicorn.protocols.websockets")]
            assert sansio_protocol(protocol.transport) is None
            assert forget_handshake(protocol) == 0
        finally:
            await client.close()


async def test_an_open_session_s_socket_keeps_no_request_headers(tmp_path: Path) -> None:
    """Once the session is open, the upgrade request's headers are gone from the scope (the
    server's and the application's: one list); what the open needed of them was read first:
    the user agent's fingerprint is the session's `device`."""
    browser = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
    async with _uvicorn(tmp_path, "websockets-sansio") as server:
        base = f"http://127.0.0.1:{server.config.port}"
        api = Api(base)
        client = None
        try:
            exam = await api.create_exam()
            (session,) = await api.create_sessions(exam["id"], 1)
            client = await WsClient.connect(f"ws://127.0.0.1:{server.config.port}/ws/candidate",
                                            user_agent_header=browser,
                                            additional_headers={"Cookie": "c=" + "x" * 300})
            await client.send({"type": "open", "access_code": session["access_code"]})
            opened = await client.recv("opened")
            assert opened["session"]["id"] == session["id"], opened
            protocols: list[Any] = [p for p in server.server_state.connections
                                    if type(p).__module__ == SANSIO_MODULE]
            assert len(protocols) == 1 and protocols[0].scope["headers"] == []
            app: Any = server.config.app
            runtime = app.state.runtime  # the store's own copy of the session
            stored = await runtime.service.get_session(exam["id"], session["id"])
            assert stored["device"] == hashlib.sha256(browser.encode()).hexdigest()[:12]
            # the open socket goes on: a second open is refused on it, as before
            await client.send({"type": "open", "access_code": session["access_code"]})
            reply = await client.recv("error")
            assert reply["code"] == "out_of_order", reply
        finally:
            if client is not None:
                await client.close()
            await api.close()


def test_forget_handshake_touches_only_a_completed_sansio_handshake() -> None:
    """No protocol, another one, a handshake not yet complete, or attributes of other types:
    nothing is touched."""
    request = Request("/ws/candidate", Headers({"User-Agent": "x"}))
    response = Response(101, "Switching Protocols", Headers({"Upgrade": "websocket"}))

    def sansio(complete: bool, **attributes: Any) -> Any:
        kind = type("WebSocketsSansIOProtocol", (), {"__module__": SANSIO_MODULE})
        protocol = kind()
        protocol.handshake_complete = complete
        for name, value in attributes.items():
            setattr(protocol, name, value)
        return protocol

    assert forget_handshake(None) == 0
    assert forget_handshake(object()) == 0
    assert forget_handshake(sansio(False, request=request, response=response)) == 0
    assert forget_handshake(sansio(True, request={"User-Agent": "x"})) == 0
    assert len(request.headers) == 1 and len(response.headers) == 1
    assert forget_handshake(sansio(True, request=request, response=response)) == 2
    assert len(request.headers) == 0 and len(response.headers) == 0
