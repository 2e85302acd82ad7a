"""The drainer: writes each exam's outbox to SQL, behind the live path.

A change is answered once it is applied and held by the outbox (the state store appended its
events in the same atomic step). Every process runs one drainer; for each exam, one of them at a
time (a lease in the store) claims the outbox entries in order — first those a dead or failed
consumer left unacknowledged — writes their events, irregularities and audit rows to SQL in one
transaction (idempotent on (exam, seq)), and only then acknowledges them. So after a crash of any
process at any moment, the SQL history is the event log: no gap, no duplicate.

When SQL is down the drainer backs off and retries; the outbox keeps everything meanwhile and
`backlog` says how much (events, age of the oldest).

Before each round it lets more arrive for a while (the gather): 50 ms after a quiet spell or a
light round, doubling after each round that found a sustained flow (SUSTAINED rows a second
of the gather before it), up to GATHER_MAX on a store whose outbox outlives the process (the
memory store keeps 50 ms). A round's fixed cost was most of the drainer's CPU, and under a
steady flow it paid it ~20 times a second whatever the rate.

Where the outbox outlives the process (Redis), a round of the loop gives way to the bulk
commands of this process (`realtime.bulk`): before its claim and between its SQL write's
slices it waits while one is in flight and for HOLD_LINGER after the last one ended (its
fan-out, the acks it sets off), at most HOLD_MAX in all per round. The write of the last
command's history (10,000 events and their 10,000 acks: a second or more of SQL) otherwise
ran through the next command and took CPU its fan-out needed. A REST read's `catch_up` and
the drain at shutdown never give way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

from realtime import bulk
from realtime.db.database import Database
from realtime.locks import KeyedLocks
from realtime.state.model import Event
from realtime.state.store import Backlog, OutboxEntry, StateStore

log = logging.getLogger(__name__)

BATCH = 200  # outbox entries per claim (one SQL transaction; a bulk entry holds many events)
LEASE = 10.0  # seconds an exam stays with its drainer without a renewal
RESCAN = 2.0  # seconds between looks at every exam's outbox (besides wake-ups)
GATHER = 0.05  # before each round, let more arrive for this long: fewer, bigger transactions
GATHER_MAX = 0.25  # ... growing to this under a sustained flow (a store whose outbox survives us)
SUSTAINED = 100.0  # rows (events, audit rows) a second of gather that make the next one longer
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0
HOLD_MAX = 0.5  # seconds a round of the loop gives way at most to bulk commands (Redis)
HOLD_LINGER = 0.2  # ... while one is in flight and for this long after the last one ended


def consumer_name() -> str:
    """Unique per process: the store tells consumers (and their unacknowledged entries) apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Drainer:
    def __init__(
        self,
        store: StateStore,
        db: Database,
        consumer: str | None = None,
        clock: Callable[[], float] = time.time,
        max_gather: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        hold_max: float | None = None,
    ) -> None:
        self.store = store
        self.db = db
        self.consumer = consumer or consumer_name()
        self.clock = clock
        self._sleep = sleep  # the loop's pauses (tests drive them)
        # The gather grows only where the outbox outlives this process (Redis): the memory
        # store's dies with it, and with it whatever a longer gather held back from SQL.
        if max_gather is None:
            max_gather = GATHER_MAX if store.outbox_survives_process else GATHER
        self.max_gather = max(GATHER, max_gather)
        # Giving way to bulk commands delays history like a longer gather: only there too.
        if hold_max is None:
            hold_max = HOLD_MAX if getattr(store, "outbox_survives_process", False) else 0.0
        self.hold_max = hold_max
        self.hold_linger = HOLD_LINGER
        self.held = 0.0  # seconds rounds gave way to bulk commands, in all
        self.holds = 0  # times they did
        self.gather = GATHER  # the loop's next pause before a round
        self.rounds = 0  # drains that claimed something: one SQL transaction each
        self.rows = 0  # events and audit rows those claimed
        self.backlog = Backlog()
        self.backlog_checked = 0.0
        self.written = 0  # events written to SQL by this process
        self.failures = 0  # failed SQL writes
        self.last_error = ""
        self._wake = asyncio.Event()
        self._dirty: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Condition()
        # One drain of an exam at a time in this process: the loop's round and REST reads'
        # catch-ups would otherwise claim the same pending entries and write them in two
        # transactions at once (the lease is per process).
        self._exams = KeyedLocks()
        self.waited = 0  # drains that waited for one of their exam in flight (for tests)

    # -- wiring --------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """A store listener: an exam has something new to drain."""
        self._dirty.add(event.exam_id)
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="outbox-drainer")

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Drain what is there (bounded), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(flush_timeout):
                await self.drain_all()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        delay = BACKOFF_MIN
        last_scan = 0.0
        while True:
            try:
                now = time.monotonic()
                if now - last_scan >= RESCAN:
                    last_scan = now
                    self._dirty.update(await self.store.outbox_exams())
                    await self.refresh_backlog()
                rows = self.rows
                worked = await self.drain_dirty(give_way=True)
                delay = BACKOFF_MIN
                self.gather = self.next_gather(self.rows - rows)
                if not worked:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(RESCAN):
                            await self._wake.wait()
                # What arrived during the round (or since the wake-up) gathers for a while, as
                # after an idle spell: under a steady flow a round a few milliseconds after
                # the last one wrote a handful of events in a transaction of its own (its
                # fixed cost, ~a dozen SQL round trips through the driver's thread, was most
                # of the drainer's CPU). A backlog is drained at once (`drain_dirty`).
                await self._sleep(self.gather)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.gather = GATHER
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("outbox drain failed (%s); retrying in %.1fs", self.last_error, delay)
                with contextlib.suppress(Exception):
                    await self.refresh_backlog()
                await self._sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    def next_gather(self, rows: int) -> float:
        """The pause before the next round, after a round that claimed `rows` rows: twice the
        last one (at most `max_gather`) if they came at SUSTAINED rows a second of it or
        more, else GATHER. Under a sustained flow each round then carries several times more
        rows for the same fixed cost; once the flow falls below SUSTAINED (or stops), the
        next pause is GATHER's again."""
        if rows >= round(SUSTAINED * self.gather):
            return min(self.max_gather, 2 * self.gather)
        return GATHER

    async def drain_dirty(self, until_empty: bool = False, give_way: bool = False) -> bool:
        """Drain every exam known to have something; True if anything was written. An exam
        is drained again at once while its claims come back full (a backlog); after a claim
        of less it is claimed again in the next round, after the pause `run` makes (or,
        `until_empty`, at once), until a claim finds nothing. `give_way`: each exam's round
        gives way to bulk commands (the module's doc)."""
        worked = False
        dirty, self._dirty = self._dirty, set()
        try:
            while dirty:
                exam_id = min(dirty)
                claimed = await self.drain_exam(exam_id, give_way=give_way)
                if claimed:
                    worked = True
                if not claimed:
                    dirty.discard(exam_id)
                elif claimed < BATCH and not until_empty:
                    dirty.discard(exam_id)
                    self._dirty.add(exam_id)  # the next round's
        finally:
            self._dirty.update(dirty)  # what a failure left undone
        if worked:
            async with self._caught_up:
                self._caught_up.notify_all()
        return worked

    async def drain_exam(
        self, exam_id: str, patience: float | None = None, give_way: bool = False
    ) -> int:
        """One claim → write → acknowledge round for one exam: the entries claimed (0 when
        nothing was there, or another process holds the exam). Waits first for a round of the
        same exam in flight in this process (TimeoutError after `patience` seconds): claimed
        entries stay pending until acknowledged, so a second round would claim them again
        and write them in a transaction of its own alongside the first. `give_way`: before
        its claim and between its write's slices, the round waits for the bulk commands in
        flight (the module's doc), at most `hold_max` seconds in all."""
        if self._exams.held(exam_id):
            self.waited += 1
        async with self._exams.hold(exam_id, patience):
            way = _GiveWay(self, self.hold_max if give_way else 0.0)
            await way.hold()
            entries = await self.store.outbox_claim(exam_id, self.consumer, BATCH, LEASE)
            if not entries:
                return 0
            self.rounds += 1
            self.rows += sum(len(entry.events) + len(entry.audit) for entry in entries)
            await self.write(entries, way)
            await self.store.outbox_ack(exam_id, self.consumer, entries)
            return len(entries)

    async def write(
        self, entries: list[OutboxEntry], pause: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        events = [event for entry in entries for event in entry.events]
        audit = [row for entry in entries for row in entry.audit]
        if pause is None:
            self.written += await self.db.write_outbox(events, audit)
        else:
            self.written += await self.db.write_outbox(events, audit, pause=pause)

    async def catch_up(self, exam_id: str, timeout: float = 2.0) -> None:
        """Make SQL reads of an exam current: drain it now (after a drain of it in flight in
        this process; or, if another process holds it, wait for that one), for at most
        `timeout` seconds. Reads stay possible when SQL or the drain lags: they then show the
        history as far as it is written."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with contextlib.suppress(Exception):
            while loop.time() < deadline:
                while await self.drain_exam(exam_id, max(0.0, deadline - loop.time())):
                    pass
                if await self.store.outbox_pending(exam_id) == 0:
                    return
                await asyncio.sleep(0.02)

    async def drain_all(self) -> None:
        """Drain every exam now (shutdown, tests)."""
        self._dirty.update(await self.store.outbox_exams())
        while await self.drain_dirty(until_empty=True):
            pass
        await self.refresh_backlog()

    async def refresh_backlog(self) -> Backlog:
        self.backlog = await self.store.outbox_backlog(self.clock())
        self.backlog_checked = self.clock()
        return self.backlog

    def oldest_age(self) -> float:
        """Seconds the oldest undrained entry has waited (0: nothing waits)."""
        if self.backlog.oldest_at is None:
            return 0.0
        return max(0.0, self.clock() - self.backlog.oldest_at)


class _GiveWay:
    """A drain round's pause between its write's slices: a turn of the event loop, or, while
    a bulk command is in flight in this process (or ended less than the drainer's
    `hold_linger` ago), until it is done, as long as the round's `budget` lasts."""

    def __init__(self, drainer: Drainer, budget: float) -> None:
        self.drainer = drainer
        self.budget = budget

    async def hold(self) -> bool:
        """Wait for the bulk commands in flight, if any and the budget allows; True if it
        waited."""
        drainer = self.drainer
        if self.budget <= 0 or not bulk.busy(drainer.hold_linger):
            return False
        started = time.monotonic()
        await bulk.after_bulk_changes(self.budget, drainer.hold_linger)
        took = time.monotonic() - started
        self.budget -= took
        drainer.held += took
        drainer.holds += 1
        return True

    async def __call__(self) -> None:
        if not await self.hold():
            await asyncio.sleep(0)
