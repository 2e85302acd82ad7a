"""Big batches of events reach the listeners after the callers of the commit have run.

A bulk command over thousands of sessions commits in one store call. If its events were handed
to the hub inside that call, the thousands of frames written would set off thousands of acks,
and the command's own caller (the REST answer, waiting for nothing more than the store's
reply) would be resumed only after the event loop had read them all. `HandOff` therefore
delivers a big batch two loop turns later: the callers woken by the commit run first, then the
fan-out. Small batches go at once, unless a deferred one is still waiting: order is kept.
Other steps that must follow a batch (the Redis echo of a commit, released once its batch has
been handed out: `then`) queue in the same line.

A caller that has one more round trip to make before it answers (a bulk command's audit row,
held before the answer: `realtime.identity.audited`) `hold`s the line: what is deferred waits
until it releases it (at most `HOLD_MAX` seconds), then goes two loop turns later as above, so
that answer too is written before the hall's frames.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

BIG_BATCH = 256  # events in one commit call from which their fan-out waits for the callers
HOLD_MAX = 0.5  # seconds a hold keeps the line at most (a round trip that hangs)


class HandOff(Generic[T]):
    """Calls `deliver` with each batch, in order; big ones after the current loop turn's
    callers."""

    def __init__(self, deliver: Callable[[list[T]], None], big: int = BIG_BATCH) -> None:
        self._deliver = deliver
        self._big = big
        # a batch to deliver, or a step to run (`then`)
        self._queue: deque[list[T] | Callable[[], None]] = deque()
        self._scheduled = False
        self._holds = 0  # callers holding the line (`hold`)

    def __call__(self, batch: list[T], part_of: int = 0) -> None:
        """`part_of`: the size of the whole this batch is a part of (a commit's chunks), if
        bigger: deferred if the whole is big."""
        if not self._queue and max(len(batch), part_of) < self._big:
            self._deliver(batch)
            return
        self._enqueue(batch)

    def then(self, step: Callable[[], None], size: int) -> None:
        """Run `step` where a batch of `size` events would be delivered: at once if it is small
        and nothing waits, else after what waits (and after this loop turn's callers)."""
        if not self._queue and size < self._big:
            step()
            return
        self._enqueue(step)

    def hold(self, timeout: float = HOLD_MAX) -> Callable[[], None]:
        """Keep what is deferred, and what queues behind it, until the returned release is
        called (once is enough; it is called by itself after `timeout` seconds). Small
        batches still go at once while nothing is deferred."""
        self._holds += 1
        loop = asyncio.get_running_loop()
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            timer.cancel()
            self._holds -= 1
            if self._queue:
                self._schedule()

        timer = loop.call_later(timeout, release)
        return release

    def _enqueue(self, item: list[T] | Callable[[], None]) -> None:
        self._queue.append(item)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            # Two turns: the commit's callers are woken (call_soon) after this is scheduled;
            # the second hop puts the delivery behind them.
            loop.call_soon(loop.call_soon, self._drain)

    @property
    def pending(self) -> int:
        """Batches (and steps) waiting."""
        return len(self._queue)

    def _drain(self) -> None:
        self._scheduled = False
        if self._holds:
            return  # the last release schedules it again
        while self._queue:
            item = self._queue.popleft()
            try:
                if isinstance(item, list):
                    self._deliver(item)
                else:
                    item()
            except Exception:  # a listener's failure must not strand the batches behind it
                log.exception("event hand-off failed")
