"""SIGTERM under load: the server as production starts it (`realtime serve`) stops within its
bounded shutdown time whatever its backends do, and nothing it acknowledged is lost."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

from clients import Api, WsClient, eventually, healthz, open_candidate
from redis_server import RedisServer
from server import ServerProcess
from websockets.exceptions import ConnectionClosed

from realtime.db.database import Database

SHUTDOWN_TIMEOUT = 2  # REALTIME_SHUTDOWN_TIMEOUT of the server under test
# uvicorn gives sockets SHUTDOWN_TIMEOUT, the lifespan as long again; the rest is slack for a
# loaded machine (this bounds a wait, it does not time the server)
EXIT_BOUND = 2 * SHUTDOWN_TIMEOUT + 20


async def flood(client: WsClient, sent: list[int], index: int) -> None:
    """Client events as fast as the socket takes them until it closes (bounded); counts
    them in `sent[index]`."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(120):
            for i in range(1_000_000):
                await client.send({"type": "client_event", "name": "focus_lost"})
                sent[index] += 1
                if i % 50 == 0:  # a send into a socket with room does not yield: let others on
                    await asyncio.sleep(0)


async def test_sigterm_under_load_with_redis_stalled_stops_in_time_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """30 candidates flood the server (message limit off, so its sockets hold a backlog) after
    staff commands were acknowledged; Redis then stops answering and the server gets SIGTERM.
    It exits within the bound (commits in flight are abandoned, not awaited forever), and once
    Redis is back a new process finds every acknowledged command in the outbox and writes it
    to SQL."""
    with RedisServer() as redis:
        settings: dict[str, Any] = {"redis_url": redis.url,
                                    "redis_prefix": f"sd{uuid.uuid4().hex[:8]}:",
                                    "workdir": tmp_path}
        server = ServerProcess(**settings, cli=True,  # `realtime serve`, as the Procfile
                               shutdown_timeout=SHUTDOWN_TIMEOUT, candidate_message_rate=0).start()
        assert server.process is not None and redis.process is not None
        api = Api(server.url)
        floods: list[asyncio.Task[None]] = []
        try:
            exam = await api.create_exam()
            sessions = await api.create_sessions(exam["id"], 30)
            opened = await asyncio.gather(
                *(open_candidate(server.ws_url, s["access_code"]) for s in sessions))
            assert all(reply["type"] == "opened" for _, reply in opened)
            sent = [0] * len(opened)
            floods = [asyncio.create_task(flood(client, sent, i))
                      for i, (client, _) in enumerate(opened)]
            results = [
                await api.command(exam["id"], action="notice", target=s["id"],
                                  text="stay calm", command_id=f"calm-{s['id']}")
                for s in sessions[:10]
            ]
            assert all(len(r["applied"]) == 1 for r in results)
            # more than a socket's buffers hold: the server has a backlog of frames on each
            await eventually(lambda: min(sent) >= 2000, timeout=60)
            redis.process.send_signal(signal.SIGSTOP)
            server.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(server.process.wait, EXIT_BOUND)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"still running {EXIT_BOUND} s after SIGTERM") from None
        finally:
            redis.process.send_signal(signal.SIGCONT)
            for task in floods:
                task.cancel()
            await asyncio.gather(*floods, return_exceptions=True)
            await api.close()
            server.kill()

        again = ServerProcess(**settings).start()
        try:
            async def drained() -> bool:
                status, body = await healthz(again.url)
                return status == 200 and body["history_backlog"]["events"] == 0

            await eventually(drained, timeout=60, interval=0.2)
            db = await Database.connect(again.database_url)
            try:
                for result in results:
                    [applied] = result["applied"]
                    stored = await db.exam_events(exam["id"], applied["seq"] - 1, limit=1)
                    assert stored and stored[0].seq == applied["seq"], (
                        f"acknowledged command {result['command_id']} is lost")
                    assert stored[0].kind == "notice"
                    assert stored[0].session_id == applied["session_id"]
                    assert stored[0].details["command_id"] == result["command_id"]
            finally:
                await db.close()
        finally:
            again.stop()
