"""The server inside a measuring harness's own process (fanout_cpu, open_cpu, loop_stalls,
conn_memory).

Those harnesses time the server with `time.process_time()` (or read this process's memory),
so it runs on their loop under uvicorn, configured as `realtime serve` configures it; the
hall it serves is made over REST, as staff make one.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.servers import BENCH_STAFF_TOKEN, RedisProcess, free_port
from realtime.config import WS_IMPLS, Settings

SESSIONS_PER_REQUEST = 5000
START_TIMEOUT = 60.0


async def serve_in_process(app: Any, port: int, *, ws: str = WS_IMPLS[0]
                           ) -> tuple[Any, asyncio.Task[None]]:
    """uvicorn serving `app` on 127.0.0.1:`port` from the running loop; returns the server
    (set `should_exit` to stop it) and its task, once it accepts connections."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", lifespan="on",
                            log_level="warning", ws_max_size=1024 * 1024, ws_ping_interval=None,
                            ws_per_message_deflate=False, backlog=8192, proxy_headers=False,
                            ws=ws)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(int(START_TIMEOUT / 0.05)):  # uvicorn offers a flag, not an event
        if server.started:
            return server, task
        if task.done():
            task.result()  # its failure, if it failed
            break
        await asyncio.sleep(0.05)
    server.should_exit = True
    raise RuntimeError(f"uvicorn did not start on port {port} within {START_TIMEOUT:.0f} s")


async def create_hall(base: str, exam_id: str, title: str, count: int) -> list[dict[str, Any]]:
    """An exam with `count` candidates (c0, c1, ...) made over REST; their sessions as the
    API lists them (id, access_code, ...)."""
    import httpx

    sessions: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=base, timeout=120, headers={
            "Authorization": f"Bearer {BENCH_STAFF_TOKEN}"}) as http:
        (await http.post("/api/v1/exams", json={"id": exam_id, "title": title,
                                                "duration_minutes": 600})).raise_for_status()
        for start in range(0, count, SESSIONS_PER_REQUEST):
            candidates = [{"candidate_id": f"c{i}", "name": f"Candidate {i}"}
                          for i in range(start, min(count, start + SESSIONS_PER_REQUEST))]
            response = await http.post(f"/api/v1/exams/{exam_id}/sessions",
                                       json={"candidates": candidates})
            response.raise_for_status()
            sessions += response.json()["sessions"]
    return sessions


@dataclass
class InProcessServer:
    """A server `start_in_process` started: its app (`app.state.runtime`), settings and base
    URL, and what `stop` stops."""

    app: Any
    settings: Settings
    base: str
    workdir: Path
    server: Any
    task: asyncio.Task[None]
    redis: RedisProcess | None

    async def stop(self, timeout: float | None = None) -> None:
        """uvicorn told to exit and awaited (TimeoutError past `timeout` seconds), then the
        private Redis, if any, stopped whatever happened."""
        self.server.should_exit = True
        try:
            await asyncio.wait_for(self.task, timeout)
        finally:
            if self.redis is not None:
                self.redis.stop()


async def start_in_process(name: str, *, redis: bool = False, ws: str = WS_IMPLS[0],
                           env: dict[str, str] | None = None) -> InProcessServer:
    """The server on a free port, in this process (`serve_in_process`): SQLite in a new
    temporary folder `rt-<name>-...`, the memory store or, with `redis`, a private Redis
    there; the bench's staff token and secret key, no per-address handshake budget (every
    simulated candidate connects from 127.0.0.1), and `env` on top. The settings are read
    from this process's environment, which is updated with all of these."""
    from realtime.app import create_app

    workdir = Path(tempfile.mkdtemp(prefix=f"rt-{name}-"))
    redis_process = RedisProcess(workdir) if redis else None
    if redis_process is not None:
        redis_process.start()
    try:
        port = free_port()
        os.environ.update({
            "REALTIME_REDIS_URL": redis_process.url if redis_process else "",
            "REALTIME_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'rt.db'}",
            "REALTIME_STAFF_TOKEN": BENCH_STAFF_TOKEN,
            "REALTIME_SECRET_KEY": "bench-secret-key",
            "REALTIME_HANDSHAKE_RATE": "0",
            **(env or {}),
        })
        settings = Settings.from_env()
        app = create_app(settings)
        server, task = await serve_in_process(app, port, ws=ws)
    except BaseException:
        if redis_process is not None:
            redis_process.stop()
        raise
    return InProcessServer(app, settings, f"http://127.0.0.1:{port}", workdir, server, task,
                           redis_process)
