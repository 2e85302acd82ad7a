"""Group commit for history: many concurrent writers, one SQL transaction per batch.

Nothing is acknowledged before its history is durable, so every command waits for a commit.
One transaction per command would cap throughput at the database's commit rate; instead callers
queue their events and a single background task commits whatever is waiting (up to `max_batch`
events, gathering for at most `max_delay` seconds) in one transaction, then wakes every caller
of that batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from realtime.db.database import Database
from realtime.state.model import Event

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    events: list[Event]
    done: asyncio.Future[None]


class HistoryWriter:
    """Batch `record()` calls into few transactions; each call returns once it is committed.

    `flushes` counts transactions attempted and `written` the events they stored, for tests
    and metrics. If a batch fails, each caller's events are retried on their own, so one bad
    event fails only its own caller; the writer keeps running either way.
    """

    def __init__(self, db: Database, max_batch: int = 500, max_delay: float = 0.02) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._db = db
        self._max_batch = max_batch
        self._max_delay = max(0.0, max_delay)
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.flushes = 0
        self.written = 0

    async def start(self) -> None:
        """Start the flush task (record() also starts it on first use)."""
        if self._closing:
            raise RuntimeError("the history writer is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="history-writer")

    async def record(self, events: Sequence[Event]) -> None:
        """Write `events` to SQL; return when they are committed, raise if that failed."""
        if not events:
            return
        if self._closing:
            raise RuntimeError("the history writer is closed")
        await self.start()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(list(events), done))
        # If this caller is cancelled the events are still written; only the wait is abandoned.
        await done

    async def close(self) -> None:
        """Flush everything already recorded, then stop. Later record() calls raise."""
        self._closing = True
        task = self._task
        if task is None:
            return
        if not task.done():
            self._queue.put_nowait(None)
            await asyncio.wait([task])
        self._fail_queued(RuntimeError("the history writer stopped"))

    # -- the background task ---------------------------------------------------------------

    async def _run(self) -> None:
        try:
            stopping = False
            while not stopping:
                batch: list[_Pending] = []
                try:
                    stopping = await self._collect(batch)
                    if batch:
                        await self._flush(batch)
                except Exception as exc:  # never let the writer die: callers would hang
                    log.exception("history writer: unexpected error")
                    _fail(batch, exc)
        finally:
            # Cancelled (or stopped): nobody will serve what is still queued.
            self._fail_queued(RuntimeError("the history writer stopped"))

    async def _collect(self, batch: list[_Pending]) -> bool:
        """Fill `batch` from the queue; return True when close() asked to stop."""
        item = await self._queue.get()
        if item is None:
            return True
        batch.append(item)
        count = len(item.events)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_delay
        while count < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                return True
            batch.append(item)
            count += len(item.events)
        return False

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            self.flushes += 1
            self.written += await self._db.add_events([e for p in batch for e in p.events])
        except Exception as exc:
            if len(batch) > 1:
                log.warning(
                    "history batch of %d callers failed (%r); retrying each", len(batch), exc
                )
                for pending in batch:
                    await self._flush([pending])
                return
            log.error("history write failed: %r", exc)
            _fail(batch, exc)
        else:
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_result(None)

    def _fail_queued(self, exc: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is not None:
                _fail([item], exc)


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.done.done():
            pending.done.set_exception(exc)
