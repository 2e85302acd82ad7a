"""The connection benchmark: many candidate sockets on servers it starts itself.

    python -m loadtests.bench                       # memory:1, redis:1, redis:2 at 1000 and 5000
    python -m loadtests.bench --full                # ... and 10000
    python -m loadtests.bench --sizes 20 --configs memory:1 --quick   # a smoke run

A config is `<backend>:<servers>`: `memory:1` is one uvicorn process on the in-memory store;
`cluster:3` is three processes on a private 3-master Redis Cluster (sharded pub/sub);
`redis:2` is two uvicorn processes on two ports sharing a private redis-server (and one SQLite
file), with candidates spread over both and commands sent to the first. `:2w` instead runs one
uvicorn with `--workers 2` on one port. Every run starts fresh servers and, per size N:

1. opens N candidate sockets (`open`), holds them for `--hold` s answering pings (`hold`);
2. sends `--commands` targeted pause/resume commands over REST and times each until the
   candidate has it (`targeted`);
3. pauses all N with one REST call and times the last arrival (`pause_all`, then `resume_all`);
4. has every candidate report progress once and times each delta to a watching proctor
   (`dashboard`);
5. measures server RSS per connection (`memory`) and server CPU per 1,000 messages;
6. opens N sessions of an exam with `lock_sessions` (each open re-locks), drops them all and
   reopens them with their resume tokens (`lock_open`, `lock_reopen`).

These are the `classic` phases. The comparison phases (`loadtests/compare.py`), run after
them on the same sockets, are `throughput` (targeted commands at rising `--rates`),
`pauses` ("pause all" / "resume all" `--pause-repeats` times) and `hall` (progress from every
candidate every 5 s with commands flowing and a dashboard timing the deltas). With `--peer`
(default) they also run against `peer:1`, a python-socketio server with a Redis manager
(`loadtests/peer_socketio.py`), and every headline figure is printed with its ratio to the
peer's. `--phases new` runs only the comparison phases; `--compare-deflate` measures idle RSS
per connection with permessage-deflate offered / not offered / off in uvicorn.

    python -m loadtests.bench --configs memory:1,redis:1 --phases new --compare-deflate

A frame's time is when the harness read it from its socket, before parsing it: every socket
is read first and parsed later (`--client-read read-first`, `loadtests.wsclient.ReadFirst`),
so one process holding thousands of sockets times arrivals as thousands of machines would;
"pause all" also reports when the last frame was parsed (`parsed`; `--client-read inline`:
parsed as read, socket after socket, the figure of the sessions before the eighth).

Results: `bench-results/results.json`, `bench-results/bench.png` and tables on stdout
(`--summary FILE`: the comparison as markdown). Everything runs on 127.0.0.1, and every wait
is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from loadtests.common import JSON, MSGPACK, percentile, raise_nofile, ws_url
from loadtests.compare import (
    NEW_PHASES,
    Arrivals,
    UvicornProcess,
    compare_table,
    deflate_args,
    deflate_lines,
    headlines,
    parse_rates,
    run_new_phases,
    run_peer,
    write_summary,
)
from loadtests.servers import (
    BENCH_STAFF_TOKEN,
    RedisClusterProcess,
    RedisProcess,
    ServerProcess,
    cpu_seconds,
    rss_bytes,
    workdir,
)
from loadtests.wsclient import READ_MODES, ReadFirst, WsPeer, connect

DEFAULT_SIZES = (1000, 5000)
FULL_SIZES = (1000, 5000, 10000)
DEFAULT_CONFIGS = ("memory:1", "redis:1", "redis:2")
PHASES = ("classic", *NEW_PHASES)  # classic = the original phases 1-6 above
CHUNK = 5000


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def stats_ms(samples: list[float]) -> dict[str, float | None]:
    """p50/p99/max in milliseconds of samples in seconds."""
    return {
        "p50_ms": ms(percentile(samples, 50)),
        "p99_ms": ms(percentile(samples, 99)),
        "max_ms": ms(max(samples) if samples else None),
    }


class Candidate:
    def __init__(self, bench: Bench, session: dict[str, Any], url: str) -> None:
        self.bench = bench
        self.id: str = session["id"]
        self.code: str = session["access_code"]
        self.url = url
        self.peer: WsPeer | None = None
        self.resume_token: str | None = None
        self.opened: asyncio.Future[dict[str, Any]] | None = None
        self.status = ""
        self.position = 0
        self.alive = False

    def on_message(self, peer: WsPeer, message: dict[str, Any]) -> None:
        kind = message.get("type")
        bench = self.bench
        if kind == "ping":
            bench.pings += 1
            peer.send({"type": "pong", "t": message.get("t")})
        elif kind == "command":
            now = time.perf_counter()
            bench.commands_received += 1
            self.status = message.get("session", {}).get("status", self.status)
            tracker = bench.trackers.get(message.get("command_id", ""))
            if tracker is not None:
                tracker.arrived(peer.arrived_at, now)
            if bench.ack:
                peer.send({"type": "ack", "command_id": message.get("command_id")})
        elif kind in ("opened", "refused"):
            if kind == "opened":
                self.resume_token = message.get("resume_token") or self.resume_token
                self.status = message["session"]["status"]
            if self.opened is not None and not self.opened.done():
                self.opened.set_result(message)
        elif kind == "error":
            bench.note_error(f"candidate error: {message.get('code')} {message.get('message')}")
        elif kind == "superseded":
            bench.note_error("candidate superseded")

    def on_close(self, peer: WsPeer) -> None:
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before opened: {peer.close_code}"))
        if self.alive and not peer.closing:
            self.bench.unexpected_closes += 1
            self.bench.note_error(f"candidate socket closed by the server: {peer.close_code}")
        self.alive = False

    async def open(self, resume: bool = False) -> tuple[float, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self.opened = loop.create_future()
        self.peer = await connect(
            ws_url(self.url, "/ws/candidate"), self.on_message, protocol=self.bench.protocol,
            on_close=self.on_close, deflate=self.bench.deflate, timeout=self.bench.timeout,
            reader=self.bench.reader,
        )
        message: dict[str, Any] = {"type": "open", "access_code": self.code, "client_id": "bench"}
        if resume and self.resume_token:
            message["resume_token"] = self.resume_token
        self.peer.send(message)
        async with asyncio.timeout(self.bench.timeout):
            reply = await self.opened
        if reply["type"] == "opened":
            self.alive = True
        return time.perf_counter() - started, reply

    def drop(self) -> None:
        self.alive = False
        if self.peer is not None:
            self.peer.abort()

    def send_progress(self, position: int) -> None:
        if self.peer is not None:
            self.peer.send({"type": "progress", "position": position, "answered": position})


class Proctor:
    """One dashboard socket watching an exam; times deltas."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.peer: WsPeer | None = None
        self.snapshot: asyncio.Future[dict[str, Any]] | None = None
        self.deltas = 0
        self.progress_sent: dict[str, float] = {}
        self.progress_latency: list[float] = []
        self.progress_done = asyncio.Event()
        self.progress_expected = 0

    def on_message(self, peer: WsPeer, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "snapshot":
            if self.snapshot is not None and not self.snapshot.done():
                self.snapshot.set_result(message)
        elif kind == "event":
            self.on_event(message["event"], peer.arrived_at)
        elif kind in ("event_batch", "events"):  # a burst of deltas, or gap recovery
            now = peer.arrived_at
            for event in message["events"]:
                self.on_event(event, now)
        elif kind == "error":
            self.bench.note_error(f"proctor error: {message.get('code')} {message.get('message')}")

    def on_event(self, event: dict[str, Any], now: float) -> None:
        self.deltas += 1
        if event["kind"] == "progress":
            sent = self.progress_sent.pop(event["session_id"], None)
            if sent is not None:
                self.progress_latency.append(now - sent)
                if len(self.progress_latency) >= self.progress_expected:
                    self.progress_done.set()
        command_id = (event.get("details") or {}).get("command_id")
        if command_id and event["kind"] != "delivered":
            tracker = self.bench.trackers.get(command_id)
            if tracker is not None:
                tracker.dashboard.append(now)

    def on_close(self, peer: WsPeer) -> None:
        if not peer.closing:
            self.bench.dashboard_closes[str(peer.close_code)] = (
                self.bench.dashboard_closes.get(str(peer.close_code), 0) + 1)
            self.bench.note_error(f"dashboard socket closed by the server: {peer.close_code}")

    @property
    def alive(self) -> bool:
        return self.peer is not None and not self.peer.closed

    async def watch(self, url: str, exam_id: str) -> float:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self.snapshot = loop.create_future()
        self.peer = await connect(
            ws_url(url, "/ws/proctor"), self.on_message, protocol=self.bench.protocol,
            on_close=self.on_close, headers={"Authorization": f"Bearer {BENCH_STAFF_TOKEN}"},
            timeout=self.bench.timeout, reader=self.bench.reader,
        )
        self.peer.send({"type": "subscribe", "exam_id": exam_id})
        async with asyncio.timeout(max(self.bench.timeout, 60)):
            await self.snapshot
        return time.perf_counter() - started


class Bench:
    """One run: one config, one size, fresh servers."""

    def __init__(self, args: argparse.Namespace, backend: str, servers: int, workers: int,
                 n: int) -> None:
        self.args = args
        self.backend = backend
        self.server_count = servers
        self.workers = workers
        self.n = n
        self.protocol = JSON if args.protocol == "json" else MSGPACK
        self.deflate: bool = args.deflate
        self.ack = not args.no_ack
        self.timeout: float = args.timeout
        # every socket of the run (ours or the peer's) read, and stamped, before it is parsed
        self.reader = ReadFirst() if args.client_read == "read-first" else None
        self.trackers: dict[str, Arrivals] = {}
        self.idle_cpu_rate = 0.0  # server CPU seconds per second while idle (comparison phases)
        self.pings = 0
        self.commands_received = 0
        self.unexpected_closes = 0
        self.dashboard_closes: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.redis: RedisProcess | RedisClusterProcess | None = None
        self.servers: list[ServerProcess] = []
        self.phases: set[str] = set(phase_list(args))
        self.server_args: list[str] = deflate_args(args.server_deflate)
        self.result: dict[str, Any] = {
            "config": f"{backend}:{servers}" + (f"x{workers}w" if workers > 1 else ""),
            "backend": backend, "servers": servers, "workers": workers, "n": n,
            "deflate_offered": self.deflate, "server_deflate": args.server_deflate or "default",
            "client_read": args.client_read,
        }

    def note_error(self, text: str) -> None:
        self.errors[text] = self.errors.get(text, 0) + 1

    # -- servers ---------------------------------------------------------------------------

    def start_servers(self, root: Path) -> None:
        redis_url = ""
        if self.backend in ("redis", "cluster"):
            self.redis = (RedisProcess(root) if self.backend == "redis"
                          else RedisClusterProcess(root))
            self.redis.start()
            redis_url = self.redis.url
        env = {"REALTIME_PING_INTERVAL": str(self.args.ping_interval)}
        for i in range(self.server_count):
            profile = ""
            if self.args.profile and i == 0:
                name = f"profile-{self.result['config']}-{self.n}.{self.args.profile}"
                out = Path(self.args.out) / name
                profile = f"py-spy:{out.resolve()}"
            self.servers.append(
                UvicornProcess(root, redis_url, workers=self.workers, env=env, profile=profile,
                               launcher=self.args.launcher, extra_args=self.server_args).start()
            )

    def stop_servers(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        if self.redis is not None:
            self.redis.stop()

    @property
    def pids(self) -> list[int]:
        return [pid for s in self.servers for pid in s.server_pids()]

    def server_cpu(self) -> float:
        return cpu_seconds(self.pids)

    def redis_cpu(self) -> float:
        return cpu_seconds(self.redis.pids) if self.redis is not None else 0.0

    def server_rss(self) -> int:
        return rss_bytes(self.pids)

    # -- phases ----------------------------------------------------------------------------

    async def create_exam(self, http: httpx.AsyncClient, exam_id: str, size: int,
                          lock: bool) -> list[dict[str, Any]]:
        response = await http.post("/api/v1/exams", json={
            "id": exam_id, "title": f"bench {exam_id}", "duration_minutes": 240,
            "settings": {"lock_sessions": lock}})
        response.raise_for_status()
        sessions: list[dict[str, Any]] = []
        for start in range(0, size, CHUNK):
            candidates = [
                {"candidate_id": f"{exam_id}-{i}", "name": f"Candidate {i}",
                 "group": f"row-{i % 10}"}
                for i in range(start, min(size, start + CHUNK))
            ]
            response = await http.post(f"/api/v1/exams/{exam_id}/sessions",
                                       json={"candidates": candidates})
            response.raise_for_status()
            sessions += response.json()["sessions"]
        return sessions

    async def open_all(self, candidates: list[Candidate], resume: bool = False) -> dict[str, Any]:
        limit = asyncio.Semaphore(self.args.open_concurrency)
        latencies: list[float] = []
        failures: dict[str, int] = {}
        relocked = 0

        async def one(candidate: Candidate) -> None:
            nonlocal relocked
            async with limit:
                try:
                    took, reply = await candidate.open(resume)
                except Exception as exc:  # timeouts, refused connections
                    key = type(exc).__name__
                    failures[key] = failures.get(key, 0) + 1
                    return
                if reply["type"] != "opened":
                    key = f"refused:{reply.get('reason')}"
                    failures[key] = failures.get(key, 0) + 1
                    return
                latencies.append(took)
                relocked += bool(reply.get("relocked"))

        started = time.perf_counter()
        cpu0 = self.server_cpu()
        await asyncio.gather(*(one(c) for c in candidates))
        seconds = time.perf_counter() - started
        return {
            "n": len(candidates), "ok": len(latencies), "failed": sum(failures.values()),
            "failures": failures, "relocked": relocked, "seconds": round(seconds, 3),
            "per_second": round(len(latencies) / seconds, 1) if seconds else None,
            "server_cpu_s": round(self.server_cpu() - cpu0, 3), **stats_ms(latencies),
        }

    async def hold(self, candidates: list[Candidate], seconds: float) -> dict[str, Any]:
        pings0 = self.pings
        cpu0 = self.server_cpu()
        await asyncio.sleep(seconds)
        cpu = self.server_cpu() - cpu0
        pings = self.pings - pings0
        alive = sum(1 for c in candidates if c.alive)
        messages = 2 * pings  # each ping is answered by a pong
        return {
            "seconds": seconds, "alive": alive, "lost": len(candidates) - alive,
            "pings": pings, "server_cpu_s": round(cpu, 3),
            "cpu_s_per_1000_msgs": round(cpu / messages * 1000, 4) if messages else None,
        }

    async def targeted(self, http: httpx.AsyncClient, exam_id: str,
                       candidates: list[Candidate]) -> dict[str, Any]:
        count, rate = self.args.commands, self.args.command_rate
        busy: set[str] = set()
        latencies: list[float] = []
        rest: list[float] = []
        applied = lost = skipped = 0
        paused: set[str] = set()

        async def one(i: int) -> None:
            nonlocal applied, lost, skipped
            choices = [c for c in candidates if c.alive and c.id not in busy]
            if not choices:
                return
            candidate = random.choice(choices)
            busy.add(candidate.id)
            action = "resume" if candidate.id in paused else "pause"
            command_id = f"t{i}-{uuid.uuid4().hex[:8]}"
            tracker = self.trackers[command_id] = Arrivals(time.perf_counter(), expected=1)
            try:
                response = await http.post(f"/api/v1/exams/{exam_id}/commands", json={
                    "action": action, "target": candidate.id, "command_id": command_id})
                rest.append(time.perf_counter() - tracker.started)
                body = response.json()
                if response.status_code != 200 or not body.get("applied"):
                    skipped += 1
                    return
                applied += 1
                (paused.add if action == "pause" else paused.discard)(candidate.id)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.args.lost_after):
                        await tracker.done.wait()
                if tracker.arrivals:
                    latencies.append(tracker.arrivals[0] - tracker.started)
                else:
                    lost += 1
            finally:
                busy.discard(candidate.id)
                self.trackers.pop(command_id, None)

        tasks = []
        started = time.perf_counter()
        for i in range(count):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        # Leave everyone active for the bulk phase.
        if paused:
            await http.post(f"/api/v1/exams/{exam_id}/commands", json={
                "action": "resume", "target": sorted(paused)})
        rest_stats = stats_ms(rest)
        return {
            "sent": count, "applied": applied, "skipped": skipped, "received": len(latencies),
            "lost": lost, "rate_per_s": rate, **stats_ms(latencies),
            "rest_p50_ms": rest_stats["p50_ms"], "rest_p99_ms": rest_stats["p99_ms"],
        }

    async def bulk(self, http: httpx.AsyncClient, exam_id: str, action: str) -> dict[str, Any]:
        command_id = f"bulk-{action}-{uuid.uuid4().hex[:8]}"
        tracker = self.trackers[command_id] = Arrivals(time.perf_counter())
        cpu0 = self.server_cpu()
        try:
            response = await http.post(f"/api/v1/exams/{exam_id}/commands", json={
                "action": action, "target": "all", "command_id": command_id},
                timeout=max(120.0, self.timeout))
            rest_seconds = time.perf_counter() - tracker.started
            response.raise_for_status()
            applied = len(response.json()["applied"])
            tracker.expected = applied
            tracker.check()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.args.lost_after + 0.01 * applied / 10):
                    await tracker.done.wait()
            await asyncio.sleep(0.05)
        finally:
            self.trackers.pop(command_id, None)
        arrivals = [t - tracker.started for t in tracker.arrivals]
        parsed = [t - tracker.started for t in tracker.parsed]
        dashboard = [t - tracker.started for t in tracker.dashboard]
        return {
            "applied": applied, "received": len(arrivals), "lost": applied - len(arrivals),
            "first_ms": ms(min(arrivals) if arrivals else None),
            "last_ms": ms(max(arrivals) if arrivals else None),
            "last_parsed_ms": ms(max(parsed) if parsed else None),
            "p50_ms": ms(percentile(arrivals, 50)), "rest_ms": ms(rest_seconds),
            "dashboard_deltas": len(dashboard),
            "dashboard_last_ms": ms(max(dashboard) if dashboard else None),
            "server_cpu_s": round(self.server_cpu() - cpu0, 3),
        }

    async def dashboard(self, proctor: Proctor, candidates: list[Candidate]) -> dict[str, Any]:
        """Every live candidate reports progress once, spread over `--progress-seconds`."""
        live = [c for c in candidates if c.alive]
        proctor.progress_latency = []
        proctor.progress_sent = {}
        proctor.progress_expected = len(live)
        proctor.progress_done.clear()
        spread = self.args.progress_seconds
        cpu0 = self.server_cpu()
        started = time.perf_counter()
        for j, candidate in enumerate(live):
            due = started + spread * j / max(1, len(live))
            delay = due - time.perf_counter()
            if delay > 0.002:
                await asyncio.sleep(delay)
            candidate.position += 1
            proctor.progress_sent[candidate.id] = time.perf_counter()
            assert candidate.peer is not None
            candidate.peer.send({"type": "progress", "position": candidate.position,
                                 "answered": candidate.position})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.args.lost_after + 10):
                await proctor.progress_done.wait()
        elapsed = time.perf_counter() - started
        cpu = self.server_cpu() - cpu0
        received = len(proctor.progress_latency)
        messages = len(live) + received
        return {
            "proctor_deltas": proctor.deltas, "proctor_open": proctor.alive,
            "sent": len(live), "received": received, "lost": len(live) - received,
            "rate_per_s": round(len(live) / spread, 1), "seconds": round(elapsed, 3),
            **stats_ms(proctor.progress_latency), "server_cpu_s": round(cpu, 3),
            "cpu_s_per_1000_msgs": round(cpu / messages * 1000, 4) if messages else None,
        }

    async def close_all(self, candidates: list[Candidate]) -> None:
        for candidate in candidates:
            candidate.drop()
        await asyncio.sleep(0.5)

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        if self.backend == "peer":
            result = await run_peer(self)
            result["lost_total"] = lost_total(result)
            return result
        classic = "classic" in self.phases
        root = workdir()
        self.result["workdir"] = str(root)
        loop_started = time.perf_counter()
        harness = psutil.Process()
        harness_cpu0 = sum(harness.cpu_times()[:2])
        try:
            await asyncio.to_thread(self.start_servers, root)
            urls = [s.url for s in self.servers]
            async with httpx.AsyncClient(
                base_url=urls[0], headers={"Authorization": f"Bearer {BENCH_STAFF_TOKEN}"},
                timeout=60, limits=httpx.Limits(max_connections=64),
            ) as http:
                started = time.perf_counter()
                exams = max(1, self.args.exams)
                per_exam = max(1, self.n // exams)
                main = await self.create_exam(http, "main", per_exam if exams > 1 else self.n,
                                              lock=False)
                others = [await self.create_exam(http, f"exam-{k}", per_exam, lock=False)
                          for k in range(1, exams)]
                locked = (await self.create_exam(http, "locked", self.lock_size, lock=True)
                          if classic else [])
                self.result["setup_s"] = round(time.perf_counter() - started, 2)
                await asyncio.sleep(1.0)
                rss_base = self.server_rss()
                if exams > 1:  # exam k's candidates on server k: fan-out by exam shows
                    candidates = [Candidate(self, s, urls[0]) for s in main]
                    bystanders = [Candidate(self, s, urls[k % len(urls)])
                                  for k, sessions in enumerate(others, start=1)
                                  for s in sessions]
                else:
                    candidates = [Candidate(self, s, urls[i % len(urls)])
                                  for i, s in enumerate(main)]
                    bystanders = []
                proctor = Proctor(self)
                snapshot_s = await proctor.watch(urls[0], "main")
                if bystanders:
                    self.result["open_other_exams"] = await self.open_all(bystanders)
                self.result["open"] = await self.open_all(candidates)
                self.result["open"]["snapshot_ms"] = ms(snapshot_s)
                await asyncio.sleep(self.args.settle)
                rss_open = self.server_rss()
                self.result["hold"] = await self.hold(candidates, self.args.hold)
                rss_held = self.server_rss()
                opened = max(1, self.result["open"]["ok"]
                             + self.result.get("open_other_exams", {}).get("ok", 0))
                self.result["memory"] = {
                    "rss_base_mb": round(rss_base / 2**20, 1),
                    "rss_open_mb": round(rss_open / 2**20, 1),
                    "rss_held_mb": round(rss_held / 2**20, 1),
                    "kib_per_conn": round((rss_held - rss_base) / opened / 1024, 2),
                    "redis_rss_mb": (round(rss_bytes(self.redis.pids) / 2**20, 1)
                                     if self.redis else None),
                }
                if classic:
                    self.result["targeted"] = await self.targeted(http, "main", candidates)
                    self.result["pause_all"] = await self.bulk(http, "main", "pause")
                    self.result["resume_all"] = await self.bulk(http, "main", "resume")
                    if not proctor.alive:  # dropped (e.g. as a slow consumer): resubscribe
                        proctor = Proctor(self)
                        await proctor.watch(urls[0], "main")
                    self.result["dashboard"] = await self.dashboard(proctor, candidates)

                async def rewatch() -> Proctor:
                    fresh = Proctor(self)
                    await fresh.watch(urls[0], "main")
                    return fresh

                if self.phases & set(NEW_PHASES):
                    rest = urls if self.args.rest_to == "all" else urls[:1]
                    await run_new_phases(self, rest, candidates, proctor, peer=False,
                                         rewatch=rewatch)
                self.result["still_open"] = sum(1 for c in candidates if c.alive)
                self.result["fan_out"] = await fan_out_figures(self.servers)
                await self.close_all(candidates + bystanders)
                if proctor.peer is not None:
                    proctor.peer.close()
                if classic:
                    lock_candidates = [Candidate(self, s, urls[i % len(urls)])
                                       for i, s in enumerate(locked)]
                    self.result["lock_open"] = await self.open_all(lock_candidates)
                    await self.close_all(lock_candidates)
                    await asyncio.sleep(self.args.settle)
                    self.result["lock_reopen"] = await self.open_all(lock_candidates,
                                                                     resume=True)
                    await self.close_all(lock_candidates)
                self.result["server_cpu_s"] = round(self.server_cpu(), 2)
                if self.redis is not None:
                    self.result["redis_cpu_s"] = round(cpu_seconds(self.redis.pids), 2)
        finally:
            await asyncio.to_thread(self.stop_servers)
        self.result["harness_cpu_s"] = round(sum(harness.cpu_times()[:2]) - harness_cpu0, 2)
        self.result["unexpected_closes"] = self.unexpected_closes
        self.result["dashboard_closes"] = self.dashboard_closes
        self.result["errors"] = self.errors
        self.result["server_log_errors"] = sum(
            s.log().count("Traceback") for s in self.servers)
        self.result["seconds"] = round(time.perf_counter() - loop_started, 1)
        self.result["lost_total"] = lost_total(self.result)
        return self.result

    @property
    def lock_size(self) -> int:
        return self.args.lock_size or self.n

    async def run_memory(self, label: str) -> dict[str, Any]:
        """Idle memory only: N sockets opened and held, server RSS per connection."""
        root = workdir()
        result: dict[str, Any] = {"label": label, "config": self.result["config"], "n": self.n,
                                  "deflate_offered": self.deflate,
                                  "server_deflate": self.args.server_deflate or "default"}
        try:
            await asyncio.to_thread(self.start_servers, root)
            urls = [s.url for s in self.servers]
            async with httpx.AsyncClient(
                base_url=urls[0], headers={"Authorization": f"Bearer {BENCH_STAFF_TOKEN}"},
                timeout=60,
            ) as http:
                main = await self.create_exam(http, "main", self.n, lock=False)
                await asyncio.sleep(1.0)
                rss_base = self.server_rss()
                candidates = [Candidate(self, s, urls[i % len(urls)]) for i, s in enumerate(main)]
                opened = await self.open_all(candidates)
                await asyncio.sleep(self.args.settle)
                held = await self.hold(candidates, self.args.deflate_hold)
                rss_held = self.server_rss()
                result.update({
                    "opened": opened["ok"], "held": held["alive"],
                    "negotiated": sum(1 for c in candidates if c.peer is not None
                                      and c.peer.ws.extensions),
                    "rss_base_mb": round(rss_base / 2**20, 1),
                    "rss_held_mb": round(rss_held / 2**20, 1),
                    "kib_per_conn": round((rss_held - rss_base) / max(1, opened["ok"]) / 1024,
                                          2),
                })
                await self.close_all(candidates)
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        finally:
            await asyncio.to_thread(self.stop_servers)
        return result


def lost_total(result: dict[str, Any]) -> int:
    """Everything the run lost: failed opens, dropped sockets, undelivered messages."""
    total = 0
    for phase in ("open", "lock_open", "lock_reopen"):
        total += int(result.get(phase, {}).get("failed", 0))
    for phase in ("hold", "targeted", "pause_all", "resume_all", "dashboard", "throughput",
                  "pause_repeats", "hall"):
        total += int(result.get(phase, {}).get("lost", 0))
    total += int(sum(result.get("dashboard_closes", {}).values()))
    return total + int(result.get("unexpected_closes", 0))


# -- reporting -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(), "cpu_model": model or platform.processor(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "platform": platform.platform(),
    }


COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("config", lambda r: r["config"]),
    ("N", lambda r: r["n"]),
    ("open/s", lambda r: r["open"]["per_second"]),
    ("open p99", lambda r: r["open"]["p99_ms"]),
    ("held", lambda r: r["hold"]["alive"]),
    ("KiB/conn", lambda r: r["memory"]["kib_per_conn"]),
    ("cmd p50", lambda r: r["targeted"]["p50_ms"]),
    ("cmd p99", lambda r: r["targeted"]["p99_ms"]),
    ("cmd max", lambda r: r["targeted"]["max_ms"]),
    ("pause-all last", lambda r: r["pause_all"]["last_ms"]),
    ("parsed", lambda r: r["pause_all"].get("last_parsed_ms")),
    ("pause REST", lambda r: r["pause_all"]["rest_ms"]),
    ("dash p50", lambda r: r["dashboard"]["p50_ms"]),
    ("dash p99", lambda r: r["dashboard"]["p99_ms"]),
    ("cpu/1k idle", lambda r: r["hold"]["cpu_s_per_1000_msgs"]),
    ("cpu/1k prog", lambda r: r["dashboard"]["cpu_s_per_1000_msgs"]),
    ("lock open/s", lambda r: r["lock_open"]["per_second"]),
    ("reopen/s", lambda r: r["lock_reopen"]["per_second"]),
    ("lost", lambda r: r["lost_total"]),
]


def table(runs: list[dict[str, Any]]) -> str:
    rows = [[name for name, _ in COLUMNS]]
    for run in runs:
        row = []
        for _, get in COLUMNS:
            try:
                value = get(run)
            except (KeyError, TypeError):
                value = "-"
            row.append("-" if value is None else str(value))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [" | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def chart(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in runs if "targeted" in r and "memory" in r]
    configs = sorted({r["config"] for r in ok})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for config in configs:
        points = sorted((r for r in ok if r["config"] == config), key=lambda r: r["n"])
        sizes = [r["n"] for r in points]
        axes[0].plot(sizes, [r["targeted"]["p99_ms"] for r in points], "o-",
                     label=f"{config} targeted p99")
        axes[0].plot(sizes, [r["dashboard"]["p99_ms"] for r in points], "^:",
                     label=f"{config} dashboard p99")
        axes[1].plot(sizes, [r["pause_all"]["last_ms"] for r in points], "s-",
                     label=f"{config}")
        axes[2].plot(sizes, [r["memory"]["kib_per_conn"] for r in points], "o-", label=config)
    axes[0].axhline(25, color="grey", ls="--", lw=0.8, label="target 25 ms")
    axes[0].set(title="Command / delta latency p99", xlabel="connected candidates",
                ylabel="ms", yscale="log")
    axes[1].axhline(250, color="grey", ls="--", lw=0.8, label="target 250 ms")
    axes[1].set(title='"Pause all": last candidate has it', xlabel="candidates paused",
                ylabel="ms", yscale="log")
    axes[2].axhline(20, color="grey", ls="--", lw=0.8, label="target 20 KiB")
    axes[2].set(title="Server RSS per idle connection", xlabel="connected candidates",
                ylabel="KiB")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def fan_out_figures(servers: list[ServerProcess]) -> list[dict[str, Any]]:
    """Per server: exams it serves and events it took from the subscription (fan-out by
    exam: a server hears only the exams it has sockets of)."""
    figures = []
    async with httpx.AsyncClient(timeout=10) as http:
        for index, server in enumerate(servers):
            values: dict[str, Any] = {"server": index}
            with contextlib.suppress(Exception):
                text = (await http.get(server.url + "/metrics")).text
                for line in text.splitlines():
                    name, _, value = line.partition(" ")
                    if name in ("realtime_exams_served", "realtime_events_received",
                                "realtime_candidate_connections"):
                        values[name.removeprefix("realtime_")] = int(float(value))
                    elif name.startswith("realtime_command_seconds_count"):
                        # staff commands this server answered (REST spread by --rest-to)
                        values["commands"] = values.get("commands", 0) + int(float(value))
            figures.append(values)
    return figures


def parse_config(raw: str) -> tuple[str, int, int]:
    backend, _, count = raw.partition(":")
    if backend == "peer":  # the python-socketio peer (one process, Redis manager)
        return backend, 1, 1
    if backend not in ("memory", "redis", "cluster"):
        raise argparse.ArgumentTypeError(f"unknown backend in {raw!r}")
    count = count or "1"
    if count.endswith("w"):
        return backend, 1, int(count[:-1])
    servers = int(count)
    if servers > 1 and backend == "memory":
        raise argparse.ArgumentTypeError("several servers need the redis backend")
    return backend, servers, 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="candidate socket counts, comma separated")
    parser.add_argument("--full", action="store_true", help="sizes 1000,5000,10000")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help="backend:servers, comma separated (memory:1, redis:1, redis:2, "
                        "redis:2w = one uvicorn --workers 2)")
    parser.add_argument("--out", default="bench-results", help="directory for results")
    parser.add_argument("--protocol", choices=["msgpack", "json"], default="msgpack")
    parser.add_argument("--deflate", action="store_true",
                        help="offer permessage-deflate, as browsers do")
    parser.add_argument("--no-ack", action="store_true", help="candidates do not ack commands")
    parser.add_argument("--hold", type=float, default=12.0,
                        help="seconds to hold the sockets idle (>= 2 ping intervals)")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--ping-interval", type=float, default=5.0)
    parser.add_argument("--commands", type=int, default=300, help="targeted commands per run")
    parser.add_argument("--command-rate", type=float, default=50.0, help="targeted commands/s")
    parser.add_argument("--progress-seconds", type=float, default=5.0,
                        help="spread each candidate's one progress report over this long")
    parser.add_argument("--exams", type=int, default=1,
                        help="split N over this many exams, exam k's candidates on server "
                        "k mod servers; the phases drive the first one (N/exams candidates)")
    parser.add_argument("--lock-size", type=int, default=0,
                        help="sessions of the lock_sessions exam (default N)")
    parser.add_argument("--open-concurrency", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=30.0, help="per-socket open timeout")
    parser.add_argument("--lost-after", type=float, default=5.0,
                        help="a message not there this long after it was due is lost")
    parser.add_argument("--run-budget", type=float, default=600.0,
                        help="seconds one run may take before it is abandoned")
    parser.add_argument("--quick", action="store_true",
                        help="short hold and few commands (smoke runs)")
    parser.add_argument("--profile", choices=["svg", "txt", "json"], default="",
                        help="record the first server with py-spy into --out: a flame graph "
                        "(svg), collapsed stacks (txt) or speedscope (json)")
    parser.add_argument("--launcher", default="",
                        help="run this Python script with uvicorn's arguments instead of "
                        "`python -m uvicorn` (to try a patched server)")
    parser.add_argument("--client-read", choices=READ_MODES, default=READ_MODES[0],
                        help="read-first (default): every socket's data is stamped as it is "
                        "read and parsed later, between the loop's polls, so one harness "
                        "process times arrivals as separate machines would; inline: parsed "
                        "(and acked) at once, socket after socket, as before the eighth "
                        "session (its figure is the `parsed` one)")
    parser.add_argument("--no-chart", action="store_true")
    new = parser.add_argument_group("comparison phases and the python-socketio peer")
    new.add_argument("--phases", default="all",
                     help="comma separated, of: classic (phases 1-6), throughput, pauses, hall; "
                     "'all' (default) or 'new' (the three comparison phases only)")
    new.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                     help="also run the python-socketio peer (config peer:1) at each size, "
                     "when a comparison phase runs (default on)")
    new.add_argument("--rates", default="50,200,1000,2000",
                     help="throughput: targeted commands per second, one step each")
    new.add_argument("--step-seconds", type=float, default=4.0,
                     help="throughput: seconds per rate step")
    new.add_argument("--step-max", type=int, default=10000,
                     help="throughput: at most this many commands per step")
    new.add_argument("--step-slack", type=float, default=5.0,
                     help="throughput: a step stops sending this long after it was due to end")
    new.add_argument("--step-pause", type=float, default=1.0,
                     help="throughput: seconds between steps")
    new.add_argument("--http-workers", type=int, default=64,
                     help="concurrent HTTP workers (and pooled connections) sending commands")
    new.add_argument("--profile-phases", default="",
                     help="comma-separated comparison phases (throughput, pauses) to record "
                          "with py-spy attached to the first server (raw stacks in --out)")
    new.add_argument("--rest-to", choices=["all", "first"], default="all",
                     help="comparison phases: REST commands round robin over every server "
                          "(as behind a balancer) or all to the first")
    new.add_argument("--pause-repeats", type=int, default=5,
                     help='"pause all" + "resume all" this many times')
    new.add_argument("--pause-gap", type=float, default=1.0,
                     help="seconds between the repeated bulk commands")
    new.add_argument("--pause-budget", type=float, default=180.0,
                     help="no new repeat starts after this many seconds")
    new.add_argument("--hall-seconds", type=float, default=20.0,
                     help="hall traffic duration (at most 600)")
    new.add_argument("--hall-period", type=float, default=5.0,
                     help="hall traffic: each candidate reports progress this often")
    new.add_argument("--hall-command-rate", type=float, default=50.0,
                     help="hall traffic: targeted commands per second meanwhile (acked)")
    new.add_argument("--server-deflate", choices=["on", "off", ""], default="",
                     help="uvicorn --ws-per-message-deflate (default: uvicorn's, on)")
    new.add_argument("--compare-deflate", action="store_true",
                     help="also measure idle RSS per connection for: server deflate on + "
                     "offered, on + not offered, off + offered (first config, each size)")
    new.add_argument("--deflate-sizes", default="",
                     help="--compare-deflate: at these sizes (default: every size)")
    new.add_argument("--deflate-hold", type=float, default=6.0,
                     help="--compare-deflate: seconds to hold the idle sockets")
    new.add_argument("--summary", default="",
                     help="also write the comparison table and headlines (markdown) here")
    return parser


def phase_list(args: argparse.Namespace) -> list[str]:
    raw = [p.strip() for p in str(args.phases).split(",") if p.strip()]
    if "all" in raw:
        return list(PHASES)
    if "new" in raw:
        raw = [p for p in raw if p != "new"] + list(NEW_PHASES)
    unknown = [p for p in raw if p not in PHASES]
    if unknown:
        raise SystemExit(f"unknown phases {unknown}: choose from {', '.join(PHASES)}")
    return raw


def source_state() -> dict[str, Any]:
    """The commit measured, and which server files differed from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "realtime").splitlines()
    return {"commit": git("rev-parse", "HEAD"), "realtime_changes": changed}


def write_results(out: Path, args: argparse.Namespace, started: float, limit: int,
                  runs: list[dict[str, Any]], deflate: list[dict[str, Any]] | None = None,
                  ) -> None:
    results = {
        "started_at": started, "machine": machine(), "source": source_state(),
        "open_files_limit": limit, "settings": dict(vars(args)), "runs": runs,
        "deflate": deflate or [],
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))


DEFLATE_CASES = (  # label, uvicorn --ws-per-message-deflate, client offers it
    ("server deflate on, offered (browsers)", "on", True),
    ("server deflate on, not offered", "on", False),
    ("server deflate off, offered", "off", True),
)


async def run_all(args: argparse.Namespace, out: Path, limit: int,
                  deflate: list[dict[str, Any]]) -> list[dict[str, Any]]:
    started = time.time()
    sizes = FULL_SIZES if args.full else tuple(int(s) for s in args.sizes.split(",") if s)
    configs = [parse_config(c.strip()) for c in args.configs.split(",") if c.strip()]
    if (args.peer and set(phase_list(args)) & set(NEW_PHASES)
            and not any(b == "peer" for b, _, _ in configs)):
        configs.append(("peer", 1, 1))
    runs: list[dict[str, Any]] = []
    if args.compare_deflate:
        backend, servers, workers = next((c for c in configs if c[0] != "peer"),
                                         ("memory", 1, 1))
        deflate_sizes = [int(s) for s in args.deflate_sizes.split(",") if s] or sizes
        for n in deflate_sizes:
            for label, setting, offered in DEFLATE_CASES:
                case = argparse.Namespace(**{**vars(args), "server_deflate": setting,
                                             "deflate": offered})
                bench = Bench(case, backend, servers, workers, n)
                print(f"bench: deflate {bench.result['config']} N={n}: {label} ...", flush=True)
                async with asyncio.timeout(args.run_budget):
                    deflate.append(await bench.run_memory(label))
                print(f"  {deflate[-1].get('kib_per_conn')} KiB/conn "
                      f"{deflate[-1].get('error', '')}", flush=True)
                write_results(out, args, started, limit, runs, deflate)
    for backend, servers, workers in configs:
        for n in sizes:
            bench = Bench(args, backend, servers, workers, n)
            print(f"bench: {bench.result['config']} N={n} ...", flush=True)
            try:
                async with asyncio.timeout(args.run_budget):
                    result = await bench.run()
            except Exception as exc:  # keep the other runs; say what broke
                result = {**bench.result, "error": f"{type(exc).__name__}: {exc}"[:2000],
                          "errors": bench.errors}
                print(f"bench: {bench.result['config']} N={n} failed: {result['error']}",
                      flush=True)
            runs.append(result)
            write_results(out, args, started, limit, runs, deflate)  # keeps a broken-off run
            if "error" not in result and "classic" in bench.phases and backend != "peer":
                print(table([result]).splitlines()[-1], flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.hold, args.settle, args.commands, args.ping_interval = 1.6, 0.5, 20, 0.5
        args.command_rate, args.progress_seconds, args.lost_after = 100.0, 0.5, 3.0
        args.step_seconds, args.step_pause, args.pause_repeats = 0.5, 0.2, 2
        args.pause_gap, args.hall_seconds, args.hall_period = 0.2, 1.5, 0.5
        args.hall_command_rate, args.deflate_hold = 20.0, 1.0
        if args.rates == "50,200,1000,2000":
            args.rates = "50,200"
    limit = raise_nofile()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    deflate: list[dict[str, Any]] = []
    runs = runner(run_all(args, out, limit, deflate))
    print()
    classic_runs = [r for r in runs if "error" not in r and "targeted" in r]
    if classic_runs:
        print(table(classic_runs))
    compared = [r for r in runs if "error" not in r and r.keys() & {"throughput", "hall",
                                                                    "pause_repeats"}]
    rates = parse_rates(args.rates)
    if compared:
        print()
        print(compare_table(compared, rates))
        print()
        print("\n".join(headlines(compared)))
    if deflate:
        print("\npermessage-deflate, server RSS per idle connection:")
        print("\n".join(deflate_lines(deflate)))
    if args.summary:
        write_summary(Path(args.summary), compared, rates, deflate)
    failed = [r for r in runs if "error" in r]
    for run in failed:
        print(f"FAILED {run['config']} N={run['n']}: {run['error']}")
    if not args.no_chart and classic_runs:
        chart(classic_runs, out / "bench.png")
    written = [out / "results.json"] + ([] if args.no_chart else [out / "bench.png"])
    print("\nresults: " + ", ".join(map(str, written)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
