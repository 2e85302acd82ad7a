"""Where a server's latency tail comes from: a `--launcher` for `loadtests.bench` (measuring).

    python -m loadtests.bench --configs redis:1 --no-peer --phases throughput --rates 200,1000 \
        --sizes 5000 --launcher loadtests/loop_tail.py
    REALTIME_LOOP_TAIL=/tmp/tail.json ...   (where the figures go; default loop-tail-<pid>.json)
    REALTIME_LOOP_TAIL_TREE=/other/checkout ...   (the server runs that checkout's code)

Runs uvicorn as `python -m uvicorn` would, with two things timed in the server process:

- every event-loop callback (`asyncio.Handle._run`): thread CPU and wall time, by owner (the
  task's name and coroutine, or the callback's name). Per owner: count, total CPU, and how many
  callbacks held the loop over 5 / 20 / 50 ms, with the longest. CPU time of the loop thread is
  what a busy machine barely moves: a callback that burns 40 ms of CPU held the loop that long
  whoever else ran.
- every `RedisStore` coroutine method: calls, total and longest wall time, by method.

And, when it stops, Redis's own view (the store's Redis): `INFO commandstats` and the slow log
(commands over 1 ms, set at start), the scripts named by their SHA, so a long Lua script (one
that holds Redis, and every command round trip queued behind it) shows up by name.
And, on any loop (uvloop too), what is known to hold the loop for a while, each with its
epoch start, thread CPU and wall time, so the slowest deliveries can be matched to them
(`--explain`, below):

- every garbage collection over 1 ms (`gc.callbacks`), the GC policy's passes marked;
- every stretch over 1 ms of CPU (a run between two suspensions) of the drainer's rounds
  (`Drainer.drain_exam`), the echo's dispatch (`RedisStore._deliver`), and every call over
  1 ms of the dashboard batches (`Hub.flush`) and the heartbeat's tick (`Heartbeat.tick`).

    python loadtests/loop_tail.py --explain /tmp/tail.json /tmp/deliveries.log [--share 0.01]

reads a run's figures and its `BENCH_DELIVERY_LOG` (each delivery with its send time), and
says, per rate step, for the slowest `--share` of deliveries, which of those overlapped each
delivery's window (from its send to its arrival), and how the rest of the step compares.

For bulk commands ("pause all"), each call of the service's command with a filter target is
noted (its epoch and how long it took to answer), the hand-off of a commit's events to the
listeners (the fan-out) is a stretch like the echo's dispatch, and every call the SQL driver
runs in its own thread (aiosqlite: SQLite's work, outside the event loop) is timed with that
thread's CPU. Then

    python loadtests/loop_tail.py --bulk /tmp/tail.json

says, per bulk command, what ran from its call until its fan-out had written the last frame:
CPU of the SQL driver's thread, of the drainer's rounds, of garbage collections and of the
fan-out itself (what the command overlapped, and its own fan-out).
Nothing here changes what the server does; the timing itself costs a few percent of CPU.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import json
import os
import sys
import time
from collections import defaultdict
from typing import Any

THRESHOLDS = (0.005, 0.020, 0.050)


class _Owner:
    __slots__ = ("count", "cpu", "longest", "longest_wall", "over", "wall")

    def __init__(self) -> None:
        self.count = 0
        self.cpu = 0.0
        self.wall = 0.0
        self.over = [0, 0, 0]
        self.longest = 0.0
        self.longest_wall = 0.0


_callbacks: dict[str, _Owner] = defaultdict(_Owner)
_redis: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # calls, total, longest
_started = time.monotonic()
_long: list[tuple[float, str, float, float]] = []  # (epoch, owner, cpu ms, wall ms) over 5 ms
# (epoch start, what, cpu ms, wall ms) of collections and known stretches over 1 ms
_stretches: list[tuple[float, str, float, float]] = []
STRETCH_MIN = 0.001
_bulk: list[tuple[float, float]] = []  # (epoch, seconds to answer) of each bulk command
_sql: list[tuple[float, float]] = []  # (epoch, thread CPU ms) of each call in the SQL thread


def _owner(handle: asyncio.Handle) -> str:
    callback = handle._callback  # type: ignore[attr-defined]
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", type(coro).__name__)
        task_name = task.get_name()
        if task_name.startswith("Task-"):
            task_name = "Task"
        return f"task {task_name}: {name}"
    name = getattr(callback, "__qualname__", None) or repr(callback)
    return f"callback {name}"


def _install_loop_timer() -> None:
    run = asyncio.events.Handle._run
    thread_time, perf = time.thread_time, time.perf_counter

    def timed_run(self: asyncio.Handle) -> None:
        c0, w0 = thread_time(), perf()
        try:
            run(self)
        finally:
            cpu, wall = thread_time() - c0, perf() - w0
            owner = _callbacks[_owner(self)]
            owner.count += 1
            owner.cpu += cpu
            owner.wall += wall
            for k, limit in enumerate(THRESHOLDS):
                if cpu > limit:
                    owner.over[k] += 1
            if (cpu > THRESHOLDS[0] or wall > THRESHOLDS[1]) and len(_long) < 100_000:
                _long.append((time.time(), _owner(self), round(1000 * cpu, 1),
                              round(1000 * wall, 1)))
            owner.longest = max(owner.longest, cpu)
            owner.longest_wall = max(owner.longest_wall, wall)

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]


def _note(started: float, what: str, cpu: float, wall: float) -> None:
    if (cpu >= STRETCH_MIN or wall >= 5 * STRETCH_MIN) and len(_stretches) < 500_000:
        _stretches.append((round(started, 4), what, round(1000 * cpu, 2), round(1000 * wall, 2)))


def _install_gc_timer() -> None:
    import gc

    from realtime import gcpolicy

    state = {"cpu": 0.0, "wall": 0.0, "epoch": 0.0, "pass": False}
    thread_time, perf = time.thread_time, time.perf_counter

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            state["cpu"], state["wall"], state["epoch"] = thread_time(), perf(), time.time()
            return
        kind = "gc pass" if state["pass"] else f"gc gen{info.get('generation', '?')}"
        _note(state["epoch"], kind, thread_time() - state["cpu"], perf() - state["wall"])

    collect_and_freeze = gcpolicy.collect_and_freeze

    def marked() -> int:
        state["pass"] = True
        try:
            return collect_and_freeze()
        finally:
            state["pass"] = False

    gcpolicy.collect_and_freeze = marked
    gc.callbacks.append(on_gc)


class _Stepped:
    """Drives a coroutine, noting each of its stretches (between two suspensions)."""

    def __init__(self, coro: Any, what: str) -> None:
        self.coro, self.what = coro, what

    def __await__(self) -> Any:
        value: Any = None
        error: BaseException | None = None
        while True:
            epoch, cpu, wall = time.time(), time.thread_time(), time.perf_counter()
            try:
                sent = self.coro.throw(error) if error is not None else self.coro.send(value)
            except StopIteration as stop:
                return stop.value
            finally:
                _note(epoch, self.what, time.thread_time() - cpu, time.perf_counter() - wall)
            try:
                value, error = (yield sent), None
            except BaseException as exc:  # handed to the coroutine
                value, error = None, exc


def _install_stretch_timer() -> None:
    from realtime.drainer import Drainer
    from realtime.hub.hub import Heartbeat, Hub
    from realtime.state.redis import RedisStore

    def stepped(owner: Any, name: str, what: str) -> None:
        method = getattr(owner, name)

        @functools.wraps(method)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            return await _Stepped(method(*args, **kwargs), what)

        setattr(owner, name, timed)

    def timed_call(owner: Any, name: str, what: str) -> None:
        method = getattr(owner, name)

        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            epoch, cpu, wall = time.time(), time.thread_time(), time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                _note(epoch, what, time.thread_time() - cpu, time.perf_counter() - wall)

        setattr(owner, name, timed)

    from realtime.sessions import SessionService
    from realtime.state.handoff import HandOff

    stepped(Drainer, "drain_exam", "drainer round")
    stepped(RedisStore, "_deliver", "echo dispatch")
    timed_call(HandOff, "_drain", "hand-off")
    command = SessionService.command

    @functools.wraps(command)
    async def bulk_command(self: Any, exam_id: str, action: Any, target: Any,
                           *args: Any, **kwargs: Any) -> Any:
        epoch, wall = time.time(), time.perf_counter()
        try:
            return await command(self, exam_id, action, target, *args, **kwargs)
        finally:
            if target.is_filter and len(_bulk) < 100_000:
                _bulk.append((epoch, time.perf_counter() - wall))

    SessionService.command = bulk_command  # type: ignore[method-assign]
    timed_call(Hub, "flush", "dashboard batch")
    timed_call(Heartbeat, "tick", "heartbeat tick")


def _install_sql_thread_timer() -> None:
    """Every call aiosqlite runs in its connection's thread, with that thread's CPU."""
    try:
        from aiosqlite.core import Connection
    except ImportError:
        return
    execute = Connection._execute
    thread_time = time.thread_time

    async def timed_execute(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def timed(*a: Any, **k: Any) -> Any:
            epoch, cpu = time.time(), thread_time()
            try:
                return fn(*a, **k)
            finally:
                if len(_sql) < 2_000_000:
                    _sql.append((round(epoch, 4), round(1000 * (thread_time() - cpu), 3)))
        return await execute(self, timed, *args, **kwargs)

    Connection._execute = timed_execute  # type: ignore[method-assign]


def _install_store_timer() -> None:
    from realtime.state.redis import RedisStore

    for name, method in list(vars(RedisStore).items()):
        if not inspect.iscoroutinefunction(method) or name.startswith("__"):
            continue

        def wrap(method: Any, name: str) -> Any:
            @functools.wraps(method)
            async def timed(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await method(*args, **kwargs)
                finally:
                    took = time.perf_counter() - started
                    key = name
                    if name == "snapshot":  # which one: every field, or a few
                        fields = args[2] if len(args) > 2 else kwargs.get("fields")
                        key = f"snapshot({len(fields or ())} fields)"
                    stat = _redis[key]
                    stat[0] += 1
                    stat[1] += took
                    stat[2] = max(stat[2], took)
            return timed

        setattr(RedisStore, name, wrap(method, name))


def _redis_view() -> dict[str, Any]:
    url = os.environ.get("REALTIME_REDIS_URL", "")
    if not url.startswith("redis://"):
        return {}
    import redis

    from realtime.state import redis as store_module

    client = redis.Redis.from_url(url)
    scripts = {}
    lua = os.path.join(os.path.dirname(store_module.__file__), "lua")
    import hashlib
    for file in os.listdir(lua):
        with open(os.path.join(lua, file), "rb") as f:
            scripts[hashlib.sha1(f.read()).hexdigest()] = file  # Redis's script id
    stats = client.info("commandstats")
    slow: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    slow_entries = []
    for entry in client.slowlog_get(100_000):
        command = [c.decode(errors="replace") if isinstance(c, bytes) else str(c)
                   for c in entry["command"].split()[:2]] if isinstance(entry["command"], bytes) \
            else [str(entry["command"])]
        name = command[0].upper()
        if name == "EVALSHA" and len(command) > 1:
            name = scripts.get(command[1].lower(), command[1])
            if name == "snapshot.lua":
                name += f" ({len(entry['command'].split()) - 6} fields)"
        slow_entries.append((entry["start_time"], name, entry["duration"] / 1000))
        stat = slow[name]
        stat[0] += 1
        stat[1] += entry["duration"] / 1000
        stat[2] = max(stat[2], entry["duration"] / 1000)
    return {
        "commandstats": {k: {"calls": v["calls"], "usec_per_call": v["usec_per_call"]}
                         for k, v in stats.items()},
        "slowlog_over_1ms": {k: {"count": int(v[0]), "total_ms": round(v[1], 1),
                                 "max_ms": round(v[2], 1)} for k, v in slow.items()},
        "slowlog": sorted(slow_entries),
    }


def _reset_redis() -> None:
    url = os.environ.get("REALTIME_REDIS_URL", "")
    if not url.startswith("redis://"):
        return
    import redis
    client = redis.Redis.from_url(url)
    client.config_set("slowlog-log-slower-than", 1000)
    client.config_set("slowlog-max-len", 100_000)
    client.slowlog_reset()
    client.config_resetstat()


def _dump() -> None:
    seconds = time.monotonic() - _started
    owners = sorted(_callbacks.items(), key=lambda kv: -kv[1].cpu)
    report: dict[str, Any] = {
        "seconds": round(seconds, 1),
        "loop_cpu_s": round(sum(o.cpu for o in _callbacks.values()), 2),
        "callbacks": [
            {"owner": name, "count": o.count, "cpu_s": round(o.cpu, 3),
             "over_5ms": o.over[0], "over_20ms": o.over[1], "over_50ms": o.over[2],
             "longest_cpu_ms": round(1000 * o.longest, 1),
             "longest_wall_ms": round(1000 * o.longest_wall, 1)}
            for name, o in owners[:40]
        ],
        "store_calls": {name: {"calls": int(s[0]), "total_s": round(s[1], 3),
                               "max_ms": round(1000 * s[2], 1)}
                        for name, s in sorted(_redis.items(), key=lambda kv: -kv[1][1])},
        "long_callbacks": _long,
        "stretches": _stretches,
        "bulk_commands": _bulk,
        "sql_thread": _sql,
    }
    try:
        report["redis"] = _redis_view()
    except Exception as exc:  # the report is still worth having
        report["redis"] = {"error": repr(exc)}
    path = os.environ.get("REALTIME_LOOP_TAIL") or f"loop-tail-{os.getpid()}.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)


def explain(tail_path: str, log_path: str, share: float = 0.01) -> str:
    """Per rate step of the delivery log: for its slowest `share` of deliveries, which kinds
    of stretch overlapped their windows (send to arrival), against all its deliveries."""
    import bisect

    with open(tail_path, encoding="utf-8") as f:
        stretches = sorted(tuple(row) for row in json.load(f).get("stretches", []))
    starts = [row[0] for row in stretches]
    longest_wall = max((row[3] for row in stretches), default=0.0) / 1000
    steps: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                steps[parts[0].split("-")[0]].append((float(parts[1]), float(parts[2])))

    def overlapping(sent: float, took: float) -> list[tuple[float, str, float, float]]:
        lo = bisect.bisect_left(starts, sent - longest_wall)
        hi = bisect.bisect_right(starts, sent + took)
        return [row for row in stretches[lo:hi] if row[0] + row[3] / 1000 > sent]

    lines = []
    for tag, rows in steps.items():
        rows.sort(key=lambda row: -row[1])
        slow = rows[:max(1, int(len(rows) * share))]
        lines.append(f"{tag}: {len(rows)} deliveries, the slowest {len(slow)} took "
                     f"{1000 * slow[-1][1]:.1f}-{1000 * slow[0][1]:.1f} ms")

        def kinds(selection: list[tuple[float, float]]) -> dict[str, tuple[int, float]]:
            hits: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
            for sent, took in selection:
                seen: dict[str, float] = defaultdict(float)
                for _start, what, cpu, _wall in overlapping(sent, took):
                    seen[what] += cpu
                for what, cpu in seen.items():
                    hits[what][0] += 1
                    hits[what][1] += cpu
            return {k: (int(v[0]), v[1]) for k, v in hits.items()}

        slow_kinds, all_kinds = kinds(slow), kinds(rows)
        for what in sorted(set(slow_kinds) | set(all_kinds),
                           key=lambda k: -slow_kinds.get(k, (0, 0.0))[0]):
            n, cpu = slow_kinds.get(what, (0, 0.0))
            m, _ = all_kinds.get(what, (0, 0.0))
            lines.append(f"  {what:16} in {100 * n / len(slow):5.1f} % of the slowest "
                         f"({cpu / max(1, n):5.1f} ms CPU each), {100 * m / len(rows):5.1f} % "
                         f"of all")
        for sent, took in slow[:8]:
            parts = [f"{what} +{1000 * (start - sent):.0f} ms {cpu:.1f}/{wall:.1f}"
                     for start, what, cpu, wall in overlapping(sent, took)
                     if cpu >= 2 or wall >= 5]
            lines.append(f"  {1000 * took:6.1f} ms at {sent:.3f}: " + "; ".join(parts))
    return "\n".join(lines)


def bulk(tail_path: str) -> str:
    """Per bulk command of a run: what ran from its call until its fan-out ended."""
    with open(tail_path, encoding="utf-8") as f:
        report = json.load(f)
    stretches = sorted(tuple(row) for row in report.get("stretches", []))
    sql = sorted(tuple(row) for row in report.get("sql_thread", []))
    lines = ["call (epoch)  answer  fan-out end  | CPU ms in the window: SQL thread, drainer "
             "rounds, GC, fan-out"]
    for epoch, answer in sorted(tuple(row) for row in report.get("bulk_commands", [])):
        # the fan-out: the first hand-off or echo dispatch of 20 ms or more after the answer
        fanouts = [row for row in stretches if row[1] in ("hand-off", "echo dispatch")
                   and row[2] >= 20 and row[0] >= epoch + answer - 0.005]
        if not fanouts:
            continue
        end = fanouts[0][0] + fanouts[0][3] / 1000
        inside = [row for row in stretches if epoch <= row[0] < end]

        def cpu(kinds: tuple[str, ...], rows: list[tuple[Any, ...]] = inside) -> float:
            return sum(row[2] for row in rows if row[1].startswith(kinds))

        sql_cpu = sum(ms for at, ms in sql if epoch <= at < end)
        lines.append(f"{epoch:.3f} {1000 * answer:7.1f} {1000 * (end - epoch):8.1f} ms | "
                     f"{sql_cpu:7.1f} {cpu(('drainer',)):7.1f} {cpu(('gc',)):7.1f} "
                     f"{cpu(('hand-off', 'echo')):7.1f}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--bulk":
        print(bulk(sys.argv[2]))
        return
    if len(sys.argv) >= 4 and sys.argv[1] == "--explain":
        share = float(sys.argv[sys.argv.index("--share") + 1]) if "--share" in sys.argv else 0.01
        print(explain(sys.argv[2], sys.argv[3], share))
        return
    if os.environ.get("REALTIME_LOOP_TAIL_TREE"):  # the server's code from another checkout
        sys.path.insert(0, os.environ["REALTIME_LOOP_TAIL_TREE"])
    _install_loop_timer()  # times nothing on uvloop (see REALTIME_LOOP_TAIL_CALLBACKS)
    _install_store_timer()  # (before the stretch timer: `_deliver` is timed by it too)
    _install_gc_timer()
    _install_stretch_timer()
    _install_sql_thread_timer()
    with contextlib.suppress(Exception):  # measuring only: the server runs regardless
        _reset_redis()
    atexit.register(_dump)
    import uvicorn.main

    sys.argv[0] = "uvicorn"
    if os.environ.get("REALTIME_LOOP_TAIL_CALLBACKS"):
        # uvloop's handles cannot be timed from Python: this run is on asyncio's loop (slower:
        # use it to attribute loop CPU, not for latency figures)
        sys.argv += ["--loop", "asyncio"]
    uvicorn.main.main()


if __name__ == "__main__":
    main()
