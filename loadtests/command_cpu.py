"""CPU cost of the staff command path alone, in-process, on a private Redis (or the memory store).

    python -m loadtests.command_cpu --sessions 5000 --bulk-repeats 6 --targeted 500
    python -m loadtests.command_cpu --sessions 5000 --targeted 500 --concurrency 64

Times `SessionService.command` with `time.process_time()` (CPU of this process, so other work on
the machine barely moves it): a "pause/resume all" of N active sessions, and targeted pause/resume
commands one after the other (or, with `--concurrency K`, K of them in flight at once, as the
REST workers of a busy server send them). No sockets: the fan-out to candidates, their acks and
the SQL drain are not in these figures (the benchmark's `server_cpu_ms` per pause-all has them all).
What it isolates is what a change to the command path itself (target read, decide, commit,
answer) is worth. The exam is served by the store, so the echo of each commit is decoded and
dispatched as on a server. The bulk command's wall time is printed too (on Redis it includes the
commit script's run in Redis, which the process's CPU does not); with `--deadlines` every
session has its own start and deadline, as in a hall (else they have none, and a resume
changes them all alike).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Iterator
from typing import Any

from loadtests.servers import RedisProcess, workdir
from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal
from realtime.sessions import SessionService, Target
from realtime.state import machine
from realtime.state.memory import MemoryStore
from realtime.state.model import Action, Exam, new_session
from realtime.state.redis import RedisStore
from realtime.state.store import StateStore

STAFF = Principal(id="bench", name="bench", kind="staff", permissions=ALL_PERMISSIONS)
EXAM = "cpu"


async def measure(store: StateStore, sessions: int, bulk_repeats: int,
                  targeted: int, concurrency: int = 1, deadlines: bool = False) -> dict[str, Any]:
    service = SessionService(store, db=None,  # type: ignore[arg-type]  # never rebuilds here
                             liveness=machine.Liveness(stale_after=15, resume_grace=60))
    await store.put_exam(Exam(id=EXAM, title="cpu"))
    await store.serve(EXAM)
    rows = [new_session(id=f"s{i}", exam_id=EXAM, candidate_id=f"c{i}",
                        candidate_name=f"Candidate {i}", access_code=f"CODE{i:06d}",
                        status="active", authorized=True)
            for i in range(sessions)]
    if deadlines:  # as in a hall: started one after the other, each with its own deadline
        start = time.time() - 600
        for i, row in enumerate(rows):
            row["started_at"] = start + i * 0.05
            row["deadline"] = row["started_at"] + 3600
    for start in range(0, sessions, 1000):
        await store.add_sessions(rows[start:start + 1000])
    bulk: list[float] = []
    bulk_wall: list[float] = []
    for rep in range(max(1, min(bulk_repeats, 50))):
        action = Action.PAUSE if rep % 2 == 0 else Action.RESUME
        gc.collect()
        started, wall = time.process_time(), time.perf_counter()
        result = await service.command(EXAM, action, Target(all=True), STAFF,
                                       {"command_id": f"bulk{rep}"})
        bulk.append(1000 * (time.process_time() - started))
        bulk_wall.append(1000 * (time.perf_counter() - wall))
        if len(result.applied) != sessions:
            raise RuntimeError(f"bulk {action.value} applied {len(result.applied)}/{sessions}")
    per_command: list[float] = []
    count = max(1, min(targeted, sessions))
    active = len(bulk) % 2 == 0  # every session is active again after an even number
    for rep in range(3):  # the same sessions each round: each command applies
        action = Action.PAUSE if active else Action.RESUME
        active = not active
        gc.collect()
        started = time.process_time()
        applied = 0
        async def worker(indexes: Iterator[int], act: Action, rnd: int) -> None:
            nonlocal applied
            for i in indexes:  # shared: each command is sent by one worker
                result = await service.command(EXAM, act, Target(session_ids=[f"s{i}"]),
                                               STAFF, {"command_id": f"t{rnd}-{i}"})
                applied += len(result.applied)

        shared = iter(range(count))
        await asyncio.gather(*(worker(shared, action, rep) for _ in range(max(1, concurrency))))
        per_command.append(1000 * (time.process_time() - started) / count)
        if applied != count:
            raise RuntimeError(f"targeted {action.value} applied {applied}/{count}")
    await asyncio.sleep(0.2)  # background answers kept for retries
    return {
        "sessions": sessions,
        "bulk_cpu_ms": [round(v, 1) for v in bulk],
        "bulk_cpu_ms_median": round(statistics.median(bulk), 1),
        "bulk_wall_ms": [round(v, 1) for v in bulk_wall],
        "bulk_wall_ms_median": round(statistics.median(bulk_wall), 1),
        "targeted_cpu_ms": [round(v, 3) for v in per_command],
        "targeted_cpu_ms_median": round(statistics.median(per_command), 3),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    redis: RedisProcess | None = None
    store: StateStore
    if args.store == "redis":
        redis = RedisProcess(workdir("rt-cpu-"))
        redis.start()
        store = RedisStore(redis.url, prefix="cpu:")
    else:
        store = MemoryStore()
    try:
        await store.start()
        try:
            return await measure(store, args.sessions, args.bulk_repeats, args.targeted,
                                 args.concurrency, args.deadlines)
        finally:
            await store.close()
    finally:
        if redis is not None:
            redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["redis", "memory"], default="redis")
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--bulk-repeats", type=int, default=6)
    parser.add_argument("--targeted", type=int, default=500, help="per round (3 rounds)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="targeted commands in flight at once")
    parser.add_argument("--deadlines", action="store_true",
                        help="every session its own start and deadline (as in a hall), so a "
                             "resume changes each one's deadline differently")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(f"{args.store} N={result['sessions']} K={args.concurrency}: pause/resume all CPU "
          f"{result['bulk_cpu_ms']} ms, median {result['bulk_cpu_ms_median']} ms; targeted "
          f"{result['targeted_cpu_ms']} ms per command, median "
          f"{result['targeted_cpu_ms_median']} ms; pause/resume all wall "
          f"{result['bulk_wall_ms']} ms, median {result['bulk_wall_ms_median']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
