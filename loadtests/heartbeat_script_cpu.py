"""Redis's own CPU time in touch.lua and stale_holders.lua (the heartbeat and the sweeper).

    python -m loadtests.heartbeat_script_cpu --sessions 5000 --rounds 5
    python -m loadtests.heartbeat_script_cpu --verify 2000

Runs a store's heartbeat touches and sweeper questions the way a server sends them, on a
private Redis, and reads what Redis itself spent around each run: the main thread's CPU time
(`INFO cpu`, user + sys) and the EVALSHA time and calls Redis counts (`INFO commandstats`). To
compare two versions of the scripts (and of the store that calls them), run this file with
each tree on PYTHONPATH in turn, alternated:

    PYTHONPATH=<tree> python <this tree>/loadtests/heartbeat_script_cpu.py ...

The exam: N sessions, of which 90 % held by a live connection (connected, `last_seen` now),
5 % disconnected whose holder still has them (the touch reports them), 5 % completed. Work, per
round:

* touch: every held session touched once, in calls of `--slice` holders (a heartbeat tick's
  slice: 5,000 sockets over `HEARTBEAT_TICKS` = 100 ticks is 50 a call);
* sweep: the sweeper's question over the whole exam (`stale_holders`, slices of
  `SWEEP_SLICE`) without dead nodes (the usual case), and sweep-dead: the same with one dead
  node (none of the exam's holders on it).

`--verify K` instead runs K random touches and questions over sessions in random states
(held or not, by this connection or another, connected or not, final or not, missing, stale
or not, on a dead node or not) and prints a digest of every reply and of the sessions after
each: two trees that print the same digest answered and wrote the same.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from typing import Any

import redis

from loadtests.commit_script_cpu import Meter, report, summarise
from loadtests.servers import RedisProcess, workdir
from realtime.state.model import Exam, new_session
from realtime.state.redis import RedisStore

NOW = 1_700_000_000.0
EXAM = "cpu"


def holders(sessions: int) -> list[tuple[str, str, str]]:
    """The (exam, session, conn id) of every held session (connected, or disconnected but
    still held by its connection): 95 % of them."""
    return [(EXAM, f"s{i}", f"nLive-{i}") for i in range(sessions) if i % 20 != 19]


async def setup(store: RedisStore, sessions: int) -> None:
    await store.put_exam(Exam(id=EXAM, title="cpu"))
    rows = []
    for i in range(sessions):
        kind = i % 20  # 0-17 held and connected, 18 disconnected but held, 19 completed
        rows.append(new_session(
            id=f"s{i}", exam_id=EXAM, candidate_id=f"c{i}", access_code=f"{EXAM}{i:06d}",
            status="completed" if kind == 19 else "active", authorized=True,
            connected=kind < 18, conn_id=f"nLive-{i}", last_seen=NOW))
    for start in range(0, sessions, 1000):
        await store.add_sessions(rows[start:start + 1000])


async def measure(url: str, sessions: int, rounds: int, slice_: int) -> dict[str, Any]:
    store = RedisStore(url, prefix="cpu:")
    await store.start()
    meter = Meter(url)
    held = holders(sessions)
    figures: dict[str, list[tuple[float, float, int]]] = {"touch": [], "sweep": [],
                                                          "sweep-dead": []}
    now = NOW
    try:
        await setup(store, sessions)
        await store.touch(held[:slice_], now)  # warm: scripts loaded
        await store.stale_holders(EXAM, now - 15)
        for _ in range(rounds):
            now += 5
            meter.start()
            lost = 0
            for start in range(0, len(held), slice_):
                lost += len(await store.touch(held[start:start + slice_], now))
            figures["touch"].append(meter.stop())
            if lost != sum(1 for i in range(sessions) if i % 20 == 18):
                raise RuntimeError(f"{lost} lost holders reported")
            meter.start()
            stale = await store.stale_holders(EXAM, now - 15)
            figures["sweep"].append(meter.stop())
            meter.start()
            stale += await store.stale_holders(EXAM, now - 15, {"nDead"})
            figures["sweep-dead"].append(meter.stop())
            if stale:
                raise RuntimeError(f"{len(stale)} stale holders reported")
    finally:
        await store.close()
    return summarise(figures)


# -- verification --------------------------------------------------------------------------------

FIELDS = ("status", "connected", "conn_id", "last_seen")


async def verify(url: str, rounds: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    store = RedisStore(url, prefix="verify:")
    await store.start()
    client = redis.Redis.from_url(url)
    record: list[Any] = []
    ids = [f"s{i}" for i in range(12)]
    try:
        await store.put_exam(Exam(id=EXAM, title="verify"))
        for rnd in range(rounds):
            now = NOW + rnd
            client.delete(*[store.keys.session(EXAM, sid) for sid in ids],
                          store.keys.sessions(EXAM))
            rows = [new_session(
                id=sid, exam_id=EXAM, candidate_id=f"c-{sid}", access_code=f"v{rnd}-{sid}",
                status=rng.choice(["ready", "active", "paused", "completed", "terminated"]),
                connected=rng.random() < 0.7,
                conn_id=rng.choice(["", f"nLive-{sid}", f"nDead-{sid}", "legacy"]),
                last_seen=rng.choice([None, now - 100, now - 15, now - 14.5, now]))
                for sid in ids if rng.random() < 0.85]  # some missing
            await store.add_sessions(rows)
            asked = [(EXAM, sid, rng.choice([f"nLive-{sid}", f"nDead-{sid}", "other", ""]))
                     for sid in rng.sample(ids, rng.randint(1, len(ids)))]
            lost = await store.touch(asked, now + 1)
            stale = sorted(await store.stale_holders(
                EXAM, now - 15, rng.choice([(), ("nDead",), ("nDead", "nLive")])))
            state = []
            for sid in ids:
                values = client.hmget(store.keys.session(EXAM, sid), FIELDS)
                state.append([None if v is None else v.decode() for v in values])
            record.append([sorted(list(h) for h in lost), stale, state])
    finally:
        await store.close()
        client.close()
    return record


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = RedisProcess(workdir("rt-heartbeat-cpu-"))
    server.start()
    try:
        if args.verify:
            return {"record": await verify(server.url, args.verify, args.seed)}
        return await measure(server.url, args.sessions, args.rounds, args.slice)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5, help="runs of each kind of work")
    parser.add_argument("--slice", type=int, default=50, help="holders per touch call")
    parser.add_argument("--verify", type=int, default=0, help="random rounds to record")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    args.sessions = max(20, min(args.sessions, 1_000_000))
    args.rounds = max(1, min(args.rounds, 50))
    args.slice = max(1, min(args.slice, 10_000))
    args.verify = max(0, min(args.verify, 100_000))
    result = asyncio.run(run(args))
    return report(result, args, "rounds")


if __name__ == "__main__":
    raise SystemExit(main())
