"""How long a staff command's answer takes, one command at a time, through the audited service.

    python -m loadtests.audited_answer --commands 400 --sessions 2000

On a private Redis, `AuditedSessionService` (the server's: an audit row per command, answers
kept for retries) with its audit log in SQLite: `--commands` targeted notices with a command id,
sent one after the other, each timed from the call until the service answers; then a few
notices to every session (`--sessions`), each timed the same way. Also the Redis round trips per
targeted command (`INFO stats` `total_reads_processed`). Wall-clock figures: compare trees by
running this file with each on PYTHONPATH in turn, alternated, and read the medians of runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

import redis

from loadtests.servers import RedisProcess, workdir
from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal
from realtime.db.database import Database
from realtime.identity.audit import AuditLog
from realtime.identity.audited import AuditedSessionService
from realtime.sessions import Target
from realtime.state import machine
from realtime.state.model import Action, Exam, new_session
from realtime.state.redis import RedisStore

STAFF = Principal(id="bench", name="bench", kind="staff", permissions=ALL_PERMISSIONS)


async def measure(url: str, commands: int, sessions: int, bulk: int) -> dict[str, Any]:
    store = RedisStore(url, prefix="answer:")
    await store.start()
    db = await Database.connect(f"sqlite+aiosqlite:///{workdir('rt-answer-sql-') / 'rt.db'}")
    client = redis.Redis.from_url(url)
    try:
        await db.create_all()
        service = AuditedSessionService(store, db, machine.Liveness(15, 60))
        service.audit = AuditLog(db)
        await store.put_exam(Exam(id="e", title="answer"))
        rows = [new_session(id=f"s{i}", exam_id="e", candidate_id=f"c{i}",
                            access_code=f"a{i:06d}") for i in range(sessions)]
        for start in range(0, sessions, 1000):
            await store.add_sessions(rows[start:start + 1000])
        for i in range(20):  # warm: scripts loaded
            await service.command("e", Action.NOTICE, Target(session_ids=[f"s{i % sessions}"]),
                                  STAFF, {"command_id": f"warm{i}", "text": "x"})
        await service.settle()
        gc.collect()
        reads = int(client.info("stats")["total_reads_processed"])
        targeted = []
        for i in range(commands):
            started = time.perf_counter()
            await service.command("e", Action.NOTICE, Target(session_ids=[f"s{i % sessions}"]),
                                  STAFF, {"command_id": f"t{i}", "text": "x"})
            targeted.append(1000 * (time.perf_counter() - started))
        await service.settle()
        trips = (int(client.info("stats")["total_reads_processed"]) - reads) / commands
        everyone = []
        for rep in range(bulk):
            started = time.perf_counter()
            result = await service.command("e", Action.NOTICE, Target(all=True), STAFF,
                                           {"command_id": f"b{rep}", "text": f"y{rep}"})
            everyone.append(1000 * (time.perf_counter() - started))
            await service.settle()
            if len(result.applied) != sessions:
                raise RuntimeError(f"a notice to all applied {len(result.applied)}")
    finally:
        client.close()
        await store.close()
        await db.close()
    targeted.sort()
    return {"targeted_ms_p50": round(statistics.median(targeted), 3),
            "targeted_ms_p90": round(targeted[int(0.9 * len(targeted))], 3),
            "round_trips_per_command": round(trips, 2),
            "all_ms": [round(v, 1) for v in everyone],
            "all_ms_median": round(statistics.median(everyone), 1)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = RedisProcess(workdir("rt-answer-"))
    server.start()
    try:
        return await measure(server.url, args.commands, args.sessions, args.bulk)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=400, help="targeted commands")
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--bulk", type=int, default=4, help="notices to every session")
    args = parser.parse_args(argv)
    args.commands = max(1, min(args.commands, 100_000))
    args.sessions = max(1, min(args.sessions, 100_000))
    args.bulk = max(1, min(args.bulk, 50))
    result = asyncio.run(run(args))
    print(f"targeted answer p50 {result['targeted_ms_p50']} ms, p90 {result['targeted_ms_p90']} "
          f"ms, {result['round_trips_per_command']} Redis round trips per command; notice to all "
          f"{args.sessions} {result['all_ms']} ms, median {result['all_ms_median']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
