"""The benchmark's comparison phases, and the python-socketio peer they are compared with.

Phases (run on the real server and on the peer, `loadtests/peer_socketio.py`, alike):

* `throughput`: targeted commands at rising rates (`--rates`, default 50,200,1000,2000/s),
  each step `--step-seconds` long (at most `--step-max` commands), pause/resume alternating
  per candidate, sent over a pool of `--http-workers` aiohttp workers; per rate: sent, applied,
  received, lost, delivery (REST call sent -> candidate has the command) and REST answer
  p50/p99, the achieved send rate (the harness says when it could not keep up), and the
  highest rate whose delivery p99 was <= 25 ms with nothing lost (`max_rate_p99_25ms`);
* `pause_repeats`: "pause all" then "resume all", `--pause-repeats` times: p50 over the repeats
  of the last candidate's arrival (read from its socket) and of the REST answer, and of when
  the harness had parsed the last frame (`parsed`) and its own CPU meanwhile;
* `hall`: every candidate reports progress every `--hall-period` s (spread evenly) for
  `--hall-seconds`, while targeted commands flow at `--hall-command-rate`/s (each acked) and a
  dashboard times each progress -> delta: messages/s handled, delta p50/p99, lost.

Every loop is bounded in count and time, and only 127.0.0.1 is spoken to.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import psutil

from loadtests.common import percentile
from loadtests.servers import BENCH_STAFF_TOKEN, RedisProcess, ServerProcess, rss_bytes, workdir
from loadtests.sioclient import SioPeer, connect_sio

if TYPE_CHECKING:
    from loadtests.bench import Bench

REALTIME_APP = "realtime.app:create_app"
PEER_APP = "loadtests.peer_socketio:create_app"
TARGET_P99_MS = 25.0
EXAM = "main"


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def p_ms(samples: list[float], pct: float) -> float | None:
    return ms(percentile(samples, pct))


def median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(percentile(kept, 50) or 0.0), 2) if kept else None


# -- processes ---------------------------------------------------------------------------------


class UvicornProcess(ServerProcess):
    """`ServerProcess` with another ASGI app and extra uvicorn arguments (e.g.
    `--ws-per-message-deflate false`)."""

    def __init__(self, *args: Any, app: str = REALTIME_APP, extra_args: list[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = app
        self.extra_args = list(extra_args or [])

    def command(self) -> list[str]:
        command = [self.app if part == REALTIME_APP else part for part in super().command()]
        return command + self.extra_args


def deflate_args(setting: str) -> list[str]:
    """uvicorn's permessage-deflate switch: "" leaves uvicorn's default (on)."""
    if setting in ("on", "off"):
        return ["--ws-per-message-deflate", "true" if setting == "on" else "false"]
    return []


# -- arrivals ----------------------------------------------------------------------------------


class Arrivals:
    """Where one command id arrived: at candidates, and at the proctor (`dashboard`).

    `arrivals`: when the harness read each candidate's frame from its socket, before parsing
    it (`WsPeer.arrived_at`); `parsed`: when it had parsed it (the only stamp before the
    eighth session: with one process reading every socket, it includes that process's own
    backlog)."""

    __slots__ = ("arrivals", "dashboard", "done", "expected", "parsed", "started")

    def __init__(self, started: float, expected: int | None = None) -> None:
        self.started = started
        self.expected = expected
        self.arrivals: list[float] = []
        self.parsed: list[float] = []
        self.dashboard: list[float] = []
        self.done = asyncio.Event()

    def arrived(self, at: float, parsed: float) -> None:
        self.arrivals.append(at)
        self.parsed.append(parsed)
        self.check()

    def check(self) -> None:
        if self.expected is not None and len(self.arrivals) >= self.expected:
            self.done.set()


# -- the peer's clients ------------------------------------------------------------------------


class PeerCandidate:
    """A candidate of the peer: a socket.io socket in the rooms of its exam and of itself."""

    def __init__(self, bench: Bench, candidate_id: str, url: str, exam: str = EXAM) -> None:
        self.bench = bench
        self.id = candidate_id
        self.url = url
        self.exam = exam
        self.peer: SioPeer | None = None
        self.position = 0
        self.alive = False

    def on_event(self, peer: SioPeer, name: str, data: Any) -> None:
        bench = self.bench
        if name == "ping":
            bench.pings += 1
        elif name == "command":
            now = time.perf_counter()
            bench.commands_received += 1
            command_id = data.get("command_id", "") if isinstance(data, dict) else ""
            tracker = bench.trackers.get(command_id)
            if tracker is not None:
                tracker.arrived(peer.arrived_at, now)
            if bench.ack:
                peer.emit("ack", {"command_id": command_id})

    def on_close(self, peer: SioPeer) -> None:
        if self.alive and not peer.closing:
            self.bench.unexpected_closes += 1
            self.bench.note_error(f"peer candidate socket closed by the server: {peer.close_code}")
        self.alive = False

    async def open(self, resume: bool = False) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        self.peer = await connect_sio(
            self.url, self.on_event, {"role": "candidate", "exam": self.exam, "candidate": self.id},
            on_close=self.on_close, deflate=self.bench.deflate, timeout=self.bench.timeout,
            reader=self.bench.reader)
        self.alive = True
        return time.perf_counter() - started, {"type": "opened"}

    def send_progress(self, position: int) -> None:
        if self.peer is not None:
            self.peer.emit("progress", {"position": position, "answered": position})

    def drop(self) -> None:
        self.alive = False
        if self.peer is not None:
            self.peer.abort()



class PeerProctor:
    """The peer's dashboard: a socket.io socket in the exam's proctors room."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.peer: SioPeer | None = None
        self.deltas = 0
        self.progress_sent: dict[str, float] = {}
        self.progress_latency: list[float] = []
        self.progress_done = asyncio.Event()
        self.progress_expected = 0

    def on_sio(self, peer: SioPeer, name: str, data: Any) -> None:
        if name == "event" and isinstance(data, dict):
            self.on_event(data, peer.arrived_at)
        elif name == "event_batch" and isinstance(data, dict):
            now = peer.arrived_at
            for event in data.get("events", []):
                self.on_event(event, now)

    def on_event(self, event: dict[str, Any], now: float) -> None:
        self.deltas += 1
        if event.get("kind") == "progress":
            sent = self.progress_sent.pop(event.get("session_id", ""), None)
            if sent is not None:
                self.progress_latency.append(now - sent)
                if len(self.progress_latency) >= self.progress_expected:
                    self.progress_done.set()
        command_id = (event.get("details") or {}).get("command_id")
        if command_id and event.get("kind") != "delivered":
            tracker = self.bench.trackers.get(command_id)
            if tracker is not None:
                tracker.dashboard.append(now)

    @property
    def alive(self) -> bool:
        return self.peer is not None and not self.peer.closed

    async def watch(self, url: str, exam_id: str) -> float:
        started = time.perf_counter()
        self.peer = await connect_sio(url, self.on_sio, {"role": "proctor", "exam": exam_id},
                                      timeout=self.bench.timeout, reader=self.bench.reader)
        return time.perf_counter() - started


# -- commands over HTTP ------------------------------------------------------------------------


class Commander:
    """Commands over aiohttp (pooled): the real server's REST API or the peer's `/command`.

    With several base URLs, commands go to them in turn (round robin), as a balancer in front of
    interchangeable processes would send them.
    """

    def __init__(self, base_url: str | list[str], peer: bool, workers: int,
                 exam: str = EXAM) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.base_urls = [u.rstrip("/") for u in urls] or [""]
        self.turn = 0
        self.peer = peer
        self.exam = exam
        self.workers = workers
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Commander:
        connector = aiohttp.TCPConnector(limit=self.workers, limit_per_host=self.workers,
                                         force_close=False, enable_cleanup_closed=False)
        self.http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=180),
            headers={"Authorization": f"Bearer {BENCH_STAFF_TOKEN}"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()

    async def command(self, target: str | list[str], action: str, command_id: str) -> int:
        """Send one command; the number of sessions it applied to (0: refused or skipped)."""
        assert self.http is not None
        base_url = self.base_urls[self.turn % len(self.base_urls)]
        self.turn += 1
        if self.peer:
            url = f"{base_url}/command"
            body: dict[str, Any] = {"exam": self.exam, "target": target, "action": action,
                                    "command_id": command_id}
        else:
            url = f"{base_url}/api/v1/exams/{self.exam}/commands"
            body = {"action": action, "target": target, "command_id": command_id}
        for attempt in range(2):
            try:
                async with self.http.post(url, json=body) as response:
                    data = await response.json(content_type=None)
                    if response.status != 200 or not isinstance(data, dict):
                        return 0
                break
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                # a pooled connection the server had just closed (keep-alive): the command id
                # is an idempotency key, so sending it again applies nothing twice
                if attempt or self.peer:
                    raise
        applied = data.get("applied")
        if isinstance(applied, list):
            return len(applied)
        return int(applied or 0)


# -- phases ------------------------------------------------------------------------------------


async def wait_trackers(trackers: list[Arrivals], deadline: float) -> None:
    """Until every tracker is done or the deadline passes (bounded)."""
    pending = [t for t in trackers if not t.done.is_set()]
    while pending and time.perf_counter() < deadline:
        await asyncio.sleep(0.02)
        pending = [t for t in pending if not t.done.is_set()]


async def command_step(bench: Bench, cmd: Commander, candidates: list[Any], rate: float,
                       count: int, paused: set[str], tag: str) -> dict[str, Any]:
    """`count` targeted pause/resume commands at `rate`/s from a bounded pool of workers."""
    args = bench.args
    live = [c for c in candidates if c.alive]
    if not live or count <= 0:
        return {"rate_per_s": rate, "sent": 0, "applied": 0, "received": 0, "lost": 0}
    busy: set[str] = set()
    rest: list[float] = []
    lag: list[float] = []
    applied: list[Arrivals] = []
    errors: dict[str, int] = {}
    counters = {"next": 0, "sent": 0, "skipped": 0, "not_applied": 0}
    budget = count / rate + args.step_slack  # the step ends then even if sends lag behind
    started = time.perf_counter()
    last_send = started

    async def worker() -> None:
        nonlocal last_send
        while counters["next"] < count:
            i = counters["next"]
            counters["next"] += 1
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() - started > budget:
                return
            candidate = None
            for k in range(16):
                choice = live[(i + k) % len(live)]
                if choice.alive and choice.id not in busy:
                    candidate = choice
                    break
            if candidate is None:
                counters["skipped"] += 1
                continue
            busy.add(candidate.id)
            action = "resume" if candidate.id in paused else "pause"
            command_id = f"{tag}{i}-{uuid.uuid4().hex[:6]}"
            sent_at = time.perf_counter()
            lag.append(sent_at - due)
            last_send = max(last_send, sent_at)
            tracker = Arrivals(sent_at, expected=1)
            bench.trackers[command_id] = tracker
            counters["sent"] += 1
            try:
                n = await cmd.command(candidate.id, action, command_id)
            except Exception as exc:  # refused connections, timeouts
                key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1
                n = 0
            rest.append(time.perf_counter() - sent_at)
            busy.discard(candidate.id)
            if n:
                applied.append(tracker)
                (paused.add if action == "pause" else paused.discard)(candidate.id)
            else:
                counters["not_applied"] += 1
                bench.trackers.pop(command_id, None)

    cpu0 = bench.server_cpu()
    redis_cpu0 = bench.redis_cpu()
    harness = psutil.Process()
    harness_cpu0 = sum(harness.cpu_times()[:2])
    workers = max(1, min(args.http_workers, count))
    await asyncio.gather(*(worker() for _ in range(workers)))
    send_seconds = last_send - started
    harness_cpu = (sum(harness.cpu_times()[:2]) - harness_cpu0) / max(
        1e-6, time.perf_counter() - started)
    await wait_trackers(applied, time.perf_counter() + args.lost_after)
    server_cpu = bench.server_cpu() - cpu0  # sent, applied, delivered, acked (mostly)
    redis_cpu = bench.redis_cpu() - redis_cpu0
    raw_cpu = server_cpu
    # less what the server spends idle meanwhile (heartbeat, sweeper, presence)
    server_cpu = max(0.0, server_cpu - bench.idle_cpu_rate * (time.perf_counter() - started))
    delivery = [t.arrivals[0] - t.started for t in applied if t.arrivals]
    parsed = [t.parsed[0] - t.started for t in applied if t.parsed]
    if os.environ.get("BENCH_DELIVERY_LOG"):  # measurement only: each delivery, when sent
        offset = time.time() - time.perf_counter()
        lines = [f"{tag} {t.started + offset:.3f} {t.arrivals[0] - t.started:.4f}\n"
                 for t in applied if t.arrivals]
        with Path(os.environ["BENCH_DELIVERY_LOG"]).open("a", encoding="utf-8") as log:  # noqa: ASYNC230
            log.writelines(lines)
    for key in [k for k, t in bench.trackers.items() if t in applied]:
        bench.trackers.pop(key, None)
    sent = counters["sent"]
    achieved = (sent - 1) / send_seconds if sent > 1 and send_seconds > 0 else None
    client_limited = achieved is not None and achieved < 0.9 * rate
    limit = None
    if client_limited and achieved is not None:
        # Little's law: workers kept busy = rate x answer time. All of them busy waiting for
        # answers: the server's answers are the limit; else the harness itself (its CPU).
        in_flight = achieved * (sum(rest) / len(rest) if rest else 0.0)
        limit = "server answers" if in_flight >= 0.8 * workers else "harness"
    return {
        "rate_per_s": rate, "planned": count, "sent": sent, "applied": len(applied),
        "not_applied": counters["not_applied"], "skipped_busy": counters["skipped"],
        "received": len(delivery), "lost": len(applied) - len(delivery),
        "achieved_per_s": round(achieved, 1) if achieved is not None else None,
        "client_limited": client_limited, "limited_by": limit, "workers": workers,
        "harness_cpu_share": round(harness_cpu, 2), "send_lag_p99_ms": p_ms(lag, 99),
        "p50_ms": p_ms(delivery, 50), "p99_ms": p_ms(delivery, 99),
        "max_ms": ms(max(delivery) if delivery else None),
        "parsed_p99_ms": p_ms(parsed, 99),
        "rest_p50_ms": p_ms(rest, 50), "rest_p99_ms": p_ms(rest, 99),
        "http_errors": errors, "server_cpu_s": round(server_cpu, 3),
        "server_cpu_ms_per_command": round(1000 * server_cpu / sent, 3) if sent else None,
        "server_cpu_raw_ms_per_command": round(1000 * raw_cpu / sent, 3) if sent else None,
        "redis_cpu_ms_per_command": round(1000 * redis_cpu / sent, 3) if sent else None,
    }


def parse_rates(raw: str) -> list[float]:
    rates = [float(r) for r in raw.split(",") if r.strip()][:12]
    return [r for r in rates if 0 < r <= 100_000]


async def throughput(bench: Bench, cmd: Commander, candidates: list[Any]) -> dict[str, Any]:
    args = bench.args
    paused: set[str] = set()
    steps = []
    for rate in parse_rates(args.rates):
        count = max(1, min(int(rate * args.step_seconds), args.step_max))
        step = await command_step(bench, cmd, candidates, rate, count, paused, f"r{int(rate)}-")
        steps.append(step)
        note = ""
        if step["client_limited"]:
            note = (f" (short of {rate:g}/s: limited by the {step['limited_by']}, "
                    f"REST p50 {step['rest_p50_ms']} ms with {step['workers']} workers)")
        print(f"  {bench.result['config']} N={bench.n} rate {rate:g}/s: sent {step['sent']} "
              f"at {step['achieved_per_s']}/s{note}, delivery p99 {step['p99_ms']} ms, "
              f"lost {step['lost']}, server CPU {step.get('server_cpu_ms_per_command')} ms "
              f"per command (Redis {step.get('redis_cpu_ms_per_command')} ms)", flush=True)
        await asyncio.sleep(args.step_pause)
    if paused and not cmd.peer:  # everyone active again for the next phases
        with contextlib.suppress(Exception):
            await cmd.command(sorted(paused), "resume", f"unpause-{uuid.uuid4().hex[:8]}")
    held = [s for s in steps if s["p99_ms"] is not None and s["p99_ms"] <= TARGET_P99_MS
            and s["lost"] == 0 and s["received"] > 0 and not s["client_limited"]]
    best = max(held, key=lambda s: s["rate_per_s"]) if held else None
    return {
        "steps": steps, "lost": sum(s["lost"] for s in steps),
        "max_rate_p99_25ms": best["rate_per_s"] if best else None,
        "max_rate_achieved_per_s": best["achieved_per_s"] if best else None,
        "client_limited_rates": [s["rate_per_s"] for s in steps if s["client_limited"]],
        "max_sent_per_s": max((s["achieved_per_s"] or 0.0 for s in steps), default=None),
    }


async def bulk_once(bench: Bench, cmd: Commander, action: str, expected: int) -> dict[str, Any]:
    command_id = f"bulk-{action}-{uuid.uuid4().hex[:8]}"
    cpu0, redis_cpu0 = bench.server_cpu(), bench.redis_cpu()
    harness = psutil.Process()
    harness_cpu0 = sum(harness.cpu_times()[:2])
    tracker = Arrivals(time.perf_counter())
    bench.trackers[command_id] = tracker
    collecting = gc.isenabled()
    gc.disable()  # the harness collects between commands, not while it times one
    try:
        applied = await cmd.command("all", action, command_id)
        rest_seconds = time.perf_counter() - tracker.started
        tracker.expected = applied if not cmd.peer else expected
        tracker.check()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bench.args.lost_after + 0.001 * applied):
                await tracker.done.wait()
    finally:
        bench.trackers.pop(command_id, None)
        if collecting:
            gc.enable()
    # the harness's own CPU from the call until it had parsed the last frame (and acked it)
    harness_cpu = sum(harness.cpu_times()[:2]) - harness_cpu0
    server_cpu = bench.server_cpu() - cpu0  # the command, its fan-out and the acks so far
    redis_cpu = bench.redis_cpu() - redis_cpu0
    raw_cpu = server_cpu
    server_cpu = max(0.0, server_cpu - bench.idle_cpu_rate * (time.perf_counter()
                                                               - tracker.started))
    arrivals = [t - tracker.started for t in tracker.arrivals]
    parsed = [t - tracker.started for t in tracker.parsed]
    dashboard = [t - tracker.started for t in tracker.dashboard]
    return {
        "hall": expected, "applied": applied, "received": len(arrivals),
        "lost": max(0, (tracker.expected or 0) - len(arrivals)),
        "last_ms": ms(max(arrivals) if arrivals else None),
        "last_parsed_ms": ms(max(parsed) if parsed else None),
        "p50_ms": p_ms(arrivals, 50), "rest_ms": ms(rest_seconds),
        "dashboard_last_ms": ms(max(dashboard) if dashboard else None),
        "server_cpu_ms": round(1000 * server_cpu, 1), "server_cpu_raw_ms": round(1000 * raw_cpu, 1),
        "redis_cpu_ms": round(1000 * redis_cpu, 1),
        "harness_cpu_ms": round(1000 * harness_cpu, 1),
    }


async def pause_repeats(bench: Bench, cmd: Commander, candidates: list[Any]) -> dict[str, Any]:
    args = bench.args
    pauses, resumes = [], []
    deadline = time.perf_counter() + args.pause_budget
    for _ in range(max(1, min(args.pause_repeats, 50))):
        if time.perf_counter() > deadline:
            break
        expected = sum(1 for c in candidates if c.alive)
        pauses.append(await bulk_once(bench, cmd, "pause", expected))
        print(f"  {bench.result['config']} N={bench.n} pause all: last {pauses[-1]['last_ms']} "
              f"ms (parsed {pauses[-1]['last_parsed_ms']} ms), REST {pauses[-1]['rest_ms']} ms, "
              f"server CPU {pauses[-1]['server_cpu_ms']} ms ({pauses[-1]['server_cpu_raw_ms']} "
              f"ms before taking off idle work), Redis CPU {pauses[-1]['redis_cpu_ms']} ms, "
              f"harness CPU {pauses[-1]['harness_cpu_ms']} ms", flush=True)
        await asyncio.sleep(args.pause_gap)
        resumes.append(await bulk_once(bench, cmd, "resume", expected))
        await asyncio.sleep(args.pause_gap)
    return summarize_pauses(bench.n, pauses, resumes)


def whole_hall(bulk: dict[str, Any], n: int) -> bool:
    """A bulk command that reached all `n` candidates of the run: only such a repeat times
    "the whole hall" (a server that dropped candidates earlier fans out to fewer)."""
    return bool(bulk["hall"] == n and bulk["received"] == n and bulk["lost"] == 0)


def summarize_pauses(n: int, pauses: list[dict[str, Any]],
                     resumes: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats that reached the whole hall; the smallest hall reached is
    kept, so a figure missing for that reason says why."""
    whole_pauses = [p for p in pauses if whole_hall(p, n)]
    whole_resumes = [r for r in resumes if whole_hall(r, n)]
    return {
        "repeats": len(pauses), "pause": pauses, "resume": resumes,
        "whole_hall_repeats": len(whole_pauses),
        "smallest_hall": min((b["hall"] for b in pauses + resumes), default=None),
        "pause_last_p50_ms": median([p["last_ms"] for p in whole_pauses]),
        "pause_last_parsed_p50_ms": median([p.get("last_parsed_ms") for p in whole_pauses]),
        "pause_rest_p50_ms": median([p["rest_ms"] for p in whole_pauses]),
        "resume_last_p50_ms": median([r["last_ms"] for r in whole_resumes]),
        "resume_rest_p50_ms": median([r["rest_ms"] for r in whole_resumes]),
        "pause_server_cpu_p50_ms": median([p["server_cpu_ms"] for p in whole_pauses]),
        "pause_server_cpu_raw_p50_ms": median([p["server_cpu_raw_ms"] for p in whole_pauses]),
        "pause_redis_cpu_p50_ms": median([p["redis_cpu_ms"] for p in whole_pauses]),
        "pause_harness_cpu_p50_ms": median([p.get("harness_cpu_ms") for p in whole_pauses]),
        "last_p50_ms": median([b["last_ms"] for b in whole_pauses + whole_resumes]),
        "applied": sum(b["applied"] for b in pauses + resumes),
        "received": sum(b["received"] for b in pauses + resumes),
        "lost": sum(b["lost"] for b in pauses + resumes),
    }


async def hall(bench: Bench, cmd: Commander, candidates: list[Any], proctor: Any) -> dict[str, Any]:
    """Progress from everyone every `--hall-period` s, commands at `--hall-command-rate`."""
    args = bench.args
    live = [c for c in candidates if c.alive]
    seconds = max(0.5, min(args.hall_seconds, 600.0))
    period = max(0.1, args.hall_period)
    n = len(live)
    rounds = max(1, math.ceil(seconds / period))
    proctor.progress_latency = []
    proctor.progress_sent = {}
    proctor.progress_expected = n * rounds
    proctor.progress_done.clear()
    sent0 = sum(c.peer.sent for c in live if c.peer is not None)
    recv0 = sum(c.peer.received for c in live if c.peer is not None)
    acks0 = bench.commands_received
    deltas0 = proctor.deltas
    cpu0 = bench.server_cpu()
    started = time.perf_counter()
    progress_sent = 0

    async def progress() -> None:
        nonlocal progress_sent
        for r in range(rounds):
            for j, candidate in enumerate(live):
                due = started + r * period + period * j / max(1, n)
                delay = due - time.perf_counter()
                if delay > 0.002:
                    await asyncio.sleep(delay)
                if not candidate.alive:
                    continue
                candidate.position += 1
                proctor.progress_sent[candidate.id] = time.perf_counter()
                candidate.send_progress(candidate.position)
                progress_sent += 1

    async def commands() -> dict[str, Any]:
        rate = args.hall_command_rate
        if rate <= 0:
            return {}
        count = min(int(rate * seconds), args.step_max)
        return await command_step(bench, cmd, live, rate, count, set(), "h-")

    _, command_stats = await asyncio.gather(progress(), commands())
    elapsed = time.perf_counter() - started
    proctor.progress_expected = progress_sent
    if len(proctor.progress_latency) >= progress_sent:
        proctor.progress_done.set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.lost_after):
            await proctor.progress_done.wait()
    cpu = bench.server_cpu() - cpu0
    client_msgs = sum(c.peer.sent for c in live if c.peer is not None) - sent0
    server_msgs = sum(c.peer.received for c in live if c.peer is not None) - recv0
    acks = bench.commands_received - acks0 if bench.ack else 0
    received = len(proctor.progress_latency)
    if command_stats.get("applied") and not cmd.peer:  # leave everyone active
        paused = [c.id for c in live if getattr(c, "status", "") == "paused"]
        if paused:
            with contextlib.suppress(Exception):
                await cmd.command(paused, "resume", f"unpause-{uuid.uuid4().hex[:8]}")
    return {
        "candidates": n, "seconds": round(elapsed, 2), "period_s": period,
        "progress_sent": progress_sent, "acks": acks,
        "client_msgs": client_msgs, "client_msgs_per_s": round(client_msgs / elapsed, 1),
        "progress_acks_per_s": round((progress_sent + acks) / elapsed, 1),
        "server_msgs_to_candidates": server_msgs,
        "dashboard_deltas": proctor.deltas - deltas0,
        "received": received, "progress_lost": max(0, progress_sent - received),
        "lost": max(0, progress_sent - received) + int(command_stats.get("lost", 0)),
        "p50_ms": p_ms(proctor.progress_latency, 50), "p99_ms": p_ms(proctor.progress_latency, 99),
        "max_ms": ms(max(proctor.progress_latency) if proctor.progress_latency else None),
        "commands": command_stats, "server_cpu_s": round(cpu, 3),
        "cpu_s_per_1000_msgs": round(cpu / (client_msgs + received) * 1000, 4)
        if client_msgs + received else None,
    }


NEW_PHASES = ("throughput", "pauses", "hall")


@contextlib.contextmanager
def phase_profile(bench: Bench, phase: str) -> Any:
    """`--profile-phases`: py-spy attached to the first server for this phase only (raw
    collapsed stacks), so a profile shows the phase and not the opens before it."""
    wanted = [p for p in bench.args.profile_phases.split(",") if p.strip()]
    if phase not in wanted or not bench.servers or bench.args.profile:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(bench.args.out) / f"phase-{phase}-{bench.result['config']}-{bench.n}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    recorder = subprocess.Popen(
        [spy, "record", "-r", "250", "--format", "raw", "-o", str(out.resolve()),
         "--pid", str(bench.servers[0].server_pids()[0])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait(5)


async def run_new_phases(bench: Bench, base_url: str | list[str], candidates: list[Any],
                         proctor: Any,
                         peer: bool, rewatch: Any = None) -> None:
    """The comparison phases selected by `--phases`, results into `bench.result`."""
    phases = bench.phases
    # The server's idle CPU (heartbeat, sweeper, presence) per second, taken off the CPU the
    # phases report per command and per bulk command.
    cpu0, idle0 = bench.server_cpu(), time.perf_counter()
    await asyncio.sleep(bench.args.settle)
    bench.idle_cpu_rate = (bench.server_cpu() - cpu0) / max(1e-3, time.perf_counter() - idle0)
    bench.result["idle_server_cpu_ms_per_s"] = round(1000 * bench.idle_cpu_rate, 1)
    async with Commander(base_url, peer, bench.args.http_workers) as cmd:
        if "throughput" in phases:
            with phase_profile(bench, "throughput"):
                bench.result["throughput"] = await throughput(bench, cmd, candidates)
            await asyncio.sleep(bench.args.settle)
        if "pauses" in phases:
            with phase_profile(bench, "pauses"):
                bench.result["pause_repeats"] = await pause_repeats(bench, cmd, candidates)
            await asyncio.sleep(bench.args.settle)
        if "hall" in phases:
            if not proctor.alive and rewatch is not None:
                proctor = await rewatch()
            bench.result["hall"] = await hall(bench, cmd, candidates, proctor)


async def run_peer(bench: Bench) -> dict[str, Any]:
    """One run against the peer: open, hold, memory, then the comparison phases."""
    root = workdir("rt-bench-peer-")
    bench.result["workdir"] = str(root)
    loop_started = time.perf_counter()
    try:
        def start() -> None:
            bench.redis = RedisProcess(root)
            bench.redis.start()
            env = {"PEER_REDIS_URL": bench.redis.url,
                   "PEER_PING_INTERVAL": str(bench.args.ping_interval)}
            bench.servers.append(UvicornProcess(
                root, env=env, app=PEER_APP, extra_args=bench.server_args).start())

        await asyncio.to_thread(start)
        url = bench.servers[0].url
        await asyncio.sleep(1.0)
        rss_base = bench.server_rss()
        candidates = [PeerCandidate(bench, f"{EXAM}-{i}", url) for i in range(bench.n)]
        proctor = PeerProctor(bench)
        snapshot_s = await proctor.watch(url, EXAM)
        bench.result["open"] = await bench.open_all(candidates)  # type: ignore[arg-type]
        bench.result["open"]["snapshot_ms"] = ms(snapshot_s)
        await asyncio.sleep(bench.args.settle)
        bench.result["hold"] = await bench.hold(candidates, bench.args.hold)  # type: ignore[arg-type]
        rss_held = bench.server_rss()
        opened = max(1, bench.result["open"]["ok"])
        bench.result["memory"] = {
            "rss_base_mb": round(rss_base / 2**20, 1),
            "rss_held_mb": round(rss_held / 2**20, 1),
            "kib_per_conn": round((rss_held - rss_base) / opened / 1024, 2),
            "redis_rss_mb": round(rss_bytes(bench.redis.pids) / 2**20, 1)
            if bench.redis else None,
        }

        async def rewatch() -> PeerProctor:
            fresh = PeerProctor(bench)
            await fresh.watch(url, EXAM)
            return fresh

        await run_new_phases(bench, url, candidates, proctor, peer=True, rewatch=rewatch)
        bench.result["still_open"] = sum(1 for c in candidates if c.alive)
        for candidate in candidates:
            candidate.drop()
        if proctor.peer is not None:
            proctor.peer.close()
        await asyncio.sleep(0.5)
        bench.result["server_cpu_s"] = round(bench.server_cpu(), 2)
    finally:
        await asyncio.to_thread(bench.stop_servers)
    bench.result["unexpected_closes"] = bench.unexpected_closes
    bench.result["errors"] = bench.errors
    bench.result["server_log_errors"] = sum(s.log().count("Traceback") for s in bench.servers)
    bench.result["seconds"] = round(time.perf_counter() - loop_started, 1)
    return bench.result


# -- reporting ---------------------------------------------------------------------------------


def step_at(run: dict[str, Any], rate: float, key: str) -> Any:
    for step in run.get("throughput", {}).get("steps", []):
        if step["rate_per_s"] == rate:
            return step.get(key)
    return None


def compare_columns(rates: list[float]) -> list[tuple[str, Any]]:
    columns: list[tuple[str, Any]] = [
        ("config", lambda r: r["config"]),
        ("N", lambda r: r["n"]),
        ("held", lambda r: r["hold"]["alive"]),
        ("KiB/conn", lambda r: r["memory"]["kib_per_conn"]),
    ]
    for rate in rates:
        columns.append((f"p99@{rate:g}", lambda r, rate=rate: step_at(r, rate, "p99_ms")))
    columns += [
        (f"sent/s@{rates[-1]:g}" if rates else "sent/s",
         lambda r: step_at(r, rates[-1], "achieved_per_s") if rates else None),
        ("max rate p99<=25", lambda r: r["throughput"]["max_rate_p99_25ms"]),
        ("pause-all last p50", lambda r: r["pause_repeats"]["pause_last_p50_ms"]),
        ("parsed p50", lambda r: r["pause_repeats"].get("pause_last_parsed_p50_ms")),
        ("pause REST p50", lambda r: r["pause_repeats"]["pause_rest_p50_ms"]),
        ("pause CPU ms", lambda r: r["pause_repeats"].get("pause_server_cpu_p50_ms")),
        ("hall msgs/s", lambda r: r["hall"]["progress_acks_per_s"]),
        ("hall dash p50", lambda r: r["hall"]["p50_ms"]),
        ("hall dash p99", lambda r: r["hall"]["p99_ms"]),
        ("lost", lambda r: r.get("lost_total")),
    ]
    return columns


def compare_rows(runs: list[dict[str, Any]], rates: list[float]) -> list[list[str]]:
    columns = compare_columns(rates)
    rows = [[name for name, _ in columns]]
    for run in runs:
        row = []
        for _, get in columns:
            try:
                value = get(run)
            except (KeyError, TypeError, IndexError):
                value = None
            row.append("-" if value is None else str(value))
        rows.append(row)
    return rows


def compare_table(runs: list[dict[str, Any]], rates: list[float], markdown: bool = False) -> str:
    rows = compare_rows(runs, rates)
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---" if i < 1 else "---:" for i in range(len(rows[0])))
                     + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def rate_table(runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per run and throughput step."""
    head = ["config", "N", "rate/s", "sent/s", "sent", "applied", "received", "lost",
            "delivery p50", "delivery p99", "REST p50", "REST p99", "limited by"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for run in runs:
        for step in run.get("throughput", {}).get("steps", []):
            cells = [run["config"], run["n"], f"{step['rate_per_s']:g}", step["achieved_per_s"],
                     step["sent"], step["applied"], step["received"], step["lost"],
                     step["p50_ms"], step["p99_ms"], step["rest_p50_ms"], step["rest_p99_ms"],
                     step.get("limited_by") or ""]
            lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def ratio_text(ours: float | None, peer: float | None, lower_is_better: bool,
               better: str, worse: str) -> str:
    if ours is None or peer is None or ours <= 0 or peer <= 0:
        return "no ratio"
    ratio = peer / ours if lower_is_better else ours / peer
    if ratio >= 1:
        return f"{ratio:.1f}x {better}"
    return f"{1 / ratio:.1f}x {worse}"


def headline_values(run: dict[str, Any]) -> dict[str, float | None]:
    def get(*path: str) -> Any:
        value: Any = run
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    return {
        "max_rate": get("throughput", "max_rate_p99_25ms"),
        "max_sent": get("throughput", "max_sent_per_s"),
        "pause_last": get("pause_repeats", "pause_last_p50_ms"),
        "pause_parsed": get("pause_repeats", "pause_last_parsed_p50_ms"),
        "pause_rest": get("pause_repeats", "pause_rest_p50_ms"),
        "hall_rate": get("hall", "progress_acks_per_s"),
        "hall_p50": get("hall", "p50_ms"),
        "hall_p99": get("hall", "p99_ms"),
        "kib": get("memory", "kib_per_conn"),
        "open_rate": get("open", "per_second"),
    }


HEADLINES = [
    # key, label, unit, lower is better, better word, worse word
    ("max_rate", "targeted rate held at delivery p99 <= 25 ms", "/s", False, "higher", "lower"),
    ("max_sent", "targeted commands answered per second, best step", "/s", False, "higher",
     "lower"),
    ("pause_last", "pause-all last candidate (p50 of repeats)", " ms", True, "faster", "slower"),
    ("pause_parsed", "pause-all last candidate parsed by the harness (p50 of repeats)", " ms",
     True, "faster", "slower"),
    ("pause_rest", "pause-all REST answer (p50 of repeats)", " ms", True, "faster", "slower"),
    ("hall_rate", "hall traffic progress+acks handled", " msg/s", False, "higher", "lower"),
    ("hall_p50", "hall dashboard delta p50", " ms", True, "faster", "slower"),
    ("hall_p99", "hall dashboard delta p99", " ms", True, "faster", "slower"),
    ("kib", "server RSS per idle connection", " KiB", True, "smaller", "larger"),
    ("open_rate", "opens per second", "/s", False, "higher", "lower"),
]


def headlines(runs: list[dict[str, Any]]) -> list[str]:
    """Each real-server run's headline figures with their ratio to the peer at the same N."""
    peers = {r["n"]: r for r in runs if r.get("backend") == "peer" and "error" not in r}
    lines: list[str] = []
    for run in runs:
        if run.get("backend") == "peer" or "error" in run or not (
                {"throughput", "pause_repeats", "hall"} & run.keys()):
            continue
        peer = peers.get(run["n"])
        ours_v = headline_values(run)
        peer_v = headline_values(peer) if peer else {}
        lines.append(f"{run['config']} N={run['n']}:")
        for node in run.get("fan_out") or []:
            if "events_received" in node:
                lines.append(
                    f"  server {node['server']}: {node.get('candidate_connections')} candidates,"
                    f" {node.get('exams_served')} exams served, "
                    f"{node['events_received']} events received, "
                    f"{node.get('commands', 0)} staff commands answered")
        for key, label, unit, lower, better, worse in HEADLINES:
            ours, theirs = ours_v.get(key), peer_v.get(key)
            if ours is None and theirs is None:
                continue
            if peer is None:
                lines.append(f"  {label} {ours}{unit}")
                continue
            ratio = ratio_text(ours, theirs, lower, better, worse)
            lines.append(f"  {label} {ours}{unit} (peer {theirs}{unit}, {ratio})")
        for who, source in (("ours", run), ("the peer's", peer)):
            note = partial_hall_note(source)
            if note:
                lines.append(f"  note: {who} {note}")
        for step in run.get("throughput", {}).get("steps", []):
            if step.get("client_limited"):
                lines.append(
                    f"  note: at {step['rate_per_s']:g}/s only {step['achieved_per_s']}/s were "
                    f"sent, limited by the {step['limited_by']} (REST p50 "
                    f"{step['rest_p50_ms']} ms, {step['workers']} workers); such a step "
                    "does not count as held")
    return lines


def partial_hall_note(run: dict[str, Any] | None) -> str | None:
    """Why a run's "pause all" figures are missing: no repeat reached its whole hall."""
    pauses = (run or {}).get("pause_repeats")
    if not pauses or pauses.get("whole_hall_repeats", 1) or not pauses.get("repeats"):
        return None
    assert run is not None
    return (f'"pause all" reached at most {pauses["smallest_hall"]} of {run["n"]} '
            "candidates in some repeats and never all of them (the rest had been dropped "
            "before): its pause figures are left out")


def ratio_table(runs: list[dict[str, Any]]) -> str:
    """Markdown: each real-server run's headline figures, the peer's at the same N, ratio."""
    peers = {r["n"]: r for r in runs if r.get("backend") == "peer" and "error" not in r}
    lines = ["| config | N | figure | ours | peer | ratio |", "|---|---:|---|---:|---:|---|"]
    for run in runs:
        if run.get("backend") == "peer" or "error" in run:
            continue
        peer = peers.get(run["n"])
        ours_v = headline_values(run)
        peer_v = headline_values(peer) if peer else {}
        for key, label, unit, lower, better, worse in HEADLINES:
            ours, theirs = ours_v.get(key), peer_v.get(key)
            if ours is None and theirs is None:
                continue
            ratio = ratio_text(ours, theirs, lower, better, worse) if peer else "no peer run"
            cells = [run["config"], run["n"], f"{label} ({unit.strip()})", ours, theirs, ratio]
            lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def deflate_lines(results: list[dict[str, Any]]) -> list[str]:
    ok = [r for r in results if r.get("kib_per_conn") is not None]
    lines = [f"  {r['label']}: {r['kib_per_conn']} KiB/conn (held {r['held']}, "
             f"deflate negotiated on {r['negotiated']})" for r in ok]
    if ok:
        best = min(ok, key=lambda r: r["kib_per_conn"])
        lines.append(f"  cheapest per connection: {best['label']}")
    return lines


def write_summary(path: Path, runs: list[dict[str, Any]], rates: list[float],
                  deflate: list[dict[str, Any]]) -> None:
    text = ["# Benchmark comparison", "", compare_table(runs, rates, markdown=True), "",
            "```", *headlines(runs), "```", "", "Headline figures against the peer:", "",
            ratio_table(runs), "", "Throughput steps:", "", rate_table(runs)]
    if deflate:
        text += ["", "```", "permessage-deflate, server RSS per idle connection:",
                 *deflate_lines(deflate), "```"]
    path.write_text("\n".join(text) + "\n")
