"""Group commit in front of the state store: changes that arrive together share a round trip.

Every caller in this process (REST commands, proctor sockets, thousands of candidate sockets)
hands its commits to one `CommitBatcher`. Whatever arrives while the store is busy — or within
the same event-loop turn — goes to the store as one `commit()` call: one pipeline, one Lua call
per exam, one published message per exam. Under load batches grow by themselves, like a
database's group commit, instead of every change paying its own round trip.

Audit rows of staff commands do not come here: they go to their exam's outbox by the store's
`append_audit` (on Redis with the command's answer to keep), never behind the commits in flight.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from realtime.state.store import Commit, CommitResult, StateStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Waiting:
    commits: list[Commit]
    done: asyncio.Future[list[CommitResult]]


@dataclass(slots=True)
class _Batch:
    waiting: list[_Waiting] = field(default_factory=list)
    size: int = 0


class CommitBatcher:
    """Collect commits and send them in as few store calls as possible.

    At most `max_in_flight` store calls run at once; what arrives meanwhile waits for the next
    one, so a busy process sends bigger batches, not more of them. A batch is capped at
    `max_batch` commits (a bulk command larger than that goes alone).
    """

    def __init__(self, store: StateStore, max_in_flight: int = 2, max_batch: int = 20_000) -> None:
        self.store = store
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._next = _Batch()
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.flushes = 0  # store calls made, for metrics and tests
        self.committed = 0

    async def commit(self, commits: list[Commit]) -> list[CommitResult]:
        """Commit through the next batch; raises what the store raised for that batch."""
        if not commits:
            return []
        loop = asyncio.get_running_loop()
        waiting = _Waiting(commits, loop.create_future())
        self._next.waiting.append(waiting)
        self._next.size += len(commits)
        self._schedule()
        return await waiting.done

    def _schedule(self) -> None:
        """Start the task of the next store call; it runs in the next loop turn and takes
        everything that arrived until then (a call_soon that then started a task cost a loop
        turn more before the round trip). It holds its place among the calls in flight from
        now on."""
        if not self._scheduled and self._in_flight < self.max_in_flight:
            self._scheduled = True
            self._in_flight += 1
            self._spawn(self._run())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take(self) -> _Batch | None:
        pending = self._next
        if not pending.waiting:
            return None
        if pending.size <= self.max_batch:
            self._next = _Batch()
            return pending
        # Too big for one call: take whole callers up to the cap (at least one), keep the rest.
        taken = _Batch()
        rest = _Batch()
        for waiting in pending.waiting:
            if not taken.waiting or taken.size + len(waiting.commits) <= self.max_batch:
                taken.waiting.append(waiting)
                taken.size += len(waiting.commits)
            else:
                rest.waiting.append(waiting)
                rest.size += len(waiting.commits)
        self._next = rest
        return taken

    async def _run(self) -> None:
        self._scheduled = False
        try:
            batch = self._take()
            if batch is not None:
                await self._commit(batch)
        finally:
            self._in_flight -= 1
            if self._next.waiting:
                self._schedule()

    async def _commit(self, batch: _Batch) -> None:
        commits = [c for waiting in batch.waiting for c in waiting.commits]
        self.flushes += 1
        try:
            results = await self.store.commit(commits)
        except BaseException as exc:
            for waiting in batch.waiting:
                if not waiting.done.done():
                    waiting.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.committed += len(commits)
        start = 0
        for waiting in batch.waiting:
            end = start + len(waiting.commits)
            if not waiting.done.done():
                waiting.done.set_result(results[start:end])
            start = end

    async def close(self) -> None:
        """Wait for the batches in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
