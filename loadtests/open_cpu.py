"""CPU cost of candidates opening their sessions, in-process, with real sockets held by a child.

    python -m loadtests.open_cpu --sessions 2000 --rounds 5
    python -m loadtests.open_cpu --sessions 2000 --rounds 5 --memory
    python -m loadtests.open_cpu --sessions 2000 --rounds 4 --profile /tmp/open.prof

The server (a private redis-server, or the memory store with `--memory`; SQLite) runs in this
process under uvicorn. Each round, a child process connects N candidate sockets (the handshakes
are measured apart: `connect_cpu_ms` per socket), then sends every socket's `open` (access
code) at once, as a hall does when an exam starts, and tells this process when all N have
their `opened`. Between the `go` and
that moment this process's CPU (`time.process_time()`: the rest of the machine barely moves
it) is the cost of N opens; Redis's CPU (`INFO cpu`) and its own count of the commands it ran
(`INFO commandstats`, every kind but the subscription's: commands run by scripts count too)
are taken over the same span. Then the child closes its sockets
and this process waits until every session is disconnected, so each round opens N sessions
that nobody holds.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.common import MSGPACK, raise_nofile, ws_url
from loadtests.inprocess import create_hall, start_in_process

EXAM = "opens"


# -- the child: connects, opens, closes -----------------------------------------------------------


async def child(url: str, protocol: str, codes: list[str]) -> None:
    from loadtests.wsclient import WsPeer, connect

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    n = len(codes)
    while True:
        line = (await reader.readline()).strip()
        if line != b"connect":
            return
        opened = 0
        all_opened = loop.create_future()

        def on_message(peer: WsPeer, message: dict[str, Any], fut: Any = all_opened) -> None:
            nonlocal opened
            kind = message.get("type")
            if kind == "opened":
                opened += 1
                if opened == n and not fut.done():
                    fut.set_result(None)
            elif kind == "ping":
                peer.send({"type": "pong", "t": message.get("t")})
            elif kind in ("refused", "error", "superseded"):
                print(f"error {json.dumps(message)}", file=sys.stderr, flush=True)

        limit = asyncio.Semaphore(200)

        async def one(on_message: Any = on_message, limit: Any = limit) -> WsPeer:
            async with limit:
                return await connect(ws_url(url, "/ws/candidate"), on_message,
                                     protocol=protocol, timeout=120)

        peers = await asyncio.gather(*(one() for _ in codes))
        print("connected", flush=True)
        if (await reader.readline()).strip() != b"go":
            return
        for peer, code in zip(peers, codes, strict=True):
            peer.send({"type": "open", "access_code": code, "client_id": "open-cpu"})
        await asyncio.wait_for(all_opened, 300)
        print("opened", flush=True)
        if (await reader.readline()).strip() != b"close":
            return
        for peer in peers:
            peer.close()
        print("closed", flush=True)


# -- the parent: the server -----------------------------------------------------------------------


def redis_commands(info: dict[str, Any]) -> dict[str, int]:
    skip = {"cmdstat_subscribe", "cmdstat_ping", "cmdstat_info", "cmdstat_unsubscribe"}
    return {name[8:]: int(stats["calls"]) for name, stats in info.items()
            if name.startswith("cmdstat_") and name not in skip}


async def redis_seconds(spy: Any) -> float:
    """CPU seconds the redis-server has used so far (0 without one)."""
    if spy is None:
        return 0.0
    info = await spy.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def serve_and_measure(args: argparse.Namespace) -> dict[str, Any]:
    import redis.asyncio as aioredis

    served = await start_in_process("opens", redis=not args.memory, env={
        "REALTIME_ACCESS_CODE_BURST": "1000000",
        "REALTIME_PING_INTERVAL": "3600",  # no pings within the measurement
    })
    app, base, workdir, redis_server = served.app, served.base, served.workdir, served.redis
    codes = [s["access_code"] for s in await create_hall(base, EXAM, "opens", args.sessions)]
    codes_file = workdir / "codes.json"
    codes_file.write_text(json.dumps(codes))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.open_cpu", "--child", base, "--protocol", args.protocol,
        "--codes", str(codes_file),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24,
    )
    spy = None if redis_server is None else aioredis.Redis.from_url(redis_server.url)

    async def say(word: str, expect: str) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{word}\n".encode())
        await proc.stdin.drain()
        line = (await proc.stdout.readline()).decode().strip()
        if line != expect:
            raise RuntimeError(f"child: {line!r} (expected {expect!r})")

    runtime = app.state.runtime
    rows: list[dict[str, float]] = []
    profiler = cProfile.Profile() if args.profile else None
    for rnd in range(args.rounds):
        gc.collect()
        if profiler is not None and args.profile_connects and rnd >= 1:
            profiler.enable()
        started = time.process_time()
        await say("connect", "connected")
        connect_cpu = time.process_time() - started
        if profiler is not None:
            profiler.disable()
        await asyncio.sleep(0.3)  # let the handshakes' tail settle
        gc.collect()
        before = redis_commands(await spy.info("commandstats")) if spy is not None else {}
        redis_cpu = await redis_seconds(spy)
        if profiler is not None and not args.profile_connects and rnd >= 1:
            profiler.enable()
        started = time.process_time()
        wall = time.perf_counter()
        await say("go", "opened")
        cpu = time.process_time() - started
        seconds = time.perf_counter() - wall
        if profiler is not None:
            profiler.disable()
        after = redis_commands(await spy.info("commandstats")) if spy is not None else {}
        redis_cpu = await redis_seconds(spy) - redis_cpu
        calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        calls = {k: v for k, v in sorted(calls.items()) if v}
        rows.append({"connect_cpu_ms": 1000 * connect_cpu / args.sessions,
                     "cpu_ms_per_open": 1000 * cpu / args.sessions,
                     "opens_per_s": args.sessions / seconds,
                     "redis_commands_per_open": sum(calls.values()) / args.sessions,
                     "redis_cpu_ms_per_open": 1000 * redis_cpu / args.sessions})
        print(f"round {rnd}: handshake {1000 * connect_cpu / args.sessions:.3f} ms CPU per "
              f"socket; {1000 * cpu / args.sessions:.3f} ms CPU per open, "
              f"{args.sessions / seconds:.0f} opens/s, Redis CPU per open "
              f"{1000 * redis_cpu / args.sessions:.3f} ms, Redis commands per open "
              f"{sum(calls.values()) / args.sessions:.2f} {calls}", flush=True)
        await say("close", "closed")
        while runtime.hub.candidates:  # noqa: ASYNC110  # every socket's end handled
            await asyncio.sleep(0.05)
        await runtime.service.batcher.close()
    if profiler is not None:
        profiler.dump_stats(args.profile)
    proc.stdin.close()
    await proc.wait()
    if spy is not None:
        await spy.aclose()
    await served.stop()
    measured = rows[1:] if len(rows) > 1 else rows  # the first warms caches up
    return {
        "sessions": args.sessions, "store": "memory" if args.memory else "redis",
        "rounds": len(measured),
        **{f"{key}_p50": round(statistics.median(r[key] for r in measured), 3)
           for key in ("connect_cpu_ms", "cpu_ms_per_open", "opens_per_s",
                       "redis_commands_per_open", "redis_cpu_ms_per_open")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--protocol", default=MSGPACK)
    parser.add_argument("--memory", action="store_true", help="the memory store, not Redis")
    parser.add_argument("--profile", default="", help="write a cProfile of rounds 2+ here")
    parser.add_argument("--profile-connects", action="store_true",
                        help="profile the handshakes instead of the opens")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)  # the child's part
    parser.add_argument("--codes", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sessions = max(1, min(args.sessions, 20_000))
    args.rounds = max(1, min(args.rounds, 50))
    raise_nofile()
    import uvloop

    if args.child:
        codes = json.loads(Path(args.codes).read_text())
        uvloop.run(child(args.child, args.protocol, codes))
        return 0
    summary = uvloop.run(serve_and_measure(args))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
