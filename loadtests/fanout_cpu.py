"""CPU cost of a "pause all" fan-out, in-process, with real sockets held by a child process.

    python -m loadtests.fanout_cpu --sessions 5000 --repeats 10
    python -m loadtests.fanout_cpu --sessions 5000 --repeats 6 --protocol realtime.v1.json
    python -m loadtests.fanout_cpu --sessions 5000 --repeats 6 --profile /tmp/fanout.prof
    python -m loadtests.fanout_cpu --sessions 5000 --repeats 7 --ws-impl wsproto
    python -m loadtests.fanout_cpu --sessions 5000 --repeats 4 --acks --timeline --store redis
    python -m loadtests.fanout_cpu --sessions 10000 --repeats 5 --acks --timeline --store redis \
        --client-read read-first --gap 1 --drain-hold 0
    perf record -D -1 --control fifo:ctl,ack -g -- \
        python -m loadtests.fanout_cpu --sessions 5000 --repeats 4 --perf-ctl ctl,ack

The server (memory store, or a private Redis with `--store redis`; SQLite) runs in this
process under uvicorn; a child process holds the candidate sockets (and `--dashboards`
dashboard sockets) and tells this one when every candidate has the command. Each repeat is
a "pause all" (then a "resume all", and so on) applied through `SessionService.command`,
timed with `time.process_time()` (CPU of this process: the rest of the machine barely moves
it); each repeat starts once the last one's events are in SQL (the drainer's write is not in
the next one's figures), or, with `--gap S`, `S` seconds after the last one's last frame, as
the benchmark's `--pause-gap` (what the last one left running then overlaps this one):

* `command_ms`: the command call (targets read, decide, commit, answer);
* `fanout_ms`: the hand-off of the committed events to the listeners (the hub turning them
  into frames and writing them to the sockets, and the dashboards' batch);
* `total_ms`: from the call until the last candidate has its frame;
* `loop_ms`: of `total_ms`, the event loop's thread (the rest, `total_ms - loop_ms`, ran in the
  process's other threads: the SQL driver's, aiosqlite's, runs SQLite there);
* `backlog`: events not yet in SQL when the command was called.

The candidates do not ack (`--acks` to make them), so `total_ms` is the command and its
fan-out, without the traffic that follows. `--ws-impl` picks uvicorn's WebSocket implementation
(its `ws` setting); the summary names the protocol class that served the candidates and the
server's RSS per open candidate socket (`rss_kib_per_conn`: RSS with every candidate opened
minus before the first connected, over the sessions).

`--timeline` prints, per repeat, when the command returned (the answer), when the child got
the first frame and when it read and parsed the last (`time.monotonic`, one clock for both
processes; read = stamped by `loadtests.wsclient` before parsing) with the child's CPU from
the first frame parsed to the last (`--client-read read-first`: the child reads every socket
before parsing, as the benchmark does; `inline`, the default here: as before), and what ran on
the loop from the call until 0.5 s after the last frame, each with its start, end and CPU of
the loop's thread: store commits (the bulk one, the acks'), the fan-out (the hand-off), the
Redis echo's dispatch, the dashboard batch, the drainer's claim, SQL write and ack, and every
garbage collection. `*` marks what started before the last frame. The drainer's SQL write
gets a second line: how many stretches it held the loop for (between two suspensions), their
CPU (its own, without what ran in between) and the longest one. `--write-slice N` sets the
rows per statement of that write (`realtime.db.database.WRITE_SLICE`; a huge N: one
statement, as before the slices). And a third: what of the drainer ran from the call until
the server wrote the last frame (the end of the fan-out), its stretches on the loop (claims,
writes, acks) and its SQL thread's CPU (every call aiosqlite ran there): with `--gap`, the
previous repeat's history being written through this one. `--drain-hold S` and
`--hold-linger S` set how long a drain round gives way to a bulk command
(`realtime.drainer.HOLD_MAX`, `HOLD_LINGER`; `--drain-hold 0`: never, as before it).

`--commit-chunk 0,1000` (Redis) alternates the store's chunk size (`RedisStore(commit_chunk=)`,
`REALTIME_REDIS_COMMIT_CHUNK`; 0: the bulk commit in one script call) every two repeats (a
pause and a resume each), so sizes are compared within one run on one machine; each repeat's
line names its size and the summary has the medians per size (`by_chunk`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import json
import os
import resource
import statistics
import sys
import time
from typing import Any

from loadtests.common import MSGPACK, raise_nofile, ws_url
from loadtests.hub_fanout import PerfControl
from loadtests.inprocess import create_hall, start_in_process
from loadtests.servers import BENCH_STAFF_TOKEN
from loadtests.wsclient import READ_MODES
from realtime.config import WS_IMPLS

EXAM = "fanout"


# -- the child: holds the sockets ---------------------------------------------------------------


async def hold(url: str, protocol: str, codes: list[str], dashboards: int, acks: bool,
               client_read: str = "inline") -> None:
    from loadtests.wsclient import ReadFirst, WsPeer, connect, watch_exam

    reader = ReadFirst() if client_read == "read-first" else None
    n = len(codes)
    counts: dict[str, int] = {}
    first_at: dict[str, float] = {}
    first_cpu: dict[str, float] = {}
    last_read: dict[str, float] = {}
    opened = 0
    all_opened = asyncio.get_running_loop().create_future()
    deltas: dict[str, int] = {}

    def on_candidate(peer: WsPeer, message: dict[str, Any]) -> None:
        nonlocal opened
        kind = message.get("type")
        if kind == "opened":
            opened += 1
            if opened == n and not all_opened.done():
                all_opened.set_result(None)
        elif kind == "command":
            command_id = message.get("command_id", "")
            counts[command_id] = counts.get(command_id, 0) + 1
            first_at.setdefault(command_id, time.monotonic())
            first_cpu.setdefault(command_id, time.process_time())
            # read from the socket (before parsing; perf_counter is CLOCK_MONOTONIC too)
            last_read[command_id] = max(last_read.get(command_id, 0.0), peer.arrived_at)
            if acks:
                peer.send({"type": "ack", "command_id": command_id})
            if counts[command_id] == n:
                times = {"first": first_at[command_id], "last": time.monotonic(),
                         "last_read": last_read[command_id],
                         # the child's CPU from the first frame parsed to the last
                         "cpu": time.process_time() - first_cpu[command_id]}
                compact = {"separators": (",", ":")}
                print(f"done {command_id} {json.dumps(deltas, **compact)} "
                      f"{json.dumps(times, **compact)}", flush=True)
        elif kind == "ping":
            peer.send({"type": "pong", "t": message.get("t")})
        elif kind in ("refused", "error"):
            print(f"error {json.dumps(message)}", file=sys.stderr, flush=True)

    def on_dashboard(peer: WsPeer, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("event_batch", "events"):
            for event in message["events"]:
                command_id = (event.get("details") or {}).get("command_id", "")
                deltas[command_id] = deltas.get(command_id, 0) + 1
        elif kind == "event":
            command_id = (message["event"].get("details") or {}).get("command_id", "")
            deltas[command_id] = deltas.get(command_id, 0) + 1

    limit = asyncio.Semaphore(200)
    peers: list[WsPeer] = []

    async def one(code: str) -> None:
        async with limit:
            peer = await connect(ws_url(url, "/ws/candidate"), on_candidate, protocol=protocol,
                                 timeout=120, reader=reader)
            peers.append(peer)
            peer.send({"type": "open", "access_code": code, "client_id": "fanout"})

    await asyncio.gather(*(one(code) for code in codes))
    await asyncio.wait_for(all_opened, 120)
    for _ in range(dashboards):
        peers.append(await watch_exam(ws_url(url, "/ws/proctor"), EXAM, BENCH_STAFF_TOKEN,
                                      protocol=protocol, on_message=on_dashboard))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent ends


# -- the parent: the server -----------------------------------------------------------------------


async def serve_and_measure(args: argparse.Namespace) -> dict[str, Any]:
    from realtime.auth.permissions import ALL_PERMISSIONS
    from realtime.auth.principal import Principal
    from realtime.sessions import Target
    from realtime.state.model import Action

    served = await start_in_process("fanout", redis=args.store == "redis", ws=args.ws_impl, env={
        "REALTIME_PING_INTERVAL": "3600",  # no pings within the measurement
    })
    app, base = served.app, served.base
    codes = [s["access_code"] for s in await create_hall(base, EXAM, "fan-out", args.sessions)]
    await asyncio.sleep(0.5)
    gc.collect()
    rss_before = rss_now()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.fanout_cpu", "--hold", base, "--protocol", args.protocol,
        "--dashboards", str(args.dashboards), *(["--acks"] if args.acks else []),
        "--client-read", args.client_read,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24,
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write((json.dumps(codes) + "\n").encode())
    await child.stdin.drain()
    line = await child.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"holder failed: {line!r}")
    await asyncio.sleep(1.0)
    gc.collect()
    rss_kib = (rss_now() - rss_before) / args.sessions / 1024

    runtime = app.state.runtime
    links = runtime.hub.live_candidates()
    served_by = sorted({type(link.conn.websocket._send.__self__).__name__ for link in links})
    print(f"ws {args.ws_impl}: {served_by}, RSS {rss_kib:.2f} KiB per candidate socket",
          flush=True)
    store = runtime.store
    fanout_cpu = [0.0]
    hand_off = store._hand_off  # harness only: time what the store hands to its listeners
    deliver = hand_off._deliver

    perf = PerfControl(args.perf_ctl) if args.perf_ctl else None

    def timed(batch: list[Any]) -> None:
        if perf is not None:
            perf.send("enable")
        started = time.process_time()
        try:
            deliver(batch)
        finally:
            fanout_cpu[0] += time.process_time() - started
            if perf is not None:
                perf.send("disable")

    hand_off._deliver = timed
    timeline = Timeline(runtime) if args.timeline else None
    if timeline is not None:
        timeline.fanout = timed
        hand_off._deliver = timeline.wrap("fan-out", timed)
    staff = Principal(id="bench", name="bench", kind="staff", permissions=ALL_PERMISSIONS)
    rows: list[dict[str, float]] = []
    stats = RedisStats(served.redis.url) if served.redis is not None else None
    profiler = cProfile.Profile() if args.profile else None
    sizes = [int(size) for size in args.commit_chunk.split(",")] if args.commit_chunk else []
    for rep in range(args.repeats):
        action = Action.PAUSE if rep % 2 == 0 else Action.RESUME
        command_id = f"bulk{rep}"
        chunk = sizes[(rep // 2) % len(sizes)] if sizes else None
        if chunk is not None:  # harness only: the store's setting, repeat by repeat
            store._commit_chunk = chunk
        if args.gap and rep:
            # the timeline's record already waited 0.5 s of it
            await asyncio.sleep(max(0.0, args.gap - (0.5 if timeline is not None else 0.0)))
        else:
            await settle(runtime)
        backlog = (await store.outbox_backlog(time.time())).events
        gc.collect()
        fanout_cpu[0] = 0.0
        if profiler is not None and rep >= 2:
            profiler.enable()
        if timeline is not None:
            timeline.start()
        before = await stats.read() if stats is not None else None
        started = time.process_time()
        loop_started = time.thread_time()
        wall = time.perf_counter()
        called_at = time.monotonic()
        result = await runtime.service.command(EXAM, action, Target(all=True), staff,
                                               {"command_id": command_id})
        answer_at = time.monotonic()
        command = time.process_time() - started
        # Redis's figures up to the answer (the bulk commit's, and what little ran beside it)
        answered = await stats.read() if stats is not None else None
        line = await child.stdout.readline()
        total = time.process_time() - started
        loop = time.thread_time() - loop_started
        last_ms = 1000 * (time.perf_counter() - wall)
        if profiler is not None:
            profiler.disable()
        parts = line.decode().split(" ", 3)
        if parts[:2] != ["done", command_id] or len(result.applied) != args.sessions:
            raise RuntimeError(f"repeat {rep}: {line!r}, applied {len(result.applied)}")
        deltas = json.loads(parts[2]).get(command_id, 0)
        times = json.loads(parts[3])
        row: dict[str, float] = {
            "answer_ms": 1000 * (answer_at - called_at),
            "first_frame_ms": 1000 * (times["first"] - called_at),
            "last_frame_ms": 1000 * (times["last"] - called_at),
        }
        if stats is not None and before is not None and answered is not None:
            row.update(stats.since(before, answered))
        if timeline is not None:
            written = timeline.fanout_end()
            drain_loop, drain_steps, drain_sql = timeline.in_window(written)
            row.update({"drain_loop_ms": 1000 * drain_loop, "drain_sql_ms": 1000 * drain_sql})
            await asyncio.sleep(0.5)  # what follows the last frame, for the record
            timeline.report(rep, answer_at, json.loads(parts[3]))
            print(f"  the drainer from the call to the server's last frame written "
                  f"({1000 * (written - timeline.t0):.1f} ms): {drain_steps} "
                  f"stretches on the loop, {1000 * drain_loop:.1f} ms CPU; its SQL thread "
                  f"{1000 * drain_sql:.1f} ms CPU", flush=True)
        rows.append({"command_ms": 1000 * command, "fanout_ms": 1000 * fanout_cpu[0],
                     "total_ms": 1000 * total, "loop_ms": 1000 * loop, "last_ms": last_ms,
                     "backlog": backlog, "deltas": deltas, **row,
                     **({"chunk": chunk} if chunk is not None else {})})
        redis_text = (f"; Redis: {row['evalsha_calls']:.0f} EVALSHA {row['evalsha_ms']:.1f} ms, "
                      f"CPU {row['redis_cpu_ms']:.1f} ms" if "evalsha_ms" in row else "")
        chunk_text = f" [chunk {chunk}]" if chunk is not None else ""
        print(f"{action.value:>6} {command_id}{chunk_text}: command {1000 * command:6.1f} ms, "
              f"fan-out {1000 * fanout_cpu[0]:6.1f} ms, total {1000 * total:6.1f} ms CPU (loop "
              f"{1000 * loop:6.1f} ms); backlog {backlog} events; last "
              f"{last_ms:6.1f} ms; answer {row['answer_ms']:.1f}, first frame "
              f"{row['first_frame_ms']:.1f}, last frame {row['last_frame_ms']:.1f} ms"
              f"{redis_text}", flush=True)
    if profiler is not None:
        profiler.dump_stats(args.profile)
    floor = await write_floor(runtime.hub, args.sessions) if args.floor else None
    child.stdin.close()
    child.kill()
    await child.wait()
    await served.stop()
    measured = rows[1:] if len(rows) > 1 else rows  # the first warms caches up
    fanout = statistics.median(r["fanout_ms"] for r in measured)
    keys = ("command_ms", "fanout_ms", "total_ms", "loop_ms", "last_ms", "answer_ms",
            "first_frame_ms", "last_frame_ms", "evalsha_calls", "evalsha_ms", "redis_cpu_ms",
            "drain_loop_ms", "drain_sql_ms")
    by_chunk = {
        str(size): {f"{key}_p50": round(statistics.median(r[key] for r in of_size), 2)
                    for key in keys if key in of_size[0]} | {"repeats": len(of_size)}
        for size in sizes
        if (of_size := [r for r in measured if r.get("chunk") == size])
    }
    return {
        "fanout_us_per_frame": round(1000 * fanout / args.sessions, 2),
        "sessions": args.sessions, "protocol": args.protocol, "dashboards": args.dashboards,
        "ws_impl": args.ws_impl, "served_by": ",".join(served_by),
        "rss_kib_per_conn": round(rss_kib, 2),
        "repeats": len(measured), "floor_ms": floor,
        "drain_held_s": round(runtime.drainer.held, 3), "drain_holds": runtime.drainer.holds,
        **{f"{key}_p50": round(statistics.median(r[key] for r in measured), 2)
           for key in keys if key in measured[0]},
        **({"by_chunk": by_chunk} if by_chunk else {}),
    }


class RedisStats:
    """The private Redis's own figures around a repeat: `INFO commandstats` (EVALSHA calls
    and their usec: the scripts' run time inside Redis, every script) and `INFO cpu` (the
    server's user + system CPU)."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self.client = Redis.from_url(url)

    async def read(self) -> dict[str, float]:
        commands = await self.client.info("commandstats")
        cpu = await self.client.info("cpu")
        evalsha = commands.get("cmdstat_evalsha") or {}
        return {"calls": float(evalsha.get("calls", 0)), "usec": float(evalsha.get("usec", 0)),
                "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}

    @staticmethod
    def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {"evalsha_calls": after["calls"] - before["calls"],
                "evalsha_ms": (after["usec"] - before["usec"]) / 1000,
                "redis_cpu_ms": 1000 * (after["cpu"] - before["cpu"])}


async def settle(runtime: Any) -> None:
    """Before a repeat: until what the last one committed is in SQL (at most 30 s), then 0.3 s
    for the rest (acks, collections). The drainer's write of 5,000 rows took longer than a
    fixed 0.3 s on a loaded machine, and its CPU (and its stretches on the loop) then counted
    in the next command's."""
    await asyncio.sleep(0.3)
    await runtime.drainer.catch_up(EXAM, timeout=30.0)
    await asyncio.sleep(0.3)


class Timeline:
    """Harness only: wraps the server's parts that run between a bulk command's call and its
    last candidate's frame, and records when each ran (`time.monotonic`, comparable with the
    child's clock) and its CPU (`time.thread_time`)."""

    def __init__(self, runtime: Any) -> None:
        self.rows: list[tuple[str, float, float, float]] = []  # name, start, end, cpu
        self.on = False
        self.fanout: Any = None
        store, drainer, hub = runtime.store, runtime.drainer, runtime.hub
        hub.flush = self.wrap("dashboard batch", hub.flush)
        # the drainer's own stretches on the loop (claim, write, ack: between two awaits) and
        # its SQL thread's calls, each (start, CPU), to count what fell in a repeat's window
        self.drain_steps: list[tuple[float, float]] = []
        self.sql_calls: list[tuple[float, float]] = []
        for name in ("outbox_claim", "outbox_ack"):
            timed = self.wrap_async(f"drain: {name[7:]}", getattr(store, name))
            setattr(store, name, functools.partial(self._stepped, timed))
        write = self.wrap_async("drain: SQL write", drainer.write)
        self._time_sql_thread()

        async def stepped_write(*args: Any, **kwargs: Any) -> Any:
            steps = _Steps(write(*args, **kwargs), self.drain_steps)
            start = time.monotonic()
            try:
                return await steps
            finally:
                if self.on:  # its own CPU, and its longest stretch between two awaits
                    self.rows.append((f"drain: SQL write: {steps.count} stretches, own CPU "
                                      f"{1000 * steps.own:.1f} ms, longest", start,
                                      time.monotonic(), steps.longest))

        drainer.write = stepped_write
        batcher = runtime.service.batcher
        store_commit = store.commit

        async def commit(commits: list[Any]) -> Any:
            return await self.wrap_async(f"store commit x{len(commits)}", store_commit)(commits)

        batcher.store = _Proxy(store, commit=commit)
        if hasattr(store, "_deliver"):
            store._deliver = self.wrap_async("echo: dispatch", store._deliver)
        import realtime.bulk  # the drainer's waits for a bulk command (the GC policy's too)

        realtime.bulk.after_bulk_changes = self.wrap_async(  # type: ignore[assignment]
            "drain: gives way", realtime.bulk.after_bulk_changes)
        gc.callbacks.append(self._gc)
        self._gc_start = (0.0, 0.0)

    async def _stepped(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await _Steps(fn(*args, **kwargs), self.drain_steps)

    def _time_sql_thread(self) -> None:
        """Every call aiosqlite runs in its connection's thread: its start and that thread's
        CPU (SQLite's work, outside the event loop's thread)."""
        from aiosqlite.core import Connection

        execute, calls = Connection._execute, self.sql_calls

        async def timed_execute(conn: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            def timed(*a: Any, **k: Any) -> Any:
                start, cpu = time.monotonic(), time.thread_time()
                try:
                    return fn(*a, **k)
                finally:
                    calls.append((start, time.thread_time() - cpu))
            return await execute(conn, timed, *args, **kwargs)

        Connection._execute = timed_execute  # type: ignore[method-assign]

    def fanout_end(self) -> float:
        """When the server wrote this repeat's last frame: the end of its longest hand-off
        or echo dispatch (whichever wrote the frames)."""
        rows = [row for row in self.rows if row[0] in ("fan-out", "echo: dispatch")]
        return max(rows, key=lambda row: row[3])[2] if rows else time.monotonic()

    def in_window(self, end: float) -> tuple[float, int, float]:
        """The drainer's CPU on the loop (and its stretches), and its SQL thread's, from the
        call to `end`."""
        steps = [cpu for start, cpu in self.drain_steps if self.t0 <= start < end]
        sql = sum(cpu for start, cpu in self.sql_calls if self.t0 <= start < end)
        return sum(steps), len(steps), sql

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = (time.monotonic(), time.thread_time())
        elif self.on:
            self.rows.append((f"gc gen{info['generation']}", self._gc_start[0], time.monotonic(),
                              time.thread_time() - self._gc_start[1]))

    def wrap(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.monotonic(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.on:
                    self.rows.append((name, start, time.monotonic(), time.thread_time() - cpu))
        return timed

    def wrap_async(self, name: str, fn: Any) -> Any:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            # CPU: the loop thread's, meanwhile (only this call's if it never waits)
            start, cpu = time.monotonic(), time.thread_time()
            try:
                return await fn(*args, **kwargs)
            finally:
                if self.on:
                    self.rows.append((name, start, time.monotonic(), time.thread_time() - cpu))
        return timed

    def start(self) -> None:
        self.rows = []
        self.on = True
        self.t0 = time.monotonic()
        self.cpu0 = time.thread_time()

    def report(self, rep: int, answer_at: float, child: dict[str, float]) -> None:
        self.on = False
        t0 = self.t0
        last = child["last"]
        print(f"  timeline {rep}: answer {1000 * (answer_at - t0):.1f}, first frame "
              f"{1000 * (child['first'] - t0):.1f}, last frame read "
              f"{1000 * (child['last_read'] - t0):.1f}, parsed {1000 * (last - t0):.1f} ms; "
              f"the child's CPU from the first frame to the last parsed "
              f"{1000 * child['cpu']:.1f} ms")
        for name, start, end, cpu in sorted(self.rows, key=lambda r: r[1]):
            mark = "*" if start < last else " "
            cpu_text = f" cpu {1000 * cpu:6.1f}"
            print(f"  {mark} {1000 * (start - t0):7.1f} .. {1000 * (end - t0):7.1f} ms "
                  f"{name}{cpu_text}")


class _Steps:
    """Drives a coroutine step by step and times each step's CPU: a step is a stretch the
    coroutine holds the loop for, between two suspensions."""

    def __init__(self, coro: Any, steps: list[tuple[float, float]] | None = None) -> None:
        self.coro, self.count, self.own, self.longest = coro, 0, 0.0, 0.0
        self.steps = steps  # each step's (start, CPU), if given

    def __await__(self) -> Any:
        value: Any = None
        error: BaseException | None = None
        while True:
            start, cpu = time.monotonic(), time.thread_time()
            try:
                sent = self.coro.throw(error) if error is not None else self.coro.send(value)
            except StopIteration as stop:
                return stop.value
            finally:
                took = time.thread_time() - cpu
                if self.steps is not None:
                    self.steps.append((start, took))
                self.count += 1
                self.own += took
                self.longest = max(self.longest, took)
            try:
                value, error = (yield sent), None
            except BaseException as exc:  # handed to the coroutine
                value, error = None, exc


class _Proxy:
    def __init__(self, target: Any, **overrides: Any) -> None:
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def rss_now() -> int:
    """This process's resident set, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _drive(coro: Any) -> None:
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("a send waited")


async def write_floor(hub: Any, sessions: int) -> float:
    """CPU of writing one small message to each candidate socket through each layer of the
    send path, the bottom one a bare `transport.write` (the client ignores the message)."""
    import msgpack

    from realtime.channels.codec import Encoded

    message = {"type": "noop", "x": "y" * 100}
    payload = msgpack.packb(message)
    frame = bytes([0x82, len(payload)]) + payload
    links = hub.live_candidates()
    layers = {
        "transport.write": lambda link: link.conn.transport.write(frame),
        "asgi send": lambda link: _drive(link.conn.websocket._send(
            {"type": "websocket.send", "bytes": payload})),
        "starlette send_bytes": lambda link: _drive(link.conn.websocket.send_bytes(payload)),
        "Connection.send_encoded": lambda link: link.conn.send_encoded(Encoded(message)),
    }
    floor = 0.0
    for name, write in layers.items():
        samples = []
        for _ in range(5):
            await asyncio.sleep(0.3)
            started = time.process_time()
            for link in links:
                write(link)
            samples.append(1000 * (time.process_time() - started))
        print(f"{name:>24} x {len(links)}: {sorted(round(s, 1) for s in samples)} ms CPU",
              flush=True)
        floor = floor or statistics.median(samples)
    return round(floor, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--protocol", default=MSGPACK)
    parser.add_argument("--dashboards", type=int, default=1)
    parser.add_argument("--acks", action="store_true")
    parser.add_argument("--store", choices=["memory", "redis"], default="memory")
    parser.add_argument("--timeline", action="store_true",
                        help="print, per repeat, what ran on the loop from the call until "
                        "0.5 s after the last candidate had its frame")
    parser.add_argument("--floor", action="store_true",
                        help="also time bare transport writes to every socket")
    parser.add_argument("--profile", default="", help="write a cProfile of repeats 3+ here")
    parser.add_argument("--ws-impl", default=os.environ.get("REALTIME_WS_IMPL") or WS_IMPLS[0],
                        choices=WS_IMPLS,
                        help="uvicorn's WebSocket implementation (its `ws` setting; default "
                        "`realtime serve`'s)")
    parser.add_argument("--gap", type=float, default=0.0,
                        help="start each repeat this many seconds after the last one's last "
                        "frame (the benchmark's --pause-gap) instead of once its events are "
                        "in SQL")
    parser.add_argument("--drain-hold", type=float, default=None,
                        help="seconds a drain round gives way at most to bulk commands "
                        "(realtime.drainer.HOLD_MAX; 0: never, as before it)")
    parser.add_argument("--hold-linger", type=float, default=None,
                        help="... and for how long after one (realtime.drainer.HOLD_LINGER)")
    parser.add_argument("--write-slice", type=int, default=0,
                        help="rows per statement of the drainer's SQL write (0: the default)")
    parser.add_argument("--client-read", choices=READ_MODES, default="inline",
                        help="the child's reading (loadtests.wsclient): inline (default) or "
                        "read-first; the timeline shows when the last frame was read and "
                        "when parsed either way")
    parser.add_argument("--perf-ctl", default="", metavar="CTL,ACK",
                        help="perf record's control FIFOs (`perf record -D -1 --control "
                        "fifo:CTL,ACK`): sampling is switched on around each hand-off only")
    parser.add_argument("--commit-chunk", default="", metavar="N[,M...]",
                        help="Redis: the store's commit chunk size (0: one script call), "
                        "several alternated every two repeats (default: the server's)")
    parser.add_argument("--hold", default="", help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args(argv)
    raise_nofile()
    import uvloop

    if args.hold:
        codes = json.loads(sys.stdin.readline())
        uvloop.run(hold(args.hold, args.protocol, codes, args.dashboards, args.acks,
                        args.client_read))
        return 0
    if args.drain_hold is not None or args.hold_linger is not None:
        import realtime.drainer

        if args.drain_hold is not None:
            realtime.drainer.HOLD_MAX = args.drain_hold
        if args.hold_linger is not None:
            realtime.drainer.HOLD_LINGER = args.hold_linger
    if args.write_slice:
        import realtime.db.database

        realtime.db.database.WRITE_SLICE = args.write_slice
    summary = uvloop.run(serve_and_measure(args))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
