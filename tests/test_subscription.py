"""Never deaf while green: each way of losing a process's event subscription is detected,
reported by /healthz and /metrics, logged, and repaired, and what was committed meanwhile
reaches pages as commands (not whole-state resyncs) and dashboards as consecutive deltas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from clients import Api, LiveCandidate, LiveDashboard, eventually, healthz, open_candidate
from redis_server import RedisServer
from server import ServerProcess

CANDIDATES = 12


@dataclass
class Hall:
    redis: RedisServer
    admin: aioredis.Redis
    server: ServerProcess
    api: Api
    exam_id: str
    candidates: list[LiveCandidate]
    dashboard: LiveDashboard

    async def notice_all(self, text: str) -> None:
        result = await self.api.command(self.exam_id, action="notice", target="all", text=text)
        assert len(result["applied"]) == CANDIDATES, result

    async def everyone_got(self, texts: list[str]) -> None:
        """Every page got every notice as a command (acked by the page), none as a resync."""

        def done() -> bool:
            return all(
                [c["details"].get("text") for c in candidate.commands("notice")] == texts
                for candidate in self.candidates
            )

        await eventually(done, timeout=30)
        for candidate in self.candidates:
            assert candidate.of_type("state") == [], "a page was resynchronised"
            assert not candidate.closed

    async def dashboard_is_consecutive(self) -> None:
        seqs = self.dashboard.seqs
        assert seqs == list(range(self.dashboard.start_seq + 1, self.dashboard.start_seq + 1
                                  + len(seqs))), "the dashboard's deltas are not consecutive"
        assert not self.dashboard.closed, self.dashboard.close_code

    async def metric(self, name: str) -> float:
        async with httpx.AsyncClient(base_url=self.server.url, timeout=10) as http:
            text = (await http.get("/metrics")).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"no metric {name}")

    def log(self) -> str:
        return self.server.log_path.read_text(errors="replace")


@pytest.fixture
async def hall(tmp_path: Path) -> AsyncIterator[Hall]:
    redis = RedisServer()
    redis.start()
    admin = aioredis.Redis.from_url(redis.url)
    server = ServerProcess(redis_url=redis.url, workdir=tmp_path).start()
    api = Api(server.url)
    try:
        exam = await api.create_exam()
        sessions = await api.create_sessions(exam["id"], CANDIDATES)
        candidates = []
        for session in sessions:
            client, opened = await open_candidate(server.ws_url, session["access_code"])
            assert opened["type"] == "opened", opened
            candidates.append(LiveCandidate(client, opened))
        dashboard = await LiveDashboard.watch(server.ws_url, exam["id"])
        yield Hall(redis, admin, server, api, exam["id"], candidates, dashboard)
        for candidate in candidates:
            await candidate.close()
        await dashboard.close()
    finally:
        await api.close()
        await admin.aclose()
        server.stop()
        redis.cleanup()


async def subscription(hall: Hall) -> dict[str, Any]:
    _, body = await healthz(hall.server.url)
    events: dict[str, Any] = body["events"]
    return events


async def test_a_squeezed_subscription_is_cut_and_every_command_still_arrives(hall: Hall) -> None:
    """The pub/sub output buffer limit cuts the subscription at every notice burst: each cut
    is counted and logged, and the notices reach every page as commands, in order."""
    await hall.admin.config_set("client-output-buffer-limit", "pubsub 1kb 0 0")
    # Redis counts only what overflows a client's 16 KiB reply buffer against the limit: each
    # burst (12 notices of ~1,900 characters, one message) overflows it whatever the timing.
    texts = [f"notice {n} " + "x" * 1900 for n in range(5)]
    for text in texts:
        await hall.notice_all(text)
    await hall.everyone_got(texts)
    await hall.admin.config_set("client-output-buffer-limit", "pubsub 32mb 8mb 60")

    # The pages may have their notices from the process's own commits before it notices the
    # cut (so what the recovery reads back may be nothing): wait for the cut to be counted.
    async def cut_and_re_made() -> bool:
        health = await subscription(hall)
        return bool(health["losses"] >= 1 and health["subscribed"])

    await eventually(cut_and_re_made)
    assert await hall.metric("realtime_event_subscription_losses") >= 1
    await eventually(lambda: "event subscription re-made" in hall.log())
    await eventually(lambda: hall.dashboard.kinds("notice")
                     and len(hall.dashboard.kinds("notice")) == CANDIDATES * len(texts))
    await hall.dashboard_is_consecutive()


async def test_a_killed_subscription_is_re_made_and_nothing_is_missed(hall: Hall) -> None:
    """CLIENT KILL TYPE pubsub (what an operator or a proxy may do): detected, re-made,
    and commands around it arrive as commands."""
    texts = []
    for n in range(3):
        killed = await hall.admin.client_kill_filter(_type="pubsub")
        assert killed == 1
        texts.append(f"after kill {n}")
        await hall.notice_all(texts[-1])

        async def re_made(losses: int = n + 1) -> bool:
            health = await subscription(hall)
            return bool(health["losses"] == losses and health["subscribed"])

        await eventually(re_made, timeout=20)
    await hall.everyone_got(texts)
    assert (await healthz(hall.server.url))[0] == 200
    await hall.dashboard_is_consecutive()


async def test_healthz_is_503_while_deaf_and_the_deaf_window_is_read_back(
    hall: Hall, tmp_path: Path
) -> None:
    """The subscriptions cannot be re-made (SUBSCRIBE is refused to this Redis user) while
    everything else answers: /healthz says 503 and `subscribed: false`; commands applied
    meanwhile through another process reach the pages as commands once it is back."""
    other = ServerProcess(redis_url=hall.redis.url, database_url=hall.server.database_url,
                          workdir=tmp_path).start()
    other_api = Api(other.url)
    try:
        await _deaf_window(hall, other_api)
    finally:
        await other_api.close()
        other.stop()


async def _deaf_window(hall: Hall, other_api: Api) -> None:
    await hall.admin.execute_command("ACL", "SETUSER", "default", "-subscribe")
    await hall.admin.client_kill_filter(_type="pubsub")

    async def deaf() -> bool:
        status, body = await healthz(hall.server.url)
        return status == 503 and body["events"]["subscribed"] is False

    await eventually(deaf, timeout=20)
    assert await hall.metric("realtime_event_subscription_up") == 0
    texts = ["while deaf 1", "while deaf 2"]
    for text in texts:  # applied: the state store answers
        result = await other_api.command(hall.exam_id, action="notice", target="all", text=text)
        assert len(result["applied"]) == CANDIDATES, result
    assert (await healthz(hall.server.url))[0] == 503  # still deaf: nothing heard, no guess

    await hall.admin.execute_command("ACL", "SETUSER", "default", "+subscribe")

    async def green() -> bool:
        status, body = await healthz(hall.server.url)
        return status == 200 and body["events"]["subscribed"] is True

    await eventually(green, timeout=30)
    await hall.everyone_got(texts)
    assert await hall.metric("realtime_event_subscription_up") == 1
    await hall.dashboard_is_consecutive()


async def test_a_refused_publish_neither_fails_an_applied_command_nor_loses_it(
    hall: Hall,
) -> None:
    """Redis refuses the channel itself (an ACL change): the commit is applied, so the command
    answers 200; the pages get it once the channel is allowed again (read back, in order)."""
    await hall.admin.execute_command("ACL", "SETUSER", "default", "resetchannels")
    await hall.admin.client_kill_filter(_type="pubsub")
    texts = ["published nowhere"]
    await hall.notice_all(texts[0])  # 200: applied, held by the outbox
    await hall.admin.execute_command("ACL", "SETUSER", "default", "allchannels")
    await hall.everyone_got(texts)
    await eventually(lambda: len(hall.dashboard.kinds("notice")) == CANDIDATES)
    await hall.dashboard_is_consecutive()
