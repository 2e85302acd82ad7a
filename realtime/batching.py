"""Group commit in front of the state store: changes that arrive together share a round trip.

Every caller in this process (REST commands, proctor sockets, thousands of candidate sockets)
hands its commits to one `CommitBatcher`. Whatever arrives while the store is busy — or within
the same event-loop turn — goes to the store as one `commit()` call: one pipeline, one Lua call
per exam, one published message per exam. Under load batches grow by themselves, like a
database's group commit, instead of every change paying its own round trip.

Candidate traffic (progress reports, acks, client events: guarded commits every page sends on
its own) may `linger`: wait a few milliseconds for others before its store call, so a steady
flow of them shares round trips too (one arrives every few milliseconds, each alone in its
call, else); anything else arriving meanwhile takes them along at once.

Audit rows of staff commands do not come here: they go to their exam's outbox by the store's
`append_audit` (on Redis with the command's answer to keep), never behind the commits in flight.

Commits the store refused whole, before any of them ran (`CommitsFailed.resendable`: the
exam's Redis Cluster slot is on the move), are sent again after a short jittered pause, for
up to `retry_budget` seconds each, and only then fail as before (503 / `unavailable`). While
that exam's commits wait, its later commits queue behind them (one exam's commits go in the
order they came); the waiting holds no store call in flight, so other exams go on.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import operator
import random
from dataclasses import dataclass, field
from typing import Any, cast

from realtime.state.store import Commit, CommitResult, CommitsFailed, StateStore

log = logging.getLogger(__name__)

_EXAM_ID = operator.attrgetter("exam_id")
RETRY_BUDGET = 1.5  # seconds a refused commit is tried again (REALTIME_COMMIT_RETRY_BUDGET)
RETRY_FIRST = 0.05  # the first pause before sending it again, doubled each time up to
RETRY_MAX = 0.4  # this; each pause is drawn between half and all of that (jitter)


@dataclass(slots=True)
class _Waiting:
    """One caller's commits, all of one exam."""

    commits: list[Commit]
    done: asyncio.Future[list[CommitResult]]
    exam_id: str
    order: int  # arrival order in this batcher
    deadline: float = 0.0  # loop time after which it is not sent again (0: not refused yet)


@dataclass(slots=True)
class _Moving:
    """An exam whose commits were refused whole (its slot is moving): they wait here with the
    exam's commits that came since, in arrival order, until they are sent again."""

    waiting: list[_Waiting] = field(default_factory=list)
    attempts: int = 0
    pausing: bool = False  # False: sent again, the answer is awaited


@dataclass(slots=True)
class _Batch:
    waiting: list[_Waiting] = field(default_factory=list)
    size: int = 0
    urgent: bool = False  # holds commits that do not linger


class CommitBatcher:
    """Collect commits and send them in as few store calls as possible.

    At most `max_in_flight` store calls run at once; what arrives meanwhile waits for the next
    one, so a busy process sends bigger batches, not more of them. A batch is capped at
    `max_batch` commits (a bulk command larger than that goes alone). Commits refused whole
    while their exam's slot moves are sent again for up to `retry_budget` seconds (0: never).
    """

    def __init__(
        self, store: StateStore, max_in_flight: int = 2, max_batch: int = 20_000,
        retry_budget: float = RETRY_BUDGET,
    ) -> None:
        self.store = store
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.retry_budget = retry_budget
        self._moving: dict[str, _Moving] = {}
        self._arrivals = itertools.count()
        self.retries = 0  # commits sent again after a refusal, for metrics
        self.retries_given_up = 0  # commits failed once their budget was spent, for metrics
        self.awaiting_retry = 0  # commits refused (or queued behind such) not yet answered
        self._next = _Batch()
        self._in_flight = 0
        self._scheduled = False
        self._lingering: asyncio.TimerHandle | None = None  # a lingering batch's timer
        self._tasks: set[asyncio.Task[None]] = set()
        self.flushes = 0  # store calls made, for metrics and tests
        self.committed = 0

    async def commit(self, commits: list[Commit], linger: float = 0.0) -> list[CommitResult]:
        """Commit through the next batch; raises what the store raised for these commits.

        With `linger` (seconds), the batch may wait that long for more before it goes (it goes
        at once when a commit without one arrives): for frequent small commits whose callers
        can wait a little (candidate traffic)."""
        if not commits:
            return []
        exam_id = commits[0].exam_id
        if len(commits) > 1 and any(map(exam_id.__ne__, map(_EXAM_ID, commits))):
            return await self._commit_exams(commits, linger)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(commits, loop.create_future(), exam_id, next(self._arrivals))
        moving = self._moving.get(exam_id)
        if moving is not None:  # behind the exam's refused commits, which go first
            self._hold(waiting, loop.time())
            moving.waiting.append(waiting)
        else:
            self._next.waiting.append(waiting)
            self._next.size += len(commits)
            if linger <= 0:
                self._next.urgent = True
                self._schedule()
            elif self._lingering is None and not self._scheduled:
                self._lingering = loop.call_later(linger, self._linger_done)
        return await waiting.done

    def _linger_done(self) -> None:
        self._lingering = None
        self._schedule()

    async def _commit_exams(self, commits: list[Commit], linger: float) -> list[CommitResult]:
        """Commits of several exams: each exam's as a caller of its own (they succeed, fail or
        wait for a moving slot apart), the results in the order of `commits`."""
        by_exam: dict[str, list[int]] = {}
        for index, commit in enumerate(commits):
            by_exam.setdefault(commit.exam_id, []).append(index)
        parts = await asyncio.gather(*(self.commit([commits[i] for i in indexes], linger)
                                       for indexes in by_exam.values()))
        results: list[CommitResult | None] = [None] * len(commits)
        for indexes, part in zip(by_exam.values(), parts, strict=True):
            for index, result in zip(indexes, part, strict=True):
                results[index] = result
        return [result for result in results if result is not None]

    def _schedule(self) -> None:
        """Start the task of the next store call; it runs in the next loop turn and takes
        everything that arrived until then (a call_soon that then started a task cost a loop
        turn more before the round trip). It holds its place among the calls in flight from
        now on."""
        if not self._scheduled and self._in_flight < self.max_in_flight:
            if self._lingering is not None:  # it goes with this call
                self._lingering.cancel()
                self._lingering = None
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
        rest.urgent = pending.urgent  # (at worst a lingering rest goes without waiting)
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
            if self._next.waiting and (self._next.urgent or self._lingering is None):
                self._schedule()  # (a lingering batch goes when its linger is over)

    async def _commit(self, batch: _Batch) -> None:
        commits = [c for waiting in batch.waiting for c in waiting.commits]
        self.flushes += 1
        try:
            results = await self.store.commit(commits)
        except CommitsFailed as exc:
            self._answer_apart(batch, exc)
            return
        except BaseException as exc:
            for waiting in batch.waiting:
                self._fail(waiting, exc)
            if self._moving:
                self._went_on({waiting.exam_id for waiting in batch.waiting})
            if not isinstance(exc, Exception):
                raise
            return
        self.committed += len(commits)
        start = 0
        for waiting in batch.waiting:
            end = start + len(waiting.commits)
            if waiting.deadline:  # it waited for its exam's slot
                self._release(waiting)
            if not waiting.done.done():
                waiting.done.set_result(results[start:end])
            start = end
        if self._moving:
            self._went_on({waiting.exam_id for waiting in batch.waiting})

    def _answer_apart(self, batch: _Batch, failed: CommitsFailed) -> None:
        """Some exams' commits of the batch failed: the others' callers get their results, the
        failed ones' the error, unless their exam's commits were refused whole (they wait and
        go again: `_refused`)."""
        resendable = failed.resendable if self.retry_budget > 0 else frozenset()
        refused: dict[str, list[_Waiting]] = {}
        start = 0
        for waiting in batch.waiting:
            end = start + len(waiting.commits)
            error = failed.errors.get(waiting.exam_id)
            mine = failed.results[start:end]
            if error is None or None not in mine:  # went through (all of its chunks)
                self.committed += len(waiting.commits)
                self._release(waiting)
                if not waiting.done.done():
                    waiting.done.set_result(cast(list[CommitResult], mine))
            elif any(result is not None for result in mine):
                # Part of it went through (an exam's commits in chunks, a later one failed):
                # applied is applied, never an error. The rest read as lost races: the caller
                # reads those sessions again and decides again (nothing of it applies twice:
                # compare-and-set, the command id).
                self.committed += len(waiting.commits)
                self._release(waiting)
                if not waiting.done.done():
                    waiting.done.set_result([CommitResult(ok=False) if result is None
                                             else result for result in mine])
            elif waiting.exam_id in resendable:  # nothing of it ran: it may go again
                refused.setdefault(waiting.exam_id, []).append(waiting)
            else:
                self._fail(waiting, error)
            start = end
        self._went_on({waiting.exam_id for waiting in batch.waiting} - refused.keys())
        for exam_id, waitings in refused.items():
            self._refused(exam_id, waitings, failed.errors[exam_id])

    def _went_on(self, exams: set[str]) -> None:
        """These exams' commits were sent and answered (applied, or failed for good): those of
        them that waited behind commits sent again go now, in order."""
        for exam_id in exams:
            moving = self._moving.get(exam_id)
            if moving is None or moving.pausing:
                continue
            del self._moving[exam_id]
            if moving.waiting:
                self._next.waiting.extend(moving.waiting)
                self._next.size += sum(len(w.commits) for w in moving.waiting)
                self._next.urgent = True
                self._schedule()

    def _refused(self, exam_id: str, waitings: list[_Waiting], error: BaseException) -> None:
        """The store refused these commits whole: they wait (with the exam's commits that
        came since, in arrival order) and go again after a jittered pause, unless their budget
        is spent, then they fail with the refusal."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        moving = self._moving.get(exam_id)
        if moving is None:
            moving = self._moving[exam_id] = _Moving()
        # The exam's commits still waiting for a batch would be refused too: they queue here.
        later = [w for w in self._next.waiting if w.exam_id == exam_id]
        if later:
            self._next.waiting = [w for w in self._next.waiting if w.exam_id != exam_id]
            self._next.size -= sum(len(w.commits) for w in later)
        for waiting in (*waitings, *later):
            self._hold(waiting, now)
            bisect.insort(moving.waiting, waiting, key=lambda w: w.order)
        if moving.pausing:  # an earlier refusal's pause is running: they go with it
            return
        pause = min(RETRY_MAX, RETRY_FIRST * 2 ** moving.attempts) * random.uniform(0.5, 1.0)
        moving.attempts += 1
        keep = []
        for waiting in moving.waiting:
            if now + pause > waiting.deadline:  # its time is up: refused, as without retries
                self.retries_given_up += len(waiting.commits)
                self._fail(waiting, error)
            else:
                keep.append(waiting)
        moving.waiting = keep
        if not keep:
            del self._moving[exam_id]
            return
        moving.pausing = True
        self._spawn(self._resend(exam_id, moving, pause))

    async def _resend(self, exam_id: str, moving: _Moving, pause: float) -> None:
        """After the pause, the exam's waiting commits go to the next batch, first."""
        await asyncio.sleep(pause)
        moving.pausing = False
        waitings, moving.waiting = moving.waiting, []
        self.retries += sum(len(w.commits) for w in waitings)
        self._next.waiting[:0] = waitings
        self._next.size += sum(len(w.commits) for w in waitings)
        self._next.urgent = True
        self._schedule()

    def _hold(self, waiting: _Waiting, now: float) -> None:
        """It waits for its exam's slot from now on (at most `retry_budget` seconds)."""
        if not waiting.deadline:
            waiting.deadline = now + self.retry_budget
            self.awaiting_retry += len(waiting.commits)

    def _release(self, waiting: _Waiting) -> None:
        if waiting.deadline:
            self.awaiting_retry -= len(waiting.commits)
            waiting.deadline = 0.0

    def _fail(self, waiting: _Waiting, error: BaseException) -> None:
        self._release(waiting)
        if not waiting.done.done():
            waiting.done.set_exception(error)

    async def close(self) -> None:
        """Wait for the batches in flight (and for commits waiting to be sent again); a
        lingering batch goes now."""
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
            self._schedule()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
