"""The server inside a measuring harness's own process (fanout_cpu, open_cpu, loop_stalls).

Those harnesses time the server with `time.process_time()`, so it runs on their loop under
uvicorn, configured as `realtime serve` configures it; the hall it serves is made over REST,
as staff make one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from loadtests.servers import BENCH_STAFF_TOKEN
from realtime.config import WS_IMPLS

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
