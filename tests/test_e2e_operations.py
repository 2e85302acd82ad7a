"""What operators rely on: health checks that tell the truth, and metrics."""

from __future__ import annotations

import uuid

import httpx
from clients import Api, eventually, open_candidate
from redis_server import RedisServer
from server import ServerProcess


async def test_metrics_count_connections_opens_and_commands(
    server: ServerProcess, api: Api
) -> None:
    """/metrics exposes live connections, open outcomes and command counts in Prometheus text."""
    exam = await api.create_exam(settings={"lock_sessions": True})
    [session] = await api.create_sessions(exam["id"], 1)
    candidate, _ = await open_candidate(server.ws_url, session["access_code"])
    rival, _ = await open_candidate(server.ws_url, session["access_code"])
    await api.command(exam["id"], action="notice", target="all", text="hello")
    await candidate.recv("command")
    text = (await api.http.get("/metrics")).text
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert float(samples["realtime_candidate_connections"]) >= 1
    assert float(samples['realtime_opens_total{outcome="already_open"}']) >= 1
    assert float(samples['realtime_command_targets_total{action="notice",outcome="applied"}']) >= 1
    assert float(samples['realtime_command_seconds_count{action="notice"}']) >= 1
    # the history backlog and the heartbeat are reported too
    for name in ("realtime_history_backlog_events", "realtime_history_backlog_oldest_seconds",
                 "realtime_history_drain_failures", "realtime_ping_timeouts",
                 "realtime_commit_retries", "realtime_commit_retries_given_up",
                 "realtime_commits_awaiting_retry"):
        assert float(samples[name]) >= 0
    await candidate.close()
    await rival.close()


async def test_healthz_reports_a_lost_redis_and_recovers() -> None:
    """With Redis down the health check answers 503; once it is back, 200 again."""
    redis = RedisServer()
    redis.start()
    server = ServerProcess(redis_url=redis.url, redis_prefix=f"h{uuid.uuid4().hex[:6]}:").start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            healthy = await http.get("/healthz")
            assert healthy.status_code == 200
            body = healthy.json()
            assert {k: body[k] for k in ("status", "state_backend", "state", "database")} == {
                "status": "ok",
                "state_backend": "redis",
                "state": "ok",
                "database": "ok",
            }
            assert body["history_backlog"]["events"] == 0
            redis.stop()
            down = await http.get("/healthz")
            assert down.status_code == 503
            assert down.json()["state"].startswith("error")
            assert down.json()["database"] == "ok"
            redis.start()

            async def green() -> bool:  # once its event subscription is re-made (backoff)
                back = await http.get("/healthz")
                events = back.json()["events"]
                return back.status_code == 200 and events["subscribed"] and events["losses"] >= 1

            await eventually(green, timeout=30)
    finally:
        server.stop()
        redis.cleanup()
