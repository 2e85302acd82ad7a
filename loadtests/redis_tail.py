"""How long the Redis store's periodic and first-command work holds Redis and the event loop, at
N sessions, in-process on a private Redis (measurement only).

    python loadtests/redis_tail.py --sessions 5000 --repeats 5
    PYTHONPATH=/other/checkout python /this/checkout/loadtests/redis_tail.py   # that code's figures

Per kind of work (the sweeper's question `stale_holders`; the copy commands decide on, made
when `--together` targeted commands arrive at once before it exists; the drain, `drain:claim`
and `drain:ack`: `--drain-events` of a hall's mix appended to an outbox already 30,000 events
long, then claimed and acknowledged 200 entries at a time as the drainer does, SQL left out,
its Redis figures for the claim script's or the ack script's calls only):

- Redis calls the store made for it, and the longest one as Redis timed it (SLOWLOG with a
  threshold of 0: execution time inside Redis, during which every other client waits);
- the longest event-loop callback meanwhile (thread CPU time, asyncio's loop: what a command
  ready to run waited for at most);
- the longest garbage collection pass meanwhile (thread CPU time; it runs inside whichever
  callback allocated last, so it shows in the longest loop callback too);
- the worst round trip of a probe (a PING every 1 ms on another connection) meanwhile: what a
  command's round trip to Redis waited for.

Redis's and the loop's times are CPU-bound work, so a shared machine moves them little; the
probe is wall time (noisier). Each kind runs `--repeats` times; medians and maxima are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # PYTHONPATH's realtime first

from loadtests.servers import RedisProcess, workdir
from realtime.sessions import COMMAND_FIELDS
from realtime.state.model import Exam, new_session
from realtime.state.redis import RedisStore

EXAM = "tail"
_longest = [0.0]
_gc_longest = [0.0, 0.0]  # the longest garbage collection pass, when the current one began


def _install_gc_timer() -> None:
    import gc
    thread_time = time.thread_time

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _gc_longest[1] = thread_time()
        else:
            _gc_longest[0] = max(_gc_longest[0], thread_time() - _gc_longest[1])

    gc.callbacks.append(timed)


def _install_loop_timer() -> None:
    run = asyncio.events.Handle._run
    thread_time = time.thread_time

    def timed(self: asyncio.Handle) -> None:
        started = thread_time()
        try:
            run(self)
        finally:
            _longest[0] = max(_longest[0], thread_time() - started)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]


class Probe:
    """PING round trips on their own connection, every 1 ms, while something runs."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis
        self.client = Redis.from_url(url)
        self.worst = 0.0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            await self.client.ping()
            self.worst = max(self.worst, time.perf_counter() - started)
            await asyncio.sleep(0.001)


async def measured(url: str, admin: Any, work: Any, sha: str = "") -> dict[str, float]:
    await admin.slowlog_reset()
    probe = Probe(url)
    await probe.client.ping()
    task = asyncio.create_task(probe.run())
    await asyncio.sleep(0.01)
    _longest[0] = _gc_longest[0] = 0.0
    probe.worst = 0.0
    await work()
    loop_ms = 1000 * _longest[0]
    probe.stop.set()
    await task
    await probe.client.aclose()
    entries = [e for e in await admin.slowlog_get(100_000)
               if e["command"].split()[0].upper() == b"EVALSHA"]
    if sha:  # one script's calls only (the drain: the acknowledgements)
        entries = [e for e in entries if e["command"].split()[1].decode() == sha]
    return {"redis_calls": len(entries),
            "redis_longest_ms": max((e["duration"] for e in entries), default=0) / 1000,
            "redis_total_ms": sum(e["duration"] for e in entries) / 1000,
            "loop_longest_ms": loop_ms, "gc_longest_ms": 1000 * _gc_longest[0],
            "probe_worst_ms": 1000 * probe.worst}


async def _fill_outbox(store: RedisStore, events: int) -> None:
    """Append a hall's mix to the exam's outbox, as commit_batch.lua and audit_append.lua do:
    half targeted commands (1-3 events and an audit entry), half batches of progress reports
    and acks (100-500 events), one in 50 a bulk command's entry (1,000-5,000 events)."""
    import msgpack

    from realtime.state.model import Event
    from realtime.state.redis import encode_event
    client, rng = store._client, random.Random(events)
    seq_key, outbox = store.keys.seq(EXAM), store.keys.outbox(EXAM)
    blob = encode_event(Event(
        exam_id=EXAM, session_id="s1", kind="paused", actor="proctor:p1", at=time.time(),
        before="active", after="paused", details={"command_id": "c" * 20, "reason": "r"},
        changes={"status": "paused", "version": 7}), 7)
    added = 0
    while added < events:
        roll = rng.random()
        n = (rng.randint(1000, 5000) if roll < 0.02 else rng.randint(100, 500) if roll < 0.5
             else rng.randint(1, 3))
        current = int(await client.get(seq_key) or 0)
        await client.set(seq_key, current + n)
        await client.xadd(outbox, {"t": repr(time.time()), "n": n, "d": blob * n},
                          id=f"{current + 1}-*")
        if n <= 3:
            await client.xadd(outbox, {"t": repr(time.time()),
                                       "a": msgpack.packb([{"action": "pause"}])},
                              id=f"{current + n}-*")
        added += n
    await client.sadd(store.keys.outboxes, EXAM)


async def main_async(args: argparse.Namespace) -> None:
    from redis.asyncio import Redis
    redis = RedisProcess(workdir("rt-redistail-"))
    redis.start()
    try:
        url = redis.url
        admin = Redis.from_url(url)
        await admin.config_set("slowlog-log-slower-than", 0)
        await admin.config_set("slowlog-max-len", 100_000)
        store = RedisStore(url, prefix="tail:")
        await store.start()
        try:
            await store.put_exam(Exam(id=EXAM, title="tail"))
            rows = [new_session(id=f"s{i}", exam_id=EXAM, candidate_id=f"c{i}",
                                candidate_name=f"Candidate {i}", access_code=f"T{i:07d}",
                                status="active", authorized=True, connected=True,
                                conn_id=f"nlive-{i}", last_seen=time.time())
                    for i in range(args.sessions)]
            for start in range(0, len(rows), 1000):
                await store.add_sessions(rows[start:start + 1000])
            await store.serve(EXAM)
            results: dict[str, list[dict[str, float]]] = {
                "stale_holders": [], "copy": [], "drain:claim": [], "drain:ack": []}
            await _fill_outbox(store, 30_000)  # drained: the log (10,000 events) behind the rest
            while entries := await store.outbox_claim(EXAM, "tail", 200, 10.0):
                await store.outbox_ack(EXAM, "tail", entries)
            for _ in range(args.repeats):
                async def sweep() -> None:
                    await store.stale_holders(EXAM, time.time() - 15, {"ndead"})
                results["stale_holders"].append(await measured(url, admin, sweep))

                async def copy() -> None:
                    store.forget_view(EXAM)
                    await asyncio.gather(*(store.command_view(EXAM, COMMAND_FIELDS, whole=False)
                                           for _ in range(args.together)))
                    await asyncio.gather(*list(store._view_tasks))
                results["copy"].append(await measured(url, admin, copy))

                async def drain() -> None:
                    while entries := await store.outbox_claim(EXAM, "tail", 200, 10.0):
                        await store.outbox_ack(EXAM, "tail", entries)
                await _fill_outbox(store, args.drain_events)
                results["drain:claim"].append(
                    await measured(url, admin, drain, store._claim_script.sha))
                await _fill_outbox(store, args.drain_events)
                results["drain:ack"].append(
                    await measured(url, admin, drain, store._ack_script.sha))
        finally:
            await store.close()
            await admin.aclose()
    finally:
        redis.stop()
    print(f"{args.sessions} sessions, {args.repeats} repeats (median / max):")
    for kind, runs in results.items():
        cells = []
        for key in runs[0]:
            values = [run[key] for run in runs]
            cells.append(f"{key} {statistics.median(values):.1f} / {max(values):.1f}")
        print(f"  {kind:14s} " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--together", type=int, default=4,
                        help="targeted commands arriving at once before the copy exists")
    parser.add_argument("--drain-events", type=int, default=40_000,
                        help="events appended to the outbox before each drain measured")
    args = parser.parse_args()
    args.sessions = max(1, min(args.sessions, 50_000))
    args.repeats = max(1, min(args.repeats, 50))
    args.together = max(1, min(args.together, 64))
    args.drain_events = max(1, min(args.drain_events, 1_000_000))
    _install_loop_timer()
    _install_gc_timer()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
