"""Pre-framed writes end to end: a real server (`realtime serve`), real sockets and clients.

On websockets-sansio without deflate (the default) a bulk command's frames are written to the
sockets directly and arrive as the messages' exact encodings, on both subprotocols; with
permessage-deflate negotiated, on wsproto and on legacy websockets every frame goes through the
ASGI send, as before. `realtime_frames_written_total{path}` in the server's /metrics says
which way each frame went. A socket whose reader stops gets no direct write while its server
buffer is full, and its frames arrive in order once it reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from clients import JSON, MSGPACK, Api, PausedReader, WsClient, eventually, open_candidate, watch
from server import ServerProcess

from realtime.channels.codec import CODECS

CANDIDATES = (MSGPACK, JSON, MSGPACK, JSON)
NOTICE = "€" * 2000  # the longest notice text: 6,000 bytes a frame
MAX_NOTICES = 2000  # bound of the push loop (the reader's buffers fill long before)


@pytest.fixture(scope="module")
def serve() -> Iterator[ServerProcess]:
    """`realtime serve` as deployed: websockets-sansio, no deflate."""
    process = ServerProcess(cli=True, ping_interval=3600, send_timeout=120)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def api(serve: ServerProcess) -> AsyncIterator[Api]:
    client = Api(serve.url)
    yield client
    await client.close()


async def frames_written(api: Api) -> dict[str, int]:
    text = (await api.http.get("/metrics")).text
    found = dict(re.findall(r'^realtime_frames_written_total\{path="(\w+)"\} (\S+)$', text,
                            re.MULTILINE))
    assert set(found) == {"direct", "asgi"}, text[-2000:]
    return {path: int(float(value)) for path, value in found.items()}


async def next_command(client: WsClient) -> bytes | str:
    """The raw payload of the next `command` frame (other frames skipped)."""
    while True:
        payload = await asyncio.wait_for(client.ws.recv(), 10)
        codec = CODECS[client.protocol]
        if codec.decode(payload)["type"] == "command":
            return payload


async def a_bulk_command(server: ServerProcess, api: Api) -> tuple[dict[str, int], list[Any]]:
    """A "pause all" of candidates on both subprotocols with a dashboard watching: checks
    every frame and returns the frames written meanwhile, by path, and the clients."""
    exam = await api.create_exam()
    sessions = await api.create_sessions(exam["id"], len(CANDIDATES))
    clients = []
    for session, protocol in zip(sessions, CANDIDATES, strict=True):
        client, opened = await open_candidate(server.ws_url, session["access_code"], protocol)
        assert opened["type"] == "opened"
        clients.append(client)
    dashboard, snapshot = await watch(server.ws_url, exam["id"], JSON)
    assert snapshot["type"] == "snapshot"
    before = await frames_written(api)
    result = await api.command(exam["id"], action="pause", target="all", command_id="bulk-p")
    assert len(result["applied"]) == len(CANDIDATES)
    for client, session in zip(clients, sessions, strict=True):
        payload = await next_command(client)
        codec = CODECS[client.protocol]
        assert isinstance(payload, bytes if client.protocol == MSGPACK else str)
        message = codec.decode(payload)
        assert message["command_id"] == "bulk-p" and message["action"] == "pause"
        assert message["session"]["status"] == "paused"
        state = await api.session(exam["id"], session["id"])
        assert message["session"]["version"] == state["version"]
        assert codec.encode(message) == payload  # the message's own encoding, byte for byte
    paused = [await dashboard.recv_event("pause") for _ in CANDIDATES]
    assert {e["session_id"] for e in paused} == {s["id"] for s in sessions}
    after = await frames_written(api)
    moved = {path: after[path] - before[path] for path in after}
    return moved, [*clients, dashboard]


async def test_a_bulk_commands_frames_are_written_directly_and_arrive_exact(
    serve: ServerProcess, api: Api
) -> None:
    moved, clients = await a_bulk_command(serve, api)
    try:
        # a frame per candidate and the dashboard's batch, none through the ASGI send
        assert moved["direct"] >= len(CANDIDATES) + 1 and moved["asgi"] == 0
    finally:
        for client in clients:
            await client.close()


@pytest.mark.parametrize("ws_impl, deflate", [
    ("websockets-sansio", "1"), ("wsproto", "0"), ("websockets", "0"),
], ids=["deflate negotiated", "wsproto", "legacy websockets"])
async def test_elsewhere_every_frame_goes_through_the_asgi_send(
    ws_impl: str, deflate: str
) -> None:
    server = ServerProcess(cli=True, ws_impl=ws_impl, ws_deflate=deflate, ping_interval=3600)
    server.start()
    api = Api(server.url)
    try:
        moved, clients = await a_bulk_command(server, api)
        try:
            negotiated = [c.ws.protocol.extensions for c in clients]
            assert all(negotiated) if deflate == "1" else not any(negotiated)
            assert moved["direct"] == 0 and moved["asgi"] >= len(CANDIDATES) + 1
            assert (await frames_written(api))["direct"] == 0
        finally:
            for client in clients:
                await client.close()
    finally:
        await api.close()
        server.stop()


async def test_the_servers_close_after_direct_writes(serve: ServerProcess, api: Api) -> None:
    """A terminated candidate gets its command (written directly) and then the server's
    close frame with its code, through uvicorn's protocol as ever."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    client, opened = await open_candidate(serve.ws_url, session["access_code"])
    assert opened["type"] == "opened"
    before = await frames_written(api)
    await api.command(exam["id"], action="terminate", target=session["id"])
    assert CODECS[MSGPACK].decode(await next_command(client))["action"] == "terminate"
    assert await client.wait_closed() == 4101
    after = await frames_written(api)
    assert after["direct"] - before["direct"] == 1 and after["asgi"] == before["asgi"]


async def test_a_socket_that_stops_reading_gets_no_direct_write_and_keeps_its_order(
    serve: ServerProcess, api: Api
) -> None:
    """Notices to a page that stopped reading: written directly until the server's buffer for
    it is full, then through the ASGI send (which waits) and queued behind it. Once the page
    reads again it gets every notice in order; the next one is written directly again."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    reader = await PausedReader.open(serve.ws_url, session["access_code"])
    # a pong without `t`: nothing to answer, so nothing is written back while it does not read
    pongs = asyncio.create_task(reader.keep_answering({"type": "pong"}))
    pushed: list[str] = []

    def received() -> list[str]:
        """The notices the page read, in order (each text's first word: its number)."""
        return [c["details"]["text"].split(" ")[0] for c in reader.commands("notice")]

    async def notice() -> dict[str, int]:
        """Push the next notice; once its frame was written or queued, the counts."""
        before = await frames_written(api)
        pushed.append(f"{len(pushed):04d}")
        await api.command(exam["id"], action="notice", target=session["id"],
                          text=f"{pushed[-1]} {NOTICE}"[:2000])

        async def counted() -> dict[str, int] | None:
            now = await frames_written(api)
            return now if sum(now.values()) > sum(before.values()) else None

        found: dict[str, int] = await eventually(counted, timeout=10)
        return found

    try:
        start = await frames_written(api)
        for _ in range(MAX_NOTICES):
            counts = await notice()
            if counts["asgi"] > start["asgi"]:
                break
        assert counts["asgi"] == start["asgi"] + 1, "never pushed back"
        assert counts["direct"] - start["direct"] == len(pushed) - 1 > 0
        assert received() == []
        for _ in range(2):  # behind the waiting one: queued, not written directly
            counts = await notice()
        assert counts == {"direct": start["direct"] + len(pushed) - 3,
                          "asgi": start["asgi"] + 3}

        reader.transport.resume_reading()
        await eventually(lambda: len(received()) == len(pushed), timeout=30)
        assert received() == pushed

        counts = await notice()
        assert counts == {"direct": start["direct"] + len(pushed) - 3,
                          "asgi": start["asgi"] + 3}
        await eventually(lambda: len(received()) == len(pushed))
        assert received() == pushed
    finally:
        pongs.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pongs
        reader.close()
