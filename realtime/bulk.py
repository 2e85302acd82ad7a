"""Bulk changes in flight in this process, and the background work that gives way to them.

A bulk change (a "pause all": deciding, committing and answering for a hall of thousands of
sessions) is followed by its fan-out, a frame to each of those candidates written two loop
turns after the commit's answer (`realtime/state/handoff.py`), then by their acks. Work that
can wait a little waits until it is done, bounded by the waiter's own patience:

* the GC policy's passes (`realtime/gcpolicy.py`): a pass in the middle of the change would
  walk the tens of thousands of objects it is making while it makes them;
* the drainer's SQL writes (`realtime/drainer.py`): the previous command's history, written
  meanwhile, took CPU the command and its fan-out needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator

_in_flight = 0  # bulk changes in flight now, in this process
_ended_at = -math.inf  # `time.monotonic()` when the last one ended
_waiting: list[asyncio.Future[None]] = []


@contextlib.contextmanager
def bulk_change() -> Iterator[None]:
    """While inside (and, for those that ask, for a while after), background work waits."""
    global _in_flight, _ended_at
    _in_flight += 1
    try:
        yield
    finally:
        _in_flight -= 1
        if not _in_flight:
            _ended_at = time.monotonic()
            waiting = list(_waiting)
            _waiting.clear()
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_result(None)


def busy(linger: float = 0.0) -> bool:
    """A bulk change is in flight, or the last one ended less than `linger` seconds ago."""
    return bool(_in_flight) or time.monotonic() < _ended_at + linger


async def after_bulk_changes(patience: float, linger: float = 0.0) -> None:
    """Return once no bulk change is in flight and the last one ended `linger` seconds ago or
    more (its fan-out, queued when its commit was answered, then has run too), or after
    `patience` seconds, whichever comes first."""
    deadline = time.monotonic() + patience
    while busy(linger):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if _in_flight:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            _waiting.append(waiter)
            try:
                async with asyncio.timeout(left):
                    await waiter
            except TimeoutError:
                return
            finally:
                with contextlib.suppress(ValueError):
                    _waiting.remove(waiter)
        else:
            await asyncio.sleep(min(left, _ended_at + linger - time.monotonic()))
