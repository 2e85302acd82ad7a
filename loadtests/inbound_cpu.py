"""CPU cost of a candidate's inbound messages (acks, progress), in-process, with real sockets.

    python -m loadtests.inbound_cpu --sessions 2000 --kind ack --rate 800 --seconds 4
    python -m loadtests.inbound_cpu --sessions 2000 --kind progress --rate 400 --store redis
    python -m loadtests.inbound_cpu --kind ack --rounds 4 --profile /tmp/inbound.prof

The server (the memory store, or a private redis-server with `--store redis`; SQLite) runs in
this process under uvicorn, configured as `realtime serve` configures it (`loadtests.inprocess`);
a child process holds `--sessions` opened candidate sockets and `--dashboards` dashboard
sockets watching the exam. Each round the child sends `--rate` messages a second, spread evenly
over its sockets in turn, for `--seconds`: `ack` (of a command id the session is not waiting
for: the guarded commit of `last_seen` and a `delivered` event, as every candidate sends after
each command) or `progress` (position and answered, as every candidate sends every 5 s in the
hall phase). A round is timed with `time.process_time()` (this process's CPU: the rest of the
machine barely moves it) from the child's first message until this process has heard every
resulting event and the drainer has written them to SQL, so a message's figure covers the
socket read, decode, validation, the guarded commit, the events' fan-out to the dashboards and
the drain. The idle CPU of the same span (measured once with no messages, `idle_ms_per_s`) is
reported and taken off in `cpu_us_per_msg_net`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.common import MSGPACK, raise_nofile, ws_url
from loadtests.fanout_cpu import _Proxy, _Steps
from loadtests.inprocess import create_hall, start_in_process
from loadtests.servers import BENCH_STAFF_TOKEN
from realtime.config import WS_IMPLS

EXAM = "inbound"
KINDS = ("ack", "progress")


# -- the child: holds the sockets, sends the messages --------------------------------------------


async def child(url: str, protocol: str, codes: list[str], dashboards: int) -> None:
    from loadtests.wsclient import WsPeer, connect, watch_exam

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    n = len(codes)
    opened = 0
    all_opened = loop.create_future()
    errors = 0

    def on_candidate(peer: WsPeer, message: dict[str, Any]) -> None:
        nonlocal opened, errors
        kind = message.get("type")
        if kind == "opened":
            opened += 1
            if opened == n and not all_opened.done():
                all_opened.set_result(None)
        elif kind == "ping":
            peer.send({"type": "pong", "t": message.get("t")})
        elif kind in ("refused", "error", "superseded"):
            errors += 1
            if errors <= 5:
                print(f"error {json.dumps(message)}", file=sys.stderr, flush=True)

    limit = asyncio.Semaphore(200)
    peers: list[WsPeer] = []

    async def one(code: str) -> None:
        async with limit:
            peer = await connect(ws_url(url, "/ws/candidate"), on_candidate, protocol=protocol,
                                 timeout=120)
            peers.append(peer)
            peer.send({"type": "open", "access_code": code, "client_id": "inbound"})

    await asyncio.gather(*(one(code) for code in codes))
    await asyncio.wait_for(all_opened, 120)
    for _ in range(dashboards):
        await watch_exam(ws_url(url, "/ws/proctor"), EXAM, BENCH_STAFF_TOKEN, protocol=protocol)
    print("ready", flush=True)
    position = 0
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] != "go":
            return
        kind, count, rate = line[1], int(line[2]), float(line[3])
        step = 1.0 / rate
        start = loop.time()
        position += 1
        for i in range(count):
            due = start + i * step
            delay = due - loop.time()
            if delay > 0.002:
                await asyncio.sleep(delay)
            peer = peers[i % n]
            if kind == "ack":
                peer.send({"type": "ack", "command_id": f"cmd-{position}-{i // n}"})
            else:
                peer.send({"type": "progress", "position": position, "answered": i // n})
        print(f"sent {count} {loop.time() - start:.3f} {errors}", flush=True)


# -- the parent: the server -----------------------------------------------------------------------


class Breakdown:
    """Harness only (`--breakdown`): the event loop thread's CPU (`time.thread_time`) in the
    parts a message goes through, each timed where it runs (a coroutine by its own stretches
    between suspensions, `fanout_cpu._Steps`); what is left of that thread's CPU is the socket
    reader's path (Starlette's receive, decode, validation, the decision, the batcher) and the
    event loop itself. Other threads (aiosqlite's, running the drainer's SQL) apart."""

    def __init__(self, runtime: Any) -> None:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

        self.parts: collections.Counter[str] = collections.Counter()
        hub, store, drainer = runtime.hub, runtime.store, runtime.drainer
        hub.flush = self.wrap("dashboard deltas (Hub.flush)", hub.flush)
        listeners = "" if hasattr(store, "_deliver") else ", with the listeners"
        batcher = runtime.service.batcher
        batcher.store = _Proxy(store, commit=self.steps(f"store commit{listeners}",
                                                         store.commit))
        if hasattr(store, "_deliver"):
            store._deliver = self.steps("echo: dispatch to the listeners", store._deliver)
        drainer.write = self.steps("drain: SQL write", drainer.write)
        for name in ("outbox_claim", "outbox_ack"):
            setattr(store, name, self.steps(f"drain: {name[7:]}", getattr(store, name)))
        received = WebSocketsSansIOProtocol.data_received
        WebSocketsSansIOProtocol.data_received = self.wrap(  # type: ignore[method-assign]
            "socket data: frame parsing (uvicorn, websockets)", received)

    def wrap(self, name: str, fn: Any) -> Any:
        parts = self.parts

        def timed(*args: Any, **kwargs: Any) -> Any:
            cpu = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[name] += time.thread_time() - cpu
        return timed

    def steps(self, name: str, fn: Any) -> Any:
        parts = self.parts

        async def timed(*args: Any, **kwargs: Any) -> Any:
            steps = _Steps(fn(*args, **kwargs))
            try:
                return await steps
            finally:
                parts[name] += steps.own
        return timed

    def report(self, before: dict[str, float], main: float, others: float, count: int) -> None:
        rest = main
        for name, cpu in sorted(self.parts.items(), key=lambda item: -item[1]):
            took = cpu - before.get(name, 0.0)
            rest -= took
            print(f"    {1e6 * took / count:7.1f} us  {name}")
        print(f"    {1e6 * rest / count:7.1f} us  the rest of the loop's thread (reader path, "
              f"event loop)")
        print(f"    {1e6 * others / count:7.1f} us  other threads (aiosqlite)")


async def serve_and_measure(args: argparse.Namespace) -> dict[str, Any]:
    from realtime.hub.connection import FRAMES

    served = await start_in_process("inbound", redis=args.store == "redis", ws=args.ws_impl,
                                    env={"REALTIME_ACCESS_CODE_BURST": "1000000",
                                         # no pings within the measurement
                                         "REALTIME_PING_INTERVAL": "3600"})
    app, base, workdir = served.app, served.base, served.workdir
    codes = [s["access_code"] for s in await create_hall(base, EXAM, "inbound", args.sessions)]
    codes_file = workdir / "codes.json"
    codes_file.write_text(json.dumps(codes))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.inbound_cpu", "--child", base, "--protocol",
        args.protocol, "--codes", str(codes_file), "--dashboards", str(args.dashboards),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24,
    )
    assert proc.stdin is not None and proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 300)
    if line.strip() != b"ready":
        raise RuntimeError(f"child failed: {line!r}")
    runtime = app.state.runtime
    hub = runtime.hub
    await asyncio.sleep(1.0)
    await runtime.drainer.catch_up(EXAM, timeout=30.0)  # the opens' history, out of the way

    # the idle floor: what this process spends with the sockets open and nothing arriving
    gc.collect()
    idle_wall = min(args.seconds, 3.0)
    started = time.process_time()
    await asyncio.sleep(idle_wall)
    idle_ms_per_s = 1000 * (time.process_time() - started) / idle_wall

    count = max(1, int(args.rate * args.seconds))
    breakdown = Breakdown(runtime) if args.breakdown else None
    rows: list[dict[str, float]] = []
    profiler = cProfile.Profile() if args.profile else None
    for rnd in range(args.rounds):
        kind = args.kind if args.kind != "both" else KINDS[rnd % 2]
        await asyncio.sleep(0.3)
        gc.collect()
        heard = hub.events_seen
        frames = FRAMES.direct + FRAMES.asgi
        calls = runtime.service.batcher.flushes
        drains = runtime.drainer.rounds
        if profiler is not None and rnd >= 1:
            profiler.enable()
        parts = dict(breakdown.parts) if breakdown is not None else {}
        main_cpu = time.thread_time()
        started = time.process_time()
        wall = time.perf_counter()
        proc.stdin.write(f"go {kind} {count} {args.rate}\n".encode())
        await proc.stdin.drain()
        sent = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode().split()
        if not sent or sent[0] != "sent":
            raise RuntimeError(f"child: {sent!r}")
        deadline = time.monotonic() + 30.0
        while hub.events_seen - heard < count and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        got = hub.events_seen - heard
        frames = FRAMES.direct + FRAMES.asgi - frames
        calls = runtime.service.batcher.flushes - calls
        await runtime.drainer.catch_up(EXAM, timeout=30.0)
        drains = runtime.drainer.rounds - drains
        cpu = time.process_time() - started
        main_cpu = time.thread_time() - main_cpu
        seconds = time.perf_counter() - wall
        if profiler is not None:
            profiler.disable()
        net = cpu - idle_ms_per_s / 1000 * seconds
        rows.append({"cpu_us_per_msg": 1e6 * cpu / count, "cpu_us_per_msg_net": 1e6 * net / count,
                     "events": got, "seconds": seconds, "frames": frames,
                     "store_calls": calls, "drain_rounds": drains})
        print(f"round {rnd} {kind}: {count} sent in {float(sent[2]):.2f} s, {got} events, "
              f"{1e6 * cpu / count:.1f} us CPU per message ({1e6 * net / count:.1f} net of "
              f"idle), {seconds:.2f} s to drained, {frames} frames written, {calls} store "
              f"calls, {drains} drain rounds; child errors {sent[3]}", flush=True)
        if breakdown is not None:
            breakdown.report(parts, main_cpu, cpu - main_cpu, count)
        if got < count:
            print(f"  only {got} of {count} events heard (coalesced progress, or lost)",
                  flush=True)
    if profiler is not None:
        profiler.dump_stats(args.profile)
    proc.stdin.close()
    await proc.wait()
    await served.stop()
    measured = rows[1:] if len(rows) > 1 else rows  # the first warms caches up
    return {
        "kind": args.kind, "store": args.store, "sessions": args.sessions, "rate": args.rate,
        "messages_per_round": count, "rounds": len(measured), "protocol": args.protocol,
        "idle_ms_per_s": round(idle_ms_per_s, 2),
        **{f"{key}_p50": round(statistics.median(r[key] for r in measured), 1)
           for key in ("cpu_us_per_msg", "cpu_us_per_msg_net", "frames", "store_calls",
                       "drain_rounds")},
        "all_rounds_us": [round(r["cpu_us_per_msg"], 1) for r in measured],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--kind", choices=[*KINDS, "both"], default="ack")
    parser.add_argument("--rate", type=float, default=800.0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=4.0, help="per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dashboards", type=int, default=1)
    parser.add_argument("--protocol", default=MSGPACK)
    parser.add_argument("--store", choices=["memory", "redis"], default="memory")
    parser.add_argument("--ws-impl", default=os.environ.get("REALTIME_WS_IMPL") or WS_IMPLS[0],
                        choices=WS_IMPLS)
    parser.add_argument("--drain-gather", type=float, default=-1.0,
                        help="seconds the drainer gathers before each round "
                        "after a quiet spell (`realtime.drainer.GATHER`; default: the server's)")
    parser.add_argument("--drain-gather-max", type=float, default=-1.0,
                        help="seconds the drainer's gather grows to under a sustained flow "
                        "(`realtime.drainer.GATHER_MAX`, Redis only; default: the server's)")
    parser.add_argument("--linger", type=float, default=-1.0,
                        help="seconds a candidate's guarded commit may wait for others "
                        "(`realtime.sessions.CANDIDATE_LINGER`; default: the server's)")
    parser.add_argument("--breakdown", action="store_true",
                        help="print, per round, where the loop thread's CPU went (adds some)")
    parser.add_argument("--profile", default="", help="write a cProfile of rounds 2+ here")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)  # the child's part
    parser.add_argument("--codes", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sessions = max(1, min(args.sessions, 20_000))
    args.rounds = max(1, min(args.rounds, 50))
    args.rate = max(1.0, min(args.rate, 20_000.0))
    args.seconds = max(0.5, min(args.seconds, 60.0))
    raise_nofile()
    import uvloop

    if args.child:
        codes = json.loads(Path(args.codes).read_text())
        uvloop.run(child(args.child, args.protocol, codes, args.dashboards))
        return 0
    if args.drain_gather >= 0:
        import realtime.drainer

        realtime.drainer.GATHER = args.drain_gather
    if args.drain_gather_max >= 0:
        import realtime.drainer

        realtime.drainer.GATHER_MAX = args.drain_gather_max
    if args.linger >= 0:
        import realtime.sessions

        realtime.sessions.CANDIDATE_LINGER = args.linger
    summary = uvloop.run(serve_and_measure(args))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
