"""CPU the outbox drainer costs per event under a steady flow, in-process.

    python -m loadtests.drain_cpu --store redis --rate 500 --seconds 4 --rounds 4
    python -m loadtests.drain_cpu --store redis --rate 500 --audit --drain-gather-max 0.05

A state store (a private redis-server, or the memory store) and the server's drainer writing to
SQLite (with the webhook hook, no subscription), nothing else. Each round a feeder commits
`--rate` events a second for `--seconds`, each a session's `progress` with a change to fold
into its stored state (and with `--audit` an audit row each, with its `uid`, as a command's),
gathered as the commit batcher gathers them: every 10 ms, one store call for the events due.
A round is timed with `time.process_time()` from its first commit until the drainer has
written its last event, so the figure is the feeder's part (the same whatever the drainer
does) plus the drain: its claims, decodes, SQL transactions (`other threads`: aiosqlite's) and
acknowledgements.
`--feeder-only` times the feeder alone (the drainer writes each round after it, untimed): take
it off to get the drain's own part. `--drain-gather-max` sets how long the drainer may gather
under a sustained flow (`realtime.drainer.GATHER_MAX`; 0.05: the fixed 50 ms gather it had
before).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
import uuid
from typing import Any

from loadtests.servers import RedisProcess, workdir
from realtime.db import migrate
from realtime.db.database import Database
from realtime.drainer import Drainer
from realtime.state.memory import MemoryStore
from realtime.state.model import Event, Exam, new_session
from realtime.state.redis import RedisStore
from realtime.state.store import Commit, StateStore
from realtime.webhooks.store import WebhookStore

EXAM = "drain"
TICK = 0.01  # the feeder's step: one store call for what is due


async def feed(store: StateStore, sessions: int, rate: float, seconds: float, audit: bool,
               first: int) -> int:
    """Commit `rate` events a second for `seconds`; returns how many."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = int(rate * seconds)
    sent = 0
    while sent < total:
        due = min(total, int(rate * (loop.time() - start)) + 1) - sent
        if due > 0:
            now = time.time()
            commits = []
            for n in range(first + sent, first + sent + due):
                sid = f"s{n % sessions}"
                event = Event(exam_id=EXAM, session_id=sid, kind="progress",
                              actor=f"candidate:c{n % sessions}", at=now,
                              details={"position": n % 40}, changes={"last_seen": now})
                commits.append(Commit(EXAM, sid, None, {"last_seen": now}, [event]))
            await store.commit(commits)
            if audit:
                await store.append_audit(EXAM, [
                    {"at": now, "actor": "staff:cpu", "ip": "", "action": "session_command",
                     "subject": f"exam:{EXAM}", "uid": uuid.uuid4().hex, "details": {"n": n}}
                    for n in range(first + sent, first + sent + due)])
            sent += due
        await asyncio.sleep(TICK)
    return sent


async def measure(args: argparse.Namespace, store: StateStore) -> dict[str, Any]:
    db = await Database.connect(f"sqlite+aiosqlite:///{workdir('rt-drain-sql-') / 'h.db'}")
    await migrate.upgrade(db)
    db.outbox_hooks.append(WebhookStore(db))
    drainer = Drainer(store, db)
    store.add_listener(drainer.on_event)
    store.add_commit_listener(lambda events: drainer.on_event(events[0]))
    await db.save_exam(Exam(id=EXAM, title="drain"))
    await store.put_exam(Exam(id=EXAM, title="drain"))
    await store.serve(EXAM)
    rows = [new_session(id=f"s{i}", exam_id=EXAM, candidate_id=f"c{i}") for i in
            range(args.sessions)]
    await db.add_sessions(rows)
    await store.add_sessions(rows)
    if not args.feeder_only:
        drainer.start()
    per_round: list[dict[str, float]] = []
    written = 0
    try:
        for rnd in range(args.rounds):
            await drainer.catch_up(EXAM, timeout=30.0)
            if args.feeder_only:
                await drainer.drain_all()
            await asyncio.sleep(0.3)
            gc.collect()
            rows_before, rounds_before = drainer.rows, drainer.rounds
            cpu, main, wall = time.process_time(), time.thread_time(), time.perf_counter()
            sent = await feed(store, args.sessions, args.rate, args.seconds, args.audit, written)
            written += sent
            want = sent * (2 if args.audit else 1)
            # until the drainer has written this round's rows (bounded: 30 s)
            for _ in range(0 if args.feeder_only else 3000):
                if drainer.rows - rows_before >= want:
                    break
                await asyncio.sleep(0.01)
            else:
                if not args.feeder_only:
                    raise RuntimeError("the drainer did not write the round within 30 s")
            cpu, main = time.process_time() - cpu, time.thread_time() - main
            row = {"cpu_us_per_event": 1e6 * cpu / sent,
                   "other_threads_us_per_event": 1e6 * (cpu - main) / sent,
                   "drain_rounds": drainer.rounds - rounds_before,
                   "seconds": time.perf_counter() - wall}
            per_round.append(row)
            print(f"round {rnd}: {sent} events, {row['cpu_us_per_event']:.1f} us CPU per event "
                  f"({row['other_threads_us_per_event']:.1f} in other threads), "
                  f"{row['drain_rounds']} drain rounds, {row['seconds']:.2f} s", flush=True)
    finally:
        await drainer.close()
        await db.close()
    measured = per_round[1:] if len(per_round) > 1 else per_round  # the first warms up
    return {
        "store": args.store, "feeder_only": args.feeder_only, "rate": args.rate,
        "seconds": args.seconds, "audit": args.audit,
        "max_gather": drainer.max_gather, "rounds": len(measured),
        **{f"{key}_p50": round(statistics.median(r[key] for r in measured), 1)
           for key in ("cpu_us_per_event", "other_threads_us_per_event", "drain_rounds")},
        "all_rounds_us": [round(r["cpu_us_per_event"], 1) for r in measured],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    redis: RedisProcess | None = None
    if args.store == "redis":
        redis = RedisProcess(workdir("rt-drain-"))
        redis.start()
    try:
        store: StateStore = (RedisStore(redis.url, prefix="drain:") if redis is not None
                             else MemoryStore())
        await store.start()
        try:
            return await measure(args, store)
        finally:
            await store.close()
    finally:
        if redis is not None:
            redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["redis", "memory"], default="redis")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0, help="events a second")
    parser.add_argument("--seconds", type=float, default=4.0, help="per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--audit", action="store_true", help="an audit row with each event")
    parser.add_argument("--feeder-only", action="store_true",
                        help="time the feeder alone (the drainer writes after each round)")
    parser.add_argument("--drain-gather-max", type=float, default=-1.0,
                        help="seconds the drainer's gather grows to under a sustained flow "
                        "(`realtime.drainer.GATHER_MAX`, Redis only; default: the server's)")
    args = parser.parse_args(argv)
    args.sessions = max(1, min(args.sessions, 20_000))
    args.rounds = max(1, min(args.rounds, 50))
    args.rate = max(1.0, min(args.rate, 20_000.0))
    args.seconds = max(0.2, min(args.seconds, 60.0))
    if args.drain_gather_max >= 0:
        import realtime.drainer

        realtime.drainer.GATHER_MAX = args.drain_gather_max
    summary = asyncio.run(run(args))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
