"""Memory under reconnect churn, end to end: a real server's resident size stays flat while
candidates reconnect over and over (the garbage collection policy must not keep garbage)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from clients import Api, open_candidate
from server import ServerProcess

PARALLEL = 8  # candidates reconnecting at the same time, each on its own session
WARM_UP = 10  # reconnects per candidate before measuring (caches, pools, allocator arenas)
CHURN = 200  # reconnects per candidate measured: 1,600 in all
# The old policy froze every handshake's garbage: about 50 MB per 1,000 reconnects, i.e. 80 MB
# here. Collected garbage leaves the allocator's high-water mark (and the event log) behind:
# about 10–15 MB.
MAX_GROWTH_MB = 40


@pytest.fixture(scope="module")
def churn_server() -> Iterator[ServerProcess]:
    # The default policy (a freeze every 0.5 s): many freezes within the churn, as over a long
    # exam day, each one a chance to freeze a handshake still in flight.
    # all reconnects come from 127.0.0.1: the per-address handshake budget is not the subject
    process = ServerProcess(handshake_rate=0)
    process.start()
    yield process
    process.stop()


def rss_mb(process: ServerProcess) -> float:
    assert process.process is not None
    with open(f"/proc/{process.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def reconnect(ws_url: str, session: dict[str, Any], times: int) -> None:
    for _ in range(times):
        client, reply = await open_candidate(ws_url, session["access_code"])
        assert reply["type"] == "opened", reply
        await client.close()


async def test_reconnect_churn_does_not_grow_the_server(churn_server: ServerProcess) -> None:
    """1,600 reconnects grow the server by far less than the ~80 MB the frozen garbage took."""
    api = Api(churn_server.url)
    try:
        exam = await api.create_exam()
        sessions = await api.create_sessions(exam["id"], PARALLEL)
        await asyncio.gather(*(reconnect(churn_server.ws_url, s, WARM_UP) for s in sessions))
        before = rss_mb(churn_server)
        await asyncio.gather(*(reconnect(churn_server.ws_url, s, CHURN) for s in sessions))
        growth = rss_mb(churn_server) - before
        assert growth < MAX_GROWTH_MB, f"grew {growth:.1f} MB over {PARALLEL * CHURN} reconnects"
    finally:
        await api.close()
