"""Keep Python's full garbage collections short on a server holding thousands of sockets.

A full (generation 2) collection walks every tracked object: with 5,000 open connections that
is about half a second during which nothing else runs, so a command arriving then waits that
long (measured: "pause all" of 5,000 went from ~0.2 s to ~0.6 s; see docs/performance.md).
Objects that have lived through a while are moved to the permanent generation with
`gc.freeze()`, so collections only walk what is new; reference cycles among frozen objects
are collected when everything is unfrozen again, once per `full_interval`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

GEN0_THRESHOLD = 50_000  # allocations between young collections (CPython's default: 700)


async def run_gc_policy(freeze_interval: float, full_interval: float) -> None:
    """Freeze survivors every `freeze_interval`; unfreeze (and collect) every `full_interval`."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    last_full = time.monotonic()
    try:
        while True:
            await asyncio.sleep(freeze_interval)
            if time.monotonic() - last_full >= full_interval:
                gc.unfreeze()
                started = time.perf_counter()
                found = gc.collect()
                last_full = time.monotonic()
                log.info(
                    "full collection: %d unreachable objects in %.0f ms",
                    found,
                    1000 * (time.perf_counter() - started),
                )
            gc.freeze()
    finally:
        gc.unfreeze()
