"""What crosses process boundaries: dead peers, restarts, and two servers sharing Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import JSON, MSGPACK, Api, WsClient, eventually, healthz, open_candidate, watch
from redis_server import RedisServer
from server import ServerProcess


@pytest.fixture(params=["memory", "redis"])
def fast_server(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> Iterator[ServerProcess]:
    """A server that pings every 0.2 s and gives up on a silent candidate after 1 s."""
    process = ServerProcess.on_store(
        request.param, redis_server, "f", ping_interval=0.2, ping_timeout=1.0
    ).start()
    yield process
    process.stop()


async def test_dead_connection_is_detected_and_reconnection_flips_it_back(
    fast_server: ServerProcess,
) -> None:
    """A candidate that stops answering is closed (4009) and dashboards see connected=false."""
    api = Api(fast_server.url)
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    dashboard, _ = await watch(fast_server.ws_url, exam["id"])
    silent = await WsClient.connect(f"{fast_server.ws_url}/ws/candidate")
    await silent.send({"type": "open", "access_code": session["access_code"]})
    opened = await dashboard.recv_event("opened", session["id"])
    assert opened["changes"]["connected"] is True

    # The silent client reads nothing and answers no ping.
    gone = await dashboard.recv_event("disconnected", session["id"])
    assert gone["changes"]["connected"] is False
    assert (await api.session(exam["id"], session["id"]))["connected"] is False
    assert await silent.wait_closed() == 4009

    lively, reply = await open_candidate(fast_server.ws_url, session["access_code"], JSON)
    assert reply["type"] == "opened"
    back = await dashboard.recv_event("opened", session["id"])
    assert back["changes"]["connected"] is True
    ping = await lively.recv_any()
    assert ping["type"] == "ping"
    await lively.send({"type": "pong", "t": ping["t"]})
    await lively.send({"type": "progress", "position": 1, "answered": 1})
    progress = await dashboard.recv_event("progress", session["id"])
    assert progress["changes"]["rtt_ms"] >= 0
    await lively.close()
    await dashboard.close()
    await api.close()


async def test_history_and_state_survive_a_server_restart(tmp_path: Path) -> None:
    """Stop the server (memory state is gone), start it again: history and state come back."""
    first = ServerProcess(workdir=tmp_path).start()
    api = Api(first.url)
    exam = await api.create_exam(settings={"lock_sessions": True})
    [session] = await api.create_sessions(exam["id"], 1)
    candidate, _ = await open_candidate(first.ws_url, session["access_code"])
    result = await api.command(exam["id"], action="pause", target=session["id"])
    assert len(result["applied"]) == 1
    await candidate.recv("command")
    await candidate.close()
    before = await api.history(exam["id"], session["id"])
    await api.close()
    first.stop()

    second = ServerProcess(workdir=tmp_path).start()
    api = Api(second.url)
    after = await api.history(exam["id"], session["id"])
    assert [e["kind"] for e in after[: len(before)]] == [e["kind"] for e in before]
    assert {"created", "opened", "relocked", "pause"} <= {e["kind"] for e in after}
    state = await api.session(exam["id"], session["id"])
    assert (state["status"], state["locked"], state["connected"]) == ("paused", True, False)

    # Numbering goes on after what SQL holds: new events neither collide nor vanish.
    await api.command(exam["id"], action="unlock", target=session["id"])
    candidate, reopened = await open_candidate(second.ws_url, session["access_code"])
    assert reopened["type"] == "opened" and reopened["session"]["locked"] is True
    events = await api.history(exam["id"], session["id"])
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    assert events[-1]["kind"] == "relocked"
    await candidate.close()
    await api.close()
    second.stop()


async def test_two_servers_share_one_redis(redis_server: RedisServer, pg_url: str) -> None:
    """Candidate on one process, proctor on the other: commands and deltas cross over."""
    redis_server.start()
    prefix = f"m{uuid.uuid4().hex[:8]}:"
    shared = {"redis_url": redis_server.url, "database_url": pg_url, "redis_prefix": prefix}
    left = ServerProcess(**shared).start()  # type: ignore[arg-type]
    right = ServerProcess(**shared).start()  # type: ignore[arg-type]
    try:
        api_left, api_right = Api(left.url), Api(right.url)
        exam = await api_left.create_exam(settings={"lock_sessions": True})
        sessions = await api_left.create_sessions(exam["id"], 2)
        dashboard, snapshot = await watch(right.ws_url, exam["id"], JSON)
        assert len(snapshot["sessions"]) == 2
        candidate, opened = await open_candidate(left.ws_url, sessions[0]["access_code"], MSGPACK)
        assert opened["type"] == "opened"
        await dashboard.recv_event("opened", sessions[0]["id"])

        # A second open on the other process is refused: the lock is shared state.
        rival, refused = await open_candidate(right.ws_url, sessions[0]["access_code"])
        assert refused["reason"] == "already_open"
        await rival.close()

        # The proctor on the right pauses; the candidate on the left gets it at once.
        await dashboard.send(
            {"type": "command", "request_id": 1, "action": "pause", "target": sessions[0]["id"]}
        )
        result = await dashboard.recv("command_result")
        assert [a["delivery"] for a in result["applied"]] == ["sent"]
        command = await candidate.recv("command")
        assert command["action"] == "pause"
        await candidate.send({"type": "ack", "command_id": command["command_id"]})
        delivered = await dashboard.recv_event("delivered", sessions[0]["id"])
        assert delivered["details"]["command_id"] == result["command_id"]

        # Unlock on the right; the open on the right supersedes the holder on the left.
        await api_right.command(exam["id"], action="unlock", target=sessions[0]["id"])
        taker, reopened = await open_candidate(right.ws_url, sessions[0]["access_code"])
        assert reopened["type"] == "opened" and reopened["session"]["locked"] is True
        assert (await candidate.recv("superseded"))["type"] == "superseded"
        assert await candidate.wait_closed() == 4100

        history = await api_left.history(exam["id"], sessions[0]["id"])
        assert [e["seq"] for e in history] == sorted({e["seq"] for e in history})
        assert {"pause", "delivered", "unlock", "relocked", "refused"} <= {
            e["kind"] for e in history
        }
        await asyncio.gather(taker.close(), dashboard.close())
        await api_left.close()
        await api_right.close()
    finally:
        left.stop()
        right.stop()


async def test_candidates_of_a_crashed_process_show_as_disconnected(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Kill the process holding a candidate: the dashboard on the other sees it disconnected."""
    redis_server.start()
    shared = {
        "redis_url": redis_server.url,
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
        "redis_prefix": f"c{uuid.uuid4().hex[:8]}:",
        "ping_interval": 0.2,
        "stale_after": 1.0,
    }
    doomed = ServerProcess(**shared).start()  # type: ignore[arg-type]
    survivor = ServerProcess(**shared).start()  # type: ignore[arg-type]
    try:
        api = Api(survivor.url)
        exam = await api.create_exam(settings={"lock_sessions": True})
        [session] = await api.create_sessions(exam["id"], 1)
        dashboard, _ = await watch(survivor.ws_url, exam["id"])
        _held, opened = await open_candidate(doomed.ws_url, session["access_code"])
        assert opened["type"] == "opened"
        await dashboard.recv_event("opened", session["id"])
        doomed.kill()
        lost = await dashboard.recv_event("disconnected", session["id"])
        assert lost["changes"]["connected"] is False
        assert lost["details"]["reason"] == "holder lost"
        # The same tab comes back on the survivor with its resume token.
        tab, resumed = await open_candidate(
            survivor.ws_url, session["access_code"], resume_token=opened["resume_token"]
        )
        assert resumed["type"] == "opened"
        await tab.close()
        await dashboard.close()
        await api.close()
    finally:
        doomed.stop()
        survivor.stop()


async def test_connected_candidates_carry_on_when_redis_loses_its_data(tmp_path: Path) -> None:
    """Redis restarts empty: the exam is rebuilt from SQL and the open sockets keep working."""
    redis = RedisServer()
    redis.start()
    server = ServerProcess(redis_url=redis.url, workdir=tmp_path).start()
    try:
        api = Api(server.url)
        exam = await api.create_exam(settings={"lock_sessions": True})
        [session] = await api.create_sessions(exam["id"], 1)
        candidate, opened = await open_candidate(server.ws_url, session["access_code"])
        assert opened["type"] == "opened"
        dashboard, _ = await watch(server.ws_url, exam["id"])
        await candidate.send({"type": "progress", "position": 3, "answered": 2})
        await dashboard.recv_event("progress", session["id"])
        await dashboard.close()

        async def drained() -> bool:  # a Redis without persistence keeps only what SQL has
            _, body = await healthz(server.url)
            return bool(body["history_backlog"]["events"] == 0)

        await eventually(drained)

        redis.restart()  # no persistence: everything in Redis is gone

        result = await api.command(exam["id"], action="pause", target=session["id"])
        assert [a["session_id"] for a in result["applied"]] == [session["id"]]
        # Pushed as the command, or (if it was published before this process had its Redis
        # subscription back) as the whole state once the subscription returns.
        pushed = await candidate.recv("command", "state")
        while pushed["session"].get("status") != "paused":  # an earlier resync of the old state
            pushed = await candidate.recv("command", "state")
        state = await api.session(exam["id"], session["id"])
        assert (state["status"], state["locked"], state["position"]) == ("paused", True, 3)
        # numbering went on after what SQL holds: the history has no duplicate seq
        seqs = [e["seq"] for e in await api.history(exam["id"], session["id"])]
        assert seqs == sorted(set(seqs))
        # the holder is still the holder: a second device is refused as already open
        rival, refused = await open_candidate(server.ws_url, session["access_code"])
        assert refused["reason"] == "already_open"
        await rival.close()
        await candidate.close()
        await api.close()
    finally:
        server.stop()
        redis.cleanup()
