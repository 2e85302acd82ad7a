"""The drainer behind a burst, on the memory store: how long it holds the event loop.

    python -m loadtests.drain_backlog                  # the pauses phase's backlog: 100,000 events
    python -m loadtests.drain_backlog --repeats 2 --sessions 2000

A `MemoryStore` holds what the benchmark's pauses phase leaves undrained: `--repeats` times a
"pause all" and a "resume all" of `--sessions` (one bulk commit each), each followed by every
page's ack (committed `--ack-batch` at a time, as the batcher groups them). Then the real
`Drainer` drains it into a SQLite file while every event-loop callback is timed with
`time.thread_time()` (CPU of the loop's thread, which other work on the machine barely moves;
asyncio's loop, whose callbacks can be timed from Python). Printed: the longest stretches,
how many passed 10 / 20 / 40 ms, and the drain's process CPU (of which the event loop's thread;
the rest is the SQL driver's thread, aiosqlite's, where SQLite runs) and wall time.
Run it from each checkout to compare (docs/performance.md, ninth session).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path

from realtime.db.database import Database
from realtime.drainer import Drainer
from realtime.state.memory import MemoryStore
from realtime.state.model import Event, Exam, new_session
from realtime.state.store import Commit

EXAM = "e1"


def _timed_callbacks(stretches: list[float]) -> None:
    run = asyncio.events.Handle._run

    def timed(self: asyncio.Handle) -> None:
        started = time.thread_time()
        try:
            run(self)
        finally:
            stretches.append(time.thread_time() - started)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]


def _commit(sid: str, kind: str, command: str, at: float) -> Commit:
    if kind == "delivered":
        event = Event(EXAM, sid, kind, "candidate", at, details={"command_id": command},
                      changes={"last_seen": at})
    else:
        event = Event(EXAM, sid, kind, "staff:bench", at, details={"command_id": command},
                      changes={"status": "paused" if kind == "pause" else "active",
                               "status_command_id": command})
    return Commit(EXAM, sid, None, {}, [event])


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        db = await Database.connect(f"sqlite+aiosqlite:///{Path(workdir) / 'rt.db'}")
        try:
            await db.create_all()
            store = MemoryStore()
            exam = Exam(id=EXAM, title="drain backlog")
            await db.save_exam(exam)
            await store.put_exam(exam)
            sessions = [new_session(id=f"s{n}", exam_id=EXAM, candidate_id=f"c{n}")
                        for n in range(args.sessions)]
            await db.add_sessions(sessions)
            await store.add_sessions(sessions)
            ids = [s["id"] for s in sessions]
            for r in range(2 * args.repeats):
                kind, command, at = ("pause", "resume")[r % 2], f"cmd-{r}", 1000.0 + r
                await store.commit([_commit(sid, kind, command, at) for sid in ids])
                for start in range(0, len(ids), args.ack_batch):
                    await store.commit([_commit(sid, "delivered", command, at)
                                        for sid in ids[start:start + args.ack_batch]])
            backlog = (await store.outbox_backlog(0.0)).events
            gc.collect()  # as the server's GC policy leaves things (realtime/gcpolicy.py)
            gc.freeze()
            gc.set_threshold(10_000, 10, 10)
            stretches: list[float] = []
            _timed_callbacks(stretches)
            drainer = Drainer(store, db)
            cpu, wall, loop = time.process_time(), time.perf_counter(), time.thread_time()
            drainer.start()
            for _ in range(int(args.timeout / 0.01)):  # polled: the drainer's own pace
                if not await store.outbox_pending(EXAM):
                    break
                await asyncio.sleep(0.01)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            loop = time.thread_time() - loop
            left = await store.outbox_pending(EXAM)
            await drainer.close()
            if left:
                raise SystemExit(f"{left} outbox entries not drained in {args.timeout} s")
        finally:
            await db.engine.dispose()
    longest = ", ".join(f"{1000 * s:.1f}" for s in sorted(stretches)[-5:][::-1])
    over = " / ".join(str(sum(s >= limit for s in stretches)) for limit in (0.01, 0.02, 0.04))
    print(f"{backlog} events drained in {wall:.1f} s wall, {cpu:.2f} s process CPU (loop "
          f"thread {loop:.2f} s); "
          f"longest loop stretches {longest} ms; >= 10 / 20 / 40 ms: {over}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5, help="pause + resume pairs")
    parser.add_argument("--ack-batch", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds the drain may take")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
