"""`GET /api/v1/exams/{id}/events` (Server-Sent Events) against real servers with a real
streaming HTTP client (httpx), on the memory and the Redis store: ids are the exam's sequence
numbers, Last-Event-ID resumes without a gap or a duplicate (on this process or another), 401
and 404 as every read; plus `curl -N`, and the outlet's bounded buffer on its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from clients import Api, LiveDashboard, eventually
from redis_server import RedisServer
from server import STAFF_TOKEN, ServerProcess

from realtime.channels.event_stream import EventStream, sse_frames
from realtime.errors import CloseCode

TIMEOUT = 10.0


@dataclass
class Frame:
    """One SSE event as a client sees it (comments are kept apart)."""

    id: int | None = None
    event: str = "message"
    data: Any = None


@dataclass
class SseClient:
    """Reads an event stream line by line, as `EventSource` would parse it."""

    response: httpx.Response
    lines: AsyncIterator[str]
    comments: list[str] = field(default_factory=list)

    async def next(self, timeout: float = TIMEOUT) -> Frame:
        frame = Frame()
        data: list[str] = []
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                if line == "":
                    if data:
                        frame.data = json.loads("\n".join(data))
                        return frame
                    frame = Frame()
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    self.comments.append(value)
                elif name == "id":
                    frame.id = int(value)
                elif name == "event":
                    frame.event = value
                elif name == "data":
                    data.append(value)
        raise AssertionError("the stream ended")

    async def events(self, count: int) -> list[Frame]:
        return [await self.next() for _ in range(count)]


@contextlib.asynccontextmanager
async def stream(
    base_url: str, exam_id: str, last_id: int | None = None, token: str = STAFF_TOKEN,
) -> AsyncIterator[SseClient]:
    headers = {"Authorization": f"Bearer {token}"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as http,
        http.stream("GET", f"/api/v1/exams/{exam_id}/events", headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SseClient(response, response.aiter_lines())


async def notify(api: Api, exam_id: str, session: dict[str, Any], text: str = "hi") -> None:
    """One committed event: a notice to one session (any status takes one)."""
    await api.command(exam_id, action="notice", target=session["id"], text=text)


async def notify_each(api: Api, exam_id: str, sessions: list[dict[str, Any]]) -> None:
    for session in sessions:
        await notify(api, exam_id, session)


# -- one process, each store ------------------------------------------------------------------


async def test_live_events_arrive_in_order_with_ids_equal_to_seq(
    server: ServerProcess, api: Api
) -> None:
    """A snapshot whose id is the exam's seq, then every committed event, ids = seq, in order,
    the same ones a dashboard socket gets."""
    exam = await api.create_exam()
    sessions = await api.create_sessions(exam["id"], 3)
    dashboard = await LiveDashboard.watch(server.ws_url, exam["id"])
    async with stream(server.url, exam["id"]) as sse:
        snapshot = await sse.next()
        assert snapshot.event == "snapshot" and snapshot.id == snapshot.data["seq"]
        assert len(snapshot.data["sessions"]) == 3
        await notify_each(api, exam["id"], sessions)
        await api.command(exam["id"], action="notice", target="all", text="hello")
        await eventually(lambda: len(dashboard.events) >= 6)
        expected = [e["seq"] for e in dashboard.events if e["seq"] > snapshot.id]
        frames = await sse.events(len(expected))
    await dashboard.close()
    assert [f.id for f in frames] == expected
    assert expected == list(range(snapshot.id + 1, snapshot.id + 1 + len(expected)))
    assert all(f.event == "message" and f.data["seq"] == f.id for f in frames)
    assert [f.data["session_id"] for f in frames[:3]] == [s["id"] for s in sessions]
    assert [f.data["kind"] for f in frames] == ["notice"] * 6


async def test_last_event_id_resumes_exactly_the_missed_events(
    server: ServerProcess, api: Api
) -> None:
    """Disconnect, make changes, reconnect with Last-Event-ID: exactly what was missed (no gap,
    no duplicate), then live events again."""
    exam = await api.create_exam()
    sessions = await api.create_sessions(exam["id"], 4)
    async with stream(server.url, exam["id"]) as sse:
        snapshot = await sse.next()
        await notify(api, exam["id"], sessions[0])
        [seen] = await sse.events(1)
    assert seen.id == snapshot.id + 1
    await notify_each(api, exam["id"], sessions[1:])  # while disconnected
    async with stream(server.url, exam["id"], last_id=seen.id) as sse:
        missed = await sse.events(3)
        assert [f.id for f in missed] == [seen.id + 1, seen.id + 2, seen.id + 3]
        assert [f.data["session_id"] for f in missed] == [s["id"] for s in sessions[1:]]
        await notify(api, exam["id"], sessions[0], "live")
        [live] = await sse.events(1)
    assert live.id == seen.id + 4 and live.data["details"]["text"] == "live"


async def test_refusals_401_404_400(server: ServerProcess, api: Api) -> None:
    """No token or a wrong one: 401; an unknown exam: 404; a Last-Event-ID that is no seq: 400
    — each a JSON error, not a stream."""
    exam = await api.create_exam()
    path = f"/api/v1/exams/{exam['id']}/events"
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
        assert (await http.get(path)).status_code == 401
        wrong = await http.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
        staff = {"Authorization": f"Bearer {STAFF_TOKEN}"}
        unknown = await http.get("/api/v1/exams/no-such-exam/events", headers=staff)
        assert unknown.status_code == 404
        bad = await http.get(path, headers={**staff, "Last-Event-ID": "-3"})
        assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]["message"]


async def test_curl_n_follows_the_stream(server: ServerProcess, api: Api) -> None:
    """`curl -N` with the bearer token prints the snapshot, then live events as they commit."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    process = await asyncio.create_subprocess_exec(
        curl, "-sS", "-N", "-H", f"Authorization: Bearer {STAFF_TOKEN}",
        f"{server.url}/api/v1/exams/{exam['id']}/events",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while "event: snapshot" not in lines:
                lines.append((await process.stdout.readline()).decode().rstrip("\n"))
            await notify(api, exam["id"], session, "curl-notice")
            while not any(line.startswith("data: ") and "curl-notice" in line for line in lines):
                lines.append((await process.stdout.readline()).decode().rstrip("\n"))
    finally:
        process.kill()
        await process.wait()
    data = json.loads(next(line for line in lines if "curl-notice" in line)[6:])
    assert f"id: {data['seq']}" in lines


async def test_out_of_scope_exam_is_404_like_an_unknown_one(
    server: ServerProcess, api: Api
) -> None:
    """A proctor of group A streams an exam of group A, and gets 404 for one of group B."""
    mine = await api.create_exam(groups=["A"])
    other = await api.create_exam(groups=["B"])
    email = f"proctor-{uuid.uuid4().hex[:8]}@example.org"
    created = await api.http.post("/api/v1/users", json={
        "full_name": "Pat Proctor", "email": email, "roles": ["proctor"], "groups": ["A"]})
    assert created.status_code == 201, created.text
    done = await api.http.post("/api/v1/auth/activate", json={
        "token": created.json()["activation_token"], "password": "correct horse battery 9"})
    assert done.status_code == 200, done.text
    login = await api.http.post("/api/v1/auth/login", headers={"Authorization": ""},
                                json={"login": email, "password": "correct horse battery 9"})
    token = login.json()["token"]
    async with stream(server.url, mine["id"], token=token) as sse:
        assert (await sse.next()).event == "snapshot"
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
        hidden = await http.get(f"/api/v1/exams/{other['id']}/events",
                                headers={"Authorization": f"Bearer {token}"})
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"


# -- two processes on one Redis ---------------------------------------------------------------


@pytest.fixture
def two_processes(redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    redis_server.start()
    prefix = f"s{uuid.uuid4().hex[:8]}:"
    processes = [ServerProcess(redis_url=redis_server.url, redis_prefix=prefix)
                 for _ in range(2)]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            process.stop()


async def test_resume_on_the_other_process(two_processes: list[ServerProcess]) -> None:
    """Stream from one process, miss changes made through it, resume on the other process with
    Last-Event-ID: exactly the missed events, then live ones committed on the first."""
    first, second = two_processes
    api = Api(first.url)
    try:
        exam = await api.create_exam()
        sessions = await api.create_sessions(exam["id"], 3)
        async with stream(first.url, exam["id"]) as sse:
            snapshot = await sse.next()
        await notify_each(api, exam["id"], sessions)
        async with stream(second.url, exam["id"], last_id=snapshot.id) as sse:
            missed = await sse.events(3)
            await notify(api, exam["id"], sessions[0], "live")
            [live] = await sse.events(1)
    finally:
        await api.close()
    assert [f.id for f in missed] == [snapshot.id + 1, snapshot.id + 2, snapshot.id + 3]
    assert live.id == snapshot.id + 4 and live.data["details"]["text"] == "live"


# -- the outlet on its own --------------------------------------------------------------------


async def test_idle_stream_sends_heartbeat_comments() -> None:
    """With nothing to send, the stream writes a comment (proxies keep it open)."""
    outlet = EventStream(limit=4)
    chunks = outlet.chunks(heartbeat=0.01)
    assert (await anext(chunks)).startswith(b"retry: ")
    assert await anext(chunks) == b": keep-alive\n\n"
    await chunks.aclose()


async def test_slow_consumer_is_closed_with_a_final_event_telling_it_to_resume() -> None:
    """A client `limit` messages behind: its queue is dropped (memory stays bounded) and it
    gets one final `close` event saying to resume with Last-Event-ID."""
    outlet = EventStream(limit=3)
    event = {"seq": 1, "kind": "pause"}
    for seq in range(1, 4):
        assert outlet.send({"type": "event", "event": {**event, "seq": seq}})
    assert not outlet.send({"type": "event", "event": {**event, "seq": 4}})
    assert outlet.closing and not outlet.send({"type": "event", "event": event})
    body = [chunk async for chunk in outlet.chunks(heartbeat=60)]
    assert len(body) == 2  # the retry hint, then only the close event
    close = body[1].decode()
    assert close.startswith("event: close\n")
    data = json.loads(close.split("data: ", 1)[1])
    assert data == {"code": CloseCode.SLOW_CONSUMER, "reason": data["reason"], "resume": True}


def test_batches_become_one_frame_per_event() -> None:
    """An event batch is one SSE event per exam event, each with its seq as id."""
    frames = sse_frames({"type": "event_batch", "events": [{"seq": 7}, {"seq": 8}]})
    assert frames == b'id: 7\ndata: {"seq":7}\n\nid: 8\ndata: {"seq":8}\n\n'
