"""Keep Python's garbage collection pauses short on a server holding thousands of sockets,
without keeping garbage.

A full (generation 2) collection walks every tracked object: with 5,000 open connections that
is about half a second during which nothing else runs, so a command arriving then waits that
long (measured: "pause all" of 5,000 went from ~0.2 s to ~0.6 s; see docs/performance.md).
Objects that have lived through a while are moved to the permanent generation with
`gc.freeze()`, so collections only walk what is new.

What is new is more than it seems: each socket that received a frame has made its reader's
waiting coroutines, futures and handles afresh (~18 objects), and they live until its next
frame. With 5,000 candidates answering a ping every 5 s a pass every 10 s walked ~90,000 of
them, a ~100 ms stall; so passes come often (`REALTIME_GC_FREEZE_INTERVAL`, 0.5 s) and each
walks ~10,000. CPython's own young collections hardly ever run meanwhile: frozen
objects that die count against new ones in its allocation count.

`gc.freeze()` freezes garbage too: every WebSocket handshake leaves a reference cycle behind
(uvicorn's HTTP protocol object and its parser, holding tens of kilobytes), and what had not
been collected yet when the freeze came stayed until the next full collection — about 50 MB
per 1,000 reconnects. So every freeze follows a collection of everything not frozen yet (short:
frozen objects are not walked), and young collections run often enough that the garbage of a
burst of reconnects does not pile up between them. Cycles among frozen objects (rare: our own
connection objects hold none) are collected when everything is unfrozen, once per
`full_interval`.

A pass that falls due while a bulk change runs (`bulk_change`: a "pause all" deciding,
committing and answering for a hall) waits until it is done, at most `QUIET_MAX`: it would
walk the tens of thousands of objects the change is making while it makes them (a 20-25 ms
pass in the middle of the command), and the change's fan-out, queued when its commit was
answered, then runs before it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

# Allocations between young collections (CPython's default: 700). Higher means fewer, longer
# young collections and more garbage waiting for them; at 50,000 a reconnecting hall piled up
# tens of megabytes of handshake garbage between collections.
GEN0_THRESHOLD = 10_000


QUIET_MAX = 1.0  # seconds a pass waits at most for the bulk changes in flight

_bulk_changes = 0  # in flight now, in this process
_passes_waiting: list[asyncio.Future[None]] = []


@contextlib.contextmanager
def bulk_change() -> Iterator[None]:
    """While inside, the policy's passes wait (see the module's doc)."""
    global _bulk_changes
    _bulk_changes += 1
    try:
        yield
    finally:
        _bulk_changes -= 1
        if not _bulk_changes:
            waiting = list(_passes_waiting)
            _passes_waiting.clear()
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_result(None)


async def _after_bulk_changes() -> None:
    """Return once no bulk change is in flight (or after `QUIET_MAX`)."""
    if not _bulk_changes:
        return
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _passes_waiting.append(waiter)
    try:
        async with asyncio.timeout(QUIET_MAX):
            await waiter
    except TimeoutError:
        pass
    finally:
        with contextlib.suppress(ValueError):
            _passes_waiting.remove(waiter)


def collect_and_freeze() -> int:
    """Collect what is not frozen yet (the frozen part is not walked), then freeze the
    survivors. Returns the number of unreachable objects found."""
    found = gc.collect()
    gc.freeze()
    return found


async def run_gc_policy(freeze_interval: float, full_interval: float) -> None:
    """Every `freeze_interval`, collect and freeze the survivors; every `full_interval`,
    unfreeze everything first, so the collection also walks (and frees) the frozen part."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    collect_and_freeze()  # what start-up left: its long walk happens before any traffic
    last_full = time.monotonic()
    try:
        while True:
            await asyncio.sleep(freeze_interval)
            await _after_bulk_changes()
            if time.monotonic() - last_full >= full_interval:
                gc.unfreeze()
                started = time.perf_counter()
                found = collect_and_freeze()
                last_full = time.monotonic()
                log.info(
                    "full collection: %d unreachable objects in %.0f ms",
                    found,
                    1000 * (time.perf_counter() - started),
                )
            else:
                collect_and_freeze()
    finally:
        gc.unfreeze()
