"""Long synchronous stretches on the server's event loop, in-process, with real sockets.

    python -m loadtests.loop_stalls --sessions 5000 --rate 300 --seconds 30
    python -m loadtests.loop_stalls --sessions 5000 --store memory --json out.json

The server (a private Redis, or the memory store; SQLite) runs in this process under uvicorn,
on asyncio's own event loop (not uvloop: its callbacks cannot be timed from Python). A child
process holds the candidate sockets and one dashboard, answers pings, acks commands, and sends
targeted REST commands (pause/resume of one candidate, with a `command_id`) at `--rate` for
`--seconds`; it times each from the request to the candidate's frame (wall clock, secondary).

While the commands flow, every callback the loop runs and every loop iteration is timed with
`time.thread_time()`: CPU of the loop's thread only, so the rest of a shared machine barely
moves the figures (a stretch that is long because the process was not scheduled does not
count; one that is long because it computes does). Every garbage collection is timed the same
way (`gc.callbacks`). The report lists:

* callbacks and iterations taking >= 5 / 20 / 50 ms of CPU, the longest, and their CPU;
* what the long callbacks were (the task's coroutine and where it was resumed, or the
  transport's protocol, or the function), and what ran in the long iterations;
* collections by generation (count, CPU, longest).

A callback is what runs without a break; an iteration is everything the loop runs between two
looks at its sockets: a frame that arrives during one waits for all of it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests.common import MSGPACK, percentile, raise_nofile, ws_url
from loadtests.inprocess import InProcessServer, create_hall, start_in_process
from loadtests.servers import BENCH_STAFF_TOKEN

EXAM = "stalls"
LONG = (0.005, 0.020, 0.050)  # thresholds, seconds of CPU
MAX_RECORDS = 20_000  # long callbacks / iterations / collections kept per run


# -- the meter: CPU per callback, per loop iteration, per collection ---------------------------


def _code_name(code: Any) -> str:
    return str(getattr(code, "co_qualname", None) or getattr(code, "co_name", "?"))


def _innermost(coro: Any) -> Any:
    """The code of the innermost coroutine reachable from `coro` (where it waits)."""
    code = getattr(coro, "cr_code", None)
    for _ in range(32):
        inner = getattr(coro, "cr_await", None)
        if inner is None or getattr(inner, "cr_code", None) is None:
            break
        coro = inner
        code = coro.cr_code
    return code


def handle_key(handle: asyncio.Handle) -> tuple[Any, ...]:
    """Cheap identity of what a handle runs (named only when it turns out long)."""
    callback = handle._callback  # type: ignore[attr-defined]
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return ("task", getattr(coro, "cr_code", None), _innermost(coro))
    if owner is not None and hasattr(owner, "_protocol"):  # a transport's _read_ready & co
        return ("io", type(owner._protocol), getattr(callback, "__func__", callback))
    return ("call", getattr(callback, "__func__", callback))


def key_name(key: tuple[Any, ...]) -> str:
    if key[0] == "task":
        outer, inner = _code_name(key[1]), _code_name(key[2])
        return outer if outer == inner else f"{outer} @ {inner}"
    if key[0] == "io":
        return f"{key[1].__name__}.{getattr(key[2], '__name__', key[2])}"
    func = key[1]
    return getattr(func, "__qualname__", None) or repr(func)[:80]


class LoopMeter:
    def __init__(self) -> None:
        self.on = False
        self.callbacks = 0
        self.callback_cpu = 0.0
        self.iterations = 0
        self.iteration_cpu = 0.0
        self.long_callbacks: list[tuple[float, float, tuple[Any, ...]]] = []
        self.long_iterations: list[tuple[float, float, int, list[tuple[str, float, int]]]] = []
        self.gc_cpu = 0.0
        self.gcs: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._gc_started = 0.0
        self._in_iteration: list[tuple[float, tuple[Any, ...]]] = []
        self.started_cpu = 0.0
        self.started_wall = 0.0
        self.stopped_cpu = 0.0
        self.stopped_wall = 0.0

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self.started_cpu = time.thread_time()
        self.started_wall = time.perf_counter()
        self.on = True

    def stop(self) -> None:
        self.on = False
        self.stopped_cpu = time.thread_time()
        self.stopped_wall = time.perf_counter()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.thread_time()
            return
        spent = time.thread_time() - self._gc_started
        self.gc_cpu += spent
        samples = self.gcs.setdefault(int(info.get("generation", 2)), [])
        if len(samples) < MAX_RECORDS:
            samples.append(spent)

    def install(self) -> Callable[[], None]:
        """Wrap asyncio's `Handle._run` and `BaseEventLoop._run_once`; returns the undo."""
        meter = self
        thread_time = time.thread_time
        handle_run = asyncio.events.Handle._run
        run_once = asyncio.base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]
        first = LONG[0]

        def timed_run(handle: asyncio.Handle) -> None:
            if not meter.on:
                handle_run(handle)
                return
            key = handle_key(handle)
            gc_before = meter.gc_cpu
            started = thread_time()
            handle_run(handle)
            spent = thread_time() - started
            meter.callbacks += 1
            meter.callback_cpu += spent
            meter._in_iteration.append((spent, key))
            if spent >= first and len(meter.long_callbacks) < MAX_RECORDS:
                meter.long_callbacks.append((spent, meter.gc_cpu - gc_before, key))

        def timed_run_once(loop: asyncio.AbstractEventLoop) -> None:
            if not meter.on:
                run_once(loop)
                return
            meter._in_iteration = []
            gc_before = meter.gc_cpu
            started = thread_time()
            run_once(loop)
            spent = thread_time() - started
            if not meter.on:  # stopped in this iteration
                return
            meter.iterations += 1
            meter.iteration_cpu += spent
            if spent >= first and len(meter.long_iterations) < MAX_RECORDS:
                parts: dict[tuple[Any, ...], list[float]] = {}
                for cpu, key in meter._in_iteration:
                    parts.setdefault(key, []).append(cpu)
                top = sorted(((key_name(k), sum(v), len(v)) for k, v in parts.items()),
                             key=lambda row: -row[1])[:4]
                meter.long_iterations.append(
                    (spent, meter.gc_cpu - gc_before, len(meter._in_iteration), top))

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign,assignment]
        asyncio.base_events.BaseEventLoop._run_once = timed_run_once  # type: ignore[attr-defined]

        def undo() -> None:
            asyncio.events.Handle._run = handle_run  # type: ignore[method-assign]
            asyncio.base_events.BaseEventLoop._run_once = run_once  # type: ignore[attr-defined]

        return undo

    def report(self) -> dict[str, Any]:
        def counts(values: list[float]) -> dict[str, Any]:
            row: dict[str, Any] = {f"over_{int(t * 1000)}ms": sum(v >= t for v in values)
                                   for t in LONG}
            row["max_ms"] = round(1000 * max(values, default=0.0), 1)
            row["long_cpu_ms"] = round(1000 * sum(v for v in values if v >= LONG[0]), 1)
            return row

        by_what: dict[str, list[float]] = {}
        gc_in: dict[str, float] = {}
        for cpu, gc_cpu, key in self.long_callbacks:
            name = key_name(key)
            by_what.setdefault(name, []).append(cpu)
            gc_in[name] = gc_in.get(name, 0.0) + gc_cpu
        what: list[dict[str, Any]] = sorted(
            ({"what": name, "count": len(v), "cpu_ms": round(1000 * sum(v), 1),
              "max_ms": round(1000 * max(v), 1), "of_which_gc_ms": round(1000 * gc_in[name], 1)}
             for name, v in by_what.items()),
            key=lambda row: -float(row["cpu_ms"]))
        iterations = sorted(self.long_iterations, key=lambda row: -row[0])[:12]
        by_top: dict[str, list[float]] = {}
        for cpu, _, _, top in self.long_iterations:
            by_top.setdefault(top[0][0] if top else "?", []).append(cpu)
        iteration_what: list[dict[str, Any]] = sorted(
            ({"top": name, "count": len(v), "cpu_ms": round(1000 * sum(v), 1),
              "max_ms": round(1000 * max(v), 1)} for name, v in by_top.items()),
            key=lambda row: -float(row["cpu_ms"]))
        seconds = self.stopped_wall - self.started_wall
        return {
            "seconds": round(seconds, 2),
            "loop_thread_cpu_s": round(self.stopped_cpu - self.started_cpu, 3),
            "callbacks": self.callbacks,
            "callback_cpu_s": round(self.callback_cpu, 3),
            "iterations": self.iterations,
            "long_callbacks": counts([row[0] for row in self.long_callbacks]),
            "long_iterations": counts([row[0] for row in self.long_iterations]),
            "long_callbacks_by_what": what[:15],
            "long_iterations_by_top": iteration_what[:15],
            "longest_iterations": [
                {"cpu_ms": round(1000 * cpu, 1), "gc_ms": round(1000 * g, 1), "callbacks": n,
                 "top": [f"{name}: {round(1000 * c, 1)} ms x{k}" for name, c, k in top]}
                for cpu, g, n, top in iterations],
            "gc": {str(gen): {"count": len(v), "cpu_ms": round(1000 * sum(v), 1),
                              "max_ms": round(1000 * max(v, default=0.0), 1),
                              "over_5ms": sum(x >= 0.005 for x in v)}
                   for gen, v in sorted(self.gcs.items())},
            "gc_cpu_ms": round(1000 * self.gc_cpu, 1),
        }


# -- the child: holds the sockets, sends the commands ---------------------------------------------


async def hold(url: str, protocol: str, setup: dict[str, Any]) -> None:
    import httpx

    from loadtests.wsclient import WsPeer, connect, watch_exam

    sessions: list[tuple[str, str]] = setup["sessions"]  # (session id, access code)
    loop = asyncio.get_running_loop()
    arrivals: dict[str, float] = {}
    waiting: dict[WsPeer, asyncio.Future[str]] = {}  # opens not answered yet
    closed = 0

    def on_candidate(peer: WsPeer, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ping":
            peer.send({"type": "pong", "t": message.get("t")})
        elif kind == "command":
            command_id = message.get("command_id", "")
            arrivals.setdefault(command_id, time.perf_counter())
            peer.send({"type": "ack", "command_id": command_id})
        elif kind in ("opened", "refused", "error"):
            answer = waiting.pop(peer, None)
            if answer is not None and not answer.done():
                answer.set_result(kind)
            elif kind != "opened":
                print(f"error {json.dumps(message)}", file=sys.stderr, flush=True)

    def on_close(peer: WsPeer) -> None:
        nonlocal closed
        answer = waiting.pop(peer, None)
        if answer is not None and not answer.done():
            answer.set_result("closed")
        elif not peer.closing:
            closed += 1

    limit = asyncio.Semaphore(100)
    peers: list[WsPeer] = []

    async def one(code: str) -> None:
        """Open like a page: on a refusal (the store busy), wait and try again (5 times)."""
        async with limit:
            for attempt in range(5):
                peer = await connect(ws_url(url, "/ws/candidate"), on_candidate,
                                     protocol=protocol, on_close=on_close, timeout=120)
                answer = waiting[peer] = loop.create_future()
                peer.send({"type": "open", "access_code": code, "client_id": "stalls"})
                if await asyncio.wait_for(answer, 120) == "opened":
                    peers.append(peer)
                    return
                peer.abort()
                await asyncio.sleep(0.5 * (attempt + 1))
            raise RuntimeError(f"could not open {code}")

    await asyncio.gather(*(one(code) for _, code in sessions))
    _dashboard = await watch_exam(ws_url(url, "/ws/proctor"), EXAM, BENCH_STAFF_TOKEN,
                                  protocol=protocol)
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    if (await reader.readline()).strip() != b"go":
        return
    rate, seconds = float(setup["rate"]), float(setup["seconds"])
    count = max(1, min(int(rate * seconds), 1_000_000))
    sent: dict[str, float] = {}
    rest: list[float] = []
    applied = 0
    busy: set[str] = set()
    paused: set[str] = set()
    ids = [sid for sid, _ in sessions]
    rng = random.Random(7)

    in_flight = asyncio.Semaphore(64)  # httpx's pool gets slow with thousands waiting on it

    async def command(http: httpx.AsyncClient, i: int) -> None:
        async with in_flight:
            await command_now(http, i)

    async def command_now(http: httpx.AsyncClient, i: int) -> None:
        nonlocal applied
        sid = rng.choice(ids)
        for _ in range(8):
            if sid not in busy:
                break
            sid = rng.choice(ids)
        else:
            return
        busy.add(sid)
        action = "resume" if sid in paused else "pause"
        command_id = f"s{i}-{uuid.uuid4().hex[:8]}"
        started = sent[command_id] = time.perf_counter()
        try:
            response = await http.post(f"/api/v1/exams/{EXAM}/commands", json={
                "action": action, "target": sid, "command_id": command_id})
            rest.append(time.perf_counter() - started)
            if response.status_code == 200 and response.json().get("applied"):
                applied += 1
                (paused.add if action == "pause" else paused.discard)(sid)
        except httpx.HTTPError as exc:
            print(f"error {exc!r}", file=sys.stderr, flush=True)
        finally:
            busy.discard(sid)

    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 headers={"Authorization": f"Bearer {BENCH_STAFF_TOKEN}"},
                                 limits=httpx.Limits(max_connections=64)) as http:
        tasks = []
        cpu = time.process_time()
        started = time.perf_counter()
        for i in range(count):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(command(http, i)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        for _ in range(50):  # the last frames (bounded: 5 s)
            if all(cid in arrivals for cid in sent):
                break
            await asyncio.sleep(0.1)
    delivery = [arrivals[cid] - t for cid, t in sent.items() if cid in arrivals]
    summary = {
        "sent": len(sent), "applied": applied, "received": len(delivery),
        "sent_per_s": round(len(sent) / elapsed, 1), "closed_by_server": closed,
        "client_cpu_s": round(time.process_time() - cpu, 2),
        **{f"delivery_{name}_ms": round(1000 * (percentile(delivery, p) or 0.0), 1)
           for name, p in (("p50", 50), ("p99", 99), ("max", 100))},
        **{f"rest_{name}_ms": round(1000 * (percentile(rest, p) or 0.0), 1)
           for name, p in (("p50", 50), ("p99", 99))},
    }
    print("done " + json.dumps(summary), flush=True)
    await reader.read()  # until the parent ends
    for peer in peers:
        peer.abort()


# -- the parent: the server ------------------------------------------------------------------------


async def serve_and_measure(args: argparse.Namespace) -> dict[str, Any]:
    meter = LoopMeter()
    undo = meter.install()
    child: asyncio.subprocess.Process | None = None
    served: InProcessServer | None = None
    try:
        served = await start_in_process("stalls", redis=args.store == "redis", env={
            "REALTIME_REDIS_PREFIX": "stalls:",
            # every simulated candidate connects from 127.0.0.1: no per-address budgets
            "REALTIME_ACCESS_CODE_RATE": "0",
        })
        base = served.base
        sessions = [(s["id"], s["access_code"])
                    for s in await create_hall(base, EXAM, "stalls", args.sessions)]
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtests.loop_stalls", "--hold", base,
            "--protocol", args.protocol,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24,
        )
        assert child.stdin is not None and child.stdout is not None
        setup = {"sessions": sessions, "rate": args.rate, "seconds": args.seconds}
        child.stdin.write((json.dumps(setup) + "\n").encode())
        await child.stdin.drain()
        line = await asyncio.wait_for(child.stdout.readline(), 600)
        if line.strip() != b"ready":
            raise RuntimeError(f"holder failed: {line!r}")
        await asyncio.sleep(args.warmup)  # heartbeat, collector and drainer in their stride
        rss_open = rss_mb()
        if args.collect_first:  # the opens' frozen garbage: not counted in the window's
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            await asyncio.sleep(0)
        meter.start()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        line = await asyncio.wait_for(child.stdout.readline(),
                                      args.patience or 60 + 3 * args.seconds)
        meter.stop()
        if not line.startswith(b"done "):
            raise RuntimeError(f"holder failed: {line!r}")
        clients = json.loads(line[5:])
        # What the policy's full pass (every REALTIME_GC_FULL_INTERVAL) costs at this size.
        rss_end = rss_mb()
        await asyncio.sleep(0)  # not in the measured iteration
        gc.unfreeze()
        started = time.thread_time()
        full_gc_found = gc.collect()  # of which garbage frozen by the policy's passes
        full_gc_ms = round(1000 * (time.thread_time() - started), 1)
        gc.freeze()
        child.stdin.close()
        await asyncio.wait_for(child.wait(), 30)
        child = None
        try:  # measured already: a slow shutdown (history still draining) fails nothing
            await served.stop(60)
        except TimeoutError:
            print("server shutdown took over 60 s", file=sys.stderr, flush=True)
    finally:
        undo()
        if child is not None and child.returncode is None:
            child.kill()
            await child.wait()
        if served is not None and served.redis is not None:
            served.redis.stop()  # stopped already if the server stopped
    return {"sessions": args.sessions, "store": args.store, "rate": args.rate,
            "clients": clients, "full_gc_ms": full_gc_ms,
            "rss_mb_open": rss_open, "rss_mb_end": rss_end,
            "full_gc_found": full_gc_found, **meter.report()}


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def summary_line(result: dict[str, Any]) -> str:
    cb, it = result["long_callbacks"], result["long_iterations"]
    c = result["clients"]
    return (f"{result['store']} N={result['sessions']} {c['sent_per_s']}/s: callbacks >=5/20/50 "
            f"ms {cb['over_5ms']}/{cb['over_20ms']}/{cb['over_50ms']}, max {cb['max_ms']} ms; "
            f"iterations >=5/20/50 ms {it['over_5ms']}/{it['over_20ms']}/{it['over_50ms']}, max "
            f"{it['max_ms']} ms; loop CPU {result['loop_thread_cpu_s']} s in "
            f"{result['seconds']} s, GC {result['gc_cpu_ms']} ms (a full pass "
            f"{result['full_gc_ms']} ms, {result['full_gc_found']} found); RSS "
            f"{result['rss_mb_open']} MB after the opens; delivery p50/p99 "
            f"{c['delivery_p50_ms']}/{c['delivery_p99_ms']} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["redis", "memory"], default="redis")
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=300.0, help="targeted commands per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=12.0,
                        help="seconds between the last open and the commands")
    parser.add_argument("--protocol", default=MSGPACK)
    parser.add_argument("--json", default="", help="write the whole report here")
    parser.add_argument("--collect-first", action="store_true",
                        help="a full collection before the window, so the one after it finds "
                             "only the garbage the policy's passes froze during the window")
    parser.add_argument("--patience", type=float, default=0.0,
                        help="seconds to wait for the commands to be answered (default: 60 + "
                             "3 x --seconds; more on a machine others load)")
    parser.add_argument("--hold", default="", help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args(argv)
    raise_nofile()
    if args.hold:
        import uvloop

        setup = json.loads(sys.stdin.readline())
        uvloop.run(hold(args.hold, args.protocol, setup))
        return 0
    args.seconds = max(1.0, min(args.seconds, 600.0))
    args.rate = max(1.0, min(args.rate, 5000.0))
    args.patience = max(0.0, min(args.patience, 3600.0))
    result = asyncio.run(serve_and_measure(args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    shown = ("long_callbacks_by_what", "long_iterations_by_top", "gc")
    print(json.dumps({k: v for k, v in result.items() if k in shown}, indent=1))
    print(summary_line(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
