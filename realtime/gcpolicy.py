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

Passes come every `freeze_interval` (0.1 s) while candidates connect a few at a time, and
every `OPENING_FACTOR` times that (0.5 s) while they open in numbers (`OPENING` handshakes or
more since the last pass: a hall arriving, a hall reconnecting). A pass is a stall of the
event loop, and it grows with the interval: with 5,000 candidates on Redis a pass every 0.5 s
took 7-22 ms, the longest stretches a targeted command waited behind; every 0.1 s ~1.5 ms
(5-6 ms on a saturated server: a pass also walks the requests in flight, and a shorter
interval walks them more often, a few percent more GC CPU then). What frequent passes cost
in memory is the handshakes in flight at each freeze: their reference cycles wait for the
full collection. In steady traffic that is next to nothing; while a hall opens it is what
the 0.5 s passes keep down.

A pass that falls due while a bulk change runs (`realtime.bulk.bulk_change`: a "pause all"
deciding, committing and answering for a hall) waits until it is done, at most `QUIET_MAX`: it would
walk the tens of thousands of objects the change is making while it makes them (a 20-25 ms
pass in the middle of the command), and the change's fan-out, queued when its commit was
answered, then runs before it too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from realtime.bulk import after_bulk_changes, bulk_change

__all__ = ["bulk_change", "collect_and_freeze", "note_handshake", "run_gc_policy"]

log = logging.getLogger(__name__)

# Allocations between young collections (CPython's default: 700). Higher means fewer, longer
# young collections and more garbage waiting for them; at 50,000 a reconnecting hall piled up
# tens of megabytes of handshake garbage between collections.
GEN0_THRESHOLD = 10_000


QUIET_MAX = 1.0  # seconds a pass waits at most for the bulk changes in flight
OPENING = 10  # handshakes since the last pass from which candidates are opening in numbers
OPENING_FACTOR = 5  # the interval is this many times longer then

_handshakes = 0  # WebSocket handshakes accepted in this process (`note_handshake`)


def note_handshake() -> None:
    """A WebSocket handshake is in flight (see the module's doc: opening in numbers)."""
    global _handshakes
    _handshakes += 1


def collect_and_freeze() -> int:
    """Collect what is not frozen yet (the frozen part is not walked), then freeze the
    survivors. Returns the number of unreachable objects found."""
    found = gc.collect()
    gc.freeze()
    return found


async def run_gc_policy(
    freeze_interval: float,
    full_interval: float,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Every `freeze_interval` (`OPENING_FACTOR` times that while candidates open in numbers),
    collect and freeze the survivors; every `full_interval`, unfreeze everything first, so the
    collection also walks (and frees) the frozen part."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    collect_and_freeze()  # what start-up left: its long walk happens before any traffic
    last_full = time.monotonic()
    seen = _handshakes
    try:
        while True:
            await sleep(freeze_interval)
            if _handshakes - seen >= OPENING:  # opening in numbers: the longer interval
                await sleep((OPENING_FACTOR - 1) * freeze_interval)
            seen = _handshakes
            await after_bulk_changes(QUIET_MAX)
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
