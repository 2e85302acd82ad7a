"""CPU cost of the staff command path alone, in-process, on a private Redis (or the memory store).

    python -m loadtests.command_cpu --sessions 5000 --bulk-repeats 6 --targeted 500
    python -m loadtests.command_cpu --sessions 5000 --targeted 500 --concurrency 64
    python -m loadtests.command_cpu --targeted 1000 --concurrency 64 --rate 500 --history

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

With `--history` the service is the server's (an audit row per command, answers kept for
retries) and a drainer writes the outbox to SQLite as a server's does (with the webhook hook
and its dispatcher running, no subscription): each round is timed until its history and
audit rows are in SQL, so the figures include what every command costs the drainer.

With `--rest` every command is a `POST /api/v1/exams/{id}/commands` to the server's whole app
(`create_app`, as `realtime serve` builds it: its middleware, routing, the bearer token's check,
the JSON body, the audited service, the JSON answer; its drainer to SQLite, webhook dispatcher,
heartbeat, sweeper and GC policy running), called in-process as uvicorn calls it: what a
command costs the server from its request to its history row, but for uvicorn's HTTP parsing
and the socket writes (no sockets: no candidate is connected, so no frame is written either).
`--rest` implies `--history`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from loadtests.servers import BENCH_STAFF_TOKEN, RedisProcess, workdir
from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal
from realtime.config import Settings
from realtime.db import migrate
from realtime.db.database import Database
from realtime.drainer import Drainer
from realtime.identity.audit import AuditLog
from realtime.identity.audited import AuditedSessionService
from realtime.runtime import Runtime
from realtime.sessions import SessionService, Target
from realtime.state import machine
from realtime.state.memory import MemoryStore
from realtime.state.model import Action, Exam, new_session
from realtime.state.redis import RedisStore
from realtime.state.store import StateStore
from realtime.webhooks.dispatcher import Dispatcher, RetryPolicy
from realtime.webhooks.store import WebhookStore

STAFF = Principal(id="bench", name="bench", kind="staff", permissions=ALL_PERMISSIONS)
EXAM = "cpu"


class History:
    """The audited service, and a drainer writing the outbox to SQLite, as a server runs them."""

    def __init__(self, store: StateStore, root: Path) -> None:
        self.store = store
        self.url = f"sqlite+aiosqlite:///{root / 'history.db'}"
        self.db: Database | None = None
        self.drainer: Drainer | None = None
        self.dispatcher: Dispatcher | None = None

    async def start(self) -> AuditedSessionService:
        self.db = db = await Database.connect(self.url)
        await migrate.upgrade(db)
        service = AuditedSessionService(self.store, db, machine.Liveness(15, 60))
        service.audit = AuditLog(db)
        self.drainer = drainer = Drainer(self.store, db)
        self.store.add_listener(drainer.on_event)
        self.store.add_commit_listener(lambda events: drainer.on_event(events[0]))
        webhooks = WebhookStore(db)
        self.dispatcher = Dispatcher(webhooks, timeout=5, policy=RetryPolicy(3, 1, 10))
        webhooks.on_new_deliveries = self.dispatcher.wake
        db.outbox_hooks.append(webhooks)
        await db.save_exam(Exam(id=EXAM, title="cpu"))
        drainer.start()
        self.dispatcher.start()
        return service

    async def add_sessions(self, rows: list[dict[str, Any]]) -> None:
        assert self.db is not None
        await self.db.add_sessions(rows)

    async def drained(self) -> None:
        """Until the outbox is empty (bounded: 60 s)."""
        for _ in range(1200):
            if (await self.store.outbox_backlog(time.time())).events == 0:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the drainer did not empty the outbox within 60 s")

    async def close(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self.drainer is not None:
            await self.drainer.close()
        if self.db is not None:
            await self.db.close()


class Rest:
    """`--rest`: the server's app (`create_app`) with its lifespan run here, each command a
    POST called in-process as uvicorn calls the app (no sockets, no HTTP parsing)."""

    def __init__(self, redis_url: str, root: Path) -> None:
        self.settings = Settings(
            redis_url=redis_url, redis_prefix="cpu:",
            database_url=f"sqlite+aiosqlite:///{root / 'history.db'}",
            secret_key="command-cpu", bootstrap_staff_token=BENCH_STAFF_TOKEN,
        )
        self.app: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> Runtime:
        from realtime.app import create_app

        self.app = app = create_app(self.settings)
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        messages = iter([{"type": "lifespan.startup"}])

        async def receive() -> dict[str, Any]:
            for message in messages:
                return message
            await self._stop.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set_result(None)
            elif message["type"] == "lifespan.startup.failed" and not started.done():
                started.set_exception(RuntimeError(message.get("message", "startup failed")))

        self._task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"},
                                              "state": {}}, receive, send))
        async with asyncio.timeout(60):
            await started
        runtime: Runtime = app.state.runtime
        return runtime

    async def command(self, action: Action, target: str, command_id: str) -> int:
        """One POST as uvicorn hands it to the app; the sessions it applied to."""
        body = orjson.dumps({"action": action.value, "target": target, "command_id": command_id})
        path = f"/api/v1/exams/{EXAM}/commands"
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"command-cpu"),
                        (b"authorization", f"Bearer {BENCH_STAFF_TOKEN}".encode()),
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000), "state": {},
        }
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self._stop.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        if status != 200:
            raise RuntimeError(f"POST {path} answered {status}: {b''.join(chunks)[:300]!r}")
        answer = orjson.loads(b"".join(chunks))
        if answer["skipped"]:
            raise RuntimeError(f"POST {path} skipped: {answer['skipped'][:3]}")
        return len(answer["applied"])

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            async with asyncio.timeout(60):
                await self._task


Send = Callable[[Action, Target, str], Awaitable[int]]


async def measure(store: StateStore, sessions: int, bulk_repeats: int,
                  targeted: int, concurrency: int = 1, deadlines: bool = False,
                  history: History | None = None, rate: float = 0.0,
                  rest: Rest | None = None) -> dict[str, Any]:
    send: Send
    if rest is not None:
        runtime = await rest.start()
        store = runtime.store
        assert history is not None
        history.store, history.db = store, runtime.db

        async def send(action: Action, target: Target, command_id: str) -> int:
            assert rest is not None
            raw = "all" if target.all else (target.session_ids or [""])[0]
            return await rest.command(action, raw, command_id)
    else:
        service = (await history.start() if history is not None else
                   SessionService(store, db=None,  # type: ignore[arg-type]  # never rebuilds
                                  liveness=machine.Liveness(stale_after=15, resume_grace=60)))

        async def send(action: Action, target: Target, command_id: str) -> int:
            result = await service.command(EXAM, action, target, STAFF,
                                           {"command_id": command_id})
            return len(result.applied)
    await store.put_exam(Exam(id=EXAM, title="cpu"))
    if rest is not None and history is not None and history.db is not None:
        await history.db.save_exam(Exam(id=EXAM, title="cpu"))
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
        if history is not None:
            await history.add_sessions(rows[start:start + 1000])
    if history is not None:
        await history.drained()
    bulk: list[float] = []
    bulk_wall: list[float] = []
    for rep in range(max(1, min(bulk_repeats, 50))):
        action = Action.PAUSE if rep % 2 == 0 else Action.RESUME
        gc.collect()
        started, wall = time.process_time(), time.perf_counter()
        applied = await send(action, Target(all=True), f"bulk{rep}")
        bulk.append(1000 * (time.process_time() - started))
        bulk_wall.append(1000 * (time.perf_counter() - wall))
        if applied != sessions:
            raise RuntimeError(f"bulk {action.value} applied {applied}/{sessions}")
    per_command: list[float] = []
    count = max(1, min(targeted, sessions))
    if history is not None:
        await history.drained()  # the bulk commands' history: not in the targeted rounds
    active = len(bulk) % 2 == 0  # every session is active again after an even number
    for rep in range(3):  # the same sessions each round: each command applies
        action = Action.PAUSE if active else Action.RESUME
        active = not active
        gc.collect()
        started = time.process_time()
        applied = 0
        paced = time.perf_counter()

        async def worker(indexes: Iterator[int], act: Action, rnd: int, paced: float) -> None:
            nonlocal applied
            for i in indexes:  # shared: each command is sent by one worker
                if rate > 0:  # the i-th command not before its time (a steady flow)
                    delay = paced + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                done = await send(act, Target(session_ids=[f"s{i}"]), f"t{rnd}-{i}")
                applied += done

        shared = iter(range(count))
        await asyncio.gather(*(worker(shared, action, rep, paced)
                               for _ in range(max(1, concurrency))))
        if history is not None:
            await history.drained()  # their history and audit rows, in SQL
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
    try:
        if args.rest:  # the app makes its store, database, drainer (`measure` takes them)
            root = workdir("rt-cpu-sql-")
            rest = Rest(redis.url if redis is not None else "", root)
            history = History(MemoryStore(), root)
            try:
                return await measure(history.store, args.sessions, args.bulk_repeats,
                                     args.targeted, args.concurrency, args.deadlines, history,
                                     args.rate, rest)
            finally:
                await rest.close()
        store = RedisStore(redis.url, prefix="cpu:") if redis is not None else MemoryStore()
        history = History(store, workdir("rt-cpu-sql-")) if args.history else None
        await store.start()
        try:
            return await measure(store, args.sessions, args.bulk_repeats, args.targeted,
                                 args.concurrency, args.deadlines, history, args.rate)
        finally:
            if history is not None:
                await history.close()
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
    parser.add_argument("--rate", type=float, default=0.0,
                        help="targeted commands started at this many per second (a steady "
                             "flow, at most --concurrency in flight); 0: as fast as they go")
    parser.add_argument("--history", action="store_true",
                        help="the server's audited service and a drainer to SQLite: each round "
                             "timed until its history and audit rows are written")
    parser.add_argument("--rest", action="store_true",
                        help="each command a POST to the server's whole app, in-process "
                             "(implies --history)")
    parser.add_argument("--drain-gather-max", type=float, default=-1.0,
                        help="seconds the drainer's gather grows to under a sustained flow "
                        "(`realtime.drainer.GATHER_MAX`, Redis only; default: the server's)")
    args = parser.parse_args(argv)
    args.history = args.history or args.rest
    if args.drain_gather_max >= 0:
        import realtime.drainer

        realtime.drainer.GATHER_MAX = args.drain_gather_max
    result = asyncio.run(run(args))
    mode = " rest" if args.rest else ""
    print(f"{args.store}{mode} N={result['sessions']} K={args.concurrency}: pause/resume all CPU "
          f"{result['bulk_cpu_ms']} ms, median {result['bulk_cpu_ms_median']} ms; targeted "
          f"{result['targeted_cpu_ms']} ms per command, median "
          f"{result['targeted_cpu_ms_median']} ms; pause/resume all wall "
          f"{result['bulk_wall_ms']} ms, median {result['bulk_wall_ms_median']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
