"""The benchmark's harness, where it could bias a figure by itself (docs/performance.md)."""

from __future__ import annotations

import gc
import time
from types import SimpleNamespace
from typing import Any

from loadtests import compare


async def test_the_harness_does_not_collect_while_it_times_a_bulk_command() -> None:
    """One process holds every candidate socket: its own full collections (~200 ms over
    10,000 sockets) landed inside some "pause all" windows, delaying the arrival stamps of
    frames the server had written long before. It collects between commands instead, the
    same for ours and the peer's (tenth session, "pause all" of 10,000)."""
    seen: list[bool] = []
    bench: Any = SimpleNamespace(trackers={}, server_cpu=lambda: 0.0, redis_cpu=lambda: 0.0,
                                 args=SimpleNamespace(lost_after=5.0), idle_cpu_rate=0.0)

    class Commander:
        peer = False

        async def command(self, target: str, action: str, command_id: str) -> int:
            seen.append(gc.isenabled())
            now = time.perf_counter()
            bench.trackers[command_id].arrived(now, now)  # its one candidate has it
            return 1

    assert gc.isenabled()
    result = await compare.bulk_once(bench, Commander(), "pause", 1)
    assert seen == [False]  # not while the command and its frames were timed
    assert gc.isenabled()  # and again after
    assert result["received"] == 1 and result["lost"] == 0
