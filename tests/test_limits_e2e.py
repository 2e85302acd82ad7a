"""Limits against a real server: request bodies refused while they stream, message rates per
socket (an error, then close 4029), and attempts per address for WebSocket handshakes,
access-code opens and logins (429 / refused handshake, counted in /metrics, logged)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clients import MSGPACK, Api, WsClient, eventually
from server import STAFF_TOKEN, ServerProcess
from websockets.exceptions import ConnectionClosed, InvalidStatus

MESSAGE_RATE, MESSAGE_BURST = 5, 10
PASSWORD = "a good long password"


@pytest.fixture(scope="module")
def limited() -> Iterator[ServerProcess]:
    """Tight limits, and X-Forwarded-For believed from 127.0.0.1 so each test can speak from
    addresses of its own."""
    process = ServerProcess(
        trusted_proxies="127.0.0.1/32",
        handshake_rate=0.001, handshake_burst=6,
        access_code_rate=0.001, access_code_burst=3,
        login_rate=0.001, login_burst=3,
        login_max_failures=1000,
        candidate_message_rate=MESSAGE_RATE, candidate_message_burst=MESSAGE_BURST,
        dashboard_message_rate=MESSAGE_RATE, dashboard_message_burst=MESSAGE_BURST,
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def api(limited: ServerProcess) -> AsyncIterator[Api]:
    client = Api(limited.url)
    yield client
    await client.close()


def address() -> str:
    """A client address of the test's own (10.x.y.z)."""
    raw = uuid.uuid4().bytes
    return f"10.{raw[0]}.{raw[1]}.{raw[2] or 1}"


async def connect(server: ServerProcess, path: str, source: str, **headers: str) -> WsClient:
    return await WsClient.connect(f"{server.ws_url}{path}", MSGPACK,
                                  additional_headers={"X-Forwarded-For": source, **headers})


async def open_from(
    server: ServerProcess, source: str, code: str
) -> tuple[WsClient, dict[str, Any]]:
    client = await connect(server, "/ws/candidate", source)
    await client.send({"type": "open", "access_code": code})
    return client, await client.recv("opened", "refused", "error")


async def read_until_closed(client: WsClient, timeout: float = 20) -> int | None:
    """Read (into `client.received`) until the server closes; returns the close code."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await client.recv_any(timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    except TimeoutError:
        return None


async def rate_limited_count(server: ServerProcess, kind: str) -> float:
    async with httpx.AsyncClient(base_url=server.url) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(f'realtime_rate_limited_total{{kind="{kind}"}}'):
            return float(line.split()[-1])
    return 0.0


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


async def post_streamed(
    port: int, path: str, total: int, chunk: int = 64 * 1024
) -> tuple[int, dict[str, Any], int]:
    """POST a chunked body of up to `total` bytes, stopping as soon as the server answers.

    Returns (status, JSON body, bytes sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    piece = b'{"login": "' + b"x" * (chunk - 11)
    answered = asyncio.create_task(reader.readline())
    sent = 0
    try:
        with contextlib.suppress(ConnectionError):
            while sent < total and not answered.done():
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                await writer.drain()
                sent += len(piece)
                await asyncio.sleep(0)  # a drain with room does not yield: let the reader look
            if not answered.done():
                writer.write(b'2\r\n"}\r\n0\r\n\r\n')
                await writer.drain()
        status_line = await asyncio.wait_for(answered, 30)
        headers: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readline(), 30)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 30)
    finally:
        answered.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return int(status_line.split()[1]), json.loads(body), sent


# -- request bodies ----------------------------------------------------------------------------


async def test_a_huge_streamed_login_body_is_refused_before_it_is_read(
    limited: ServerProcess,
) -> None:
    """48 MB chunked to the login: 413 `too_large` long before the end, and the server's
    memory (RSS and its peak) grows by nothing near the body's size."""
    assert limited.process is not None
    pid = limited.process.pid
    before = memory_kib(pid)
    total = 48 * 1024 * 1024
    status, body, sent = await post_streamed(limited.port, "/api/v1/auth/login", total)
    after = memory_kib(pid)
    growth_kib = max(after["VmRSS"] - before["VmRSS"], after["VmHWM"] - before["VmHWM"])
    assert growth_kib < 8 * 1024, f"the server grew by {growth_kib} KiB for a refused body"
    assert sent < total / 2, "the server read the body to its end before answering"
    assert status == 413, body
    assert body["error"]["code"] == "too_large"


async def test_a_declared_oversized_body_is_refused_before_any_of_it_is_sent(
    limited: ServerProcess,
) -> None:
    """A Content-Length over the limit is answered 413 at once, without waiting for a byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    writer.write(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 400000000\r\n\r\n")
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), 10)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert status_line.split()[1] == b"413"
    assert b"application/json" in head


async def test_only_the_bulk_endpoints_take_large_bodies(api: Api) -> None:
    """Every endpoint is limited (64 KiB by default); creating sessions in bulk takes more."""
    too_big = await api.http.post("/api/v1/exams", json={"title": "x" * 100_000})
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "too_large"
    exam = await api.create_exam()
    candidates = [{"candidate_id": f"c{i}", "name": f"Candidate number {i:05d} " + "n" * 40}
                  for i in range(2000)]
    assert len(json.dumps({"candidates": candidates})) > 64 * 1024
    created = await api.http.post(f"/api/v1/exams/{exam['id']}/sessions",
                                  json={"candidates": candidates})
    assert created.status_code == 201, created.text
    assert len(created.json()["sessions"]) == 2000


# -- message rates per socket ------------------------------------------------------------------


async def flood(client: WsClient, count: int) -> None:
    """Send up to `count` messages as fast as the socket takes them (stops once closed)."""
    with contextlib.suppress(ConnectionClosed):
        for i in range(count):
            if i % 2:
                await client.send({"type": "client_event", "name": "focus_lost"})
            else:
                await client.send({"type": "progress", "position": i, "answered": i})


async def test_flooding_candidates_get_an_error_then_4029_and_nothing_over_the_rate_commits(
    limited: ServerProcess, api: Api,
) -> None:
    """10 candidates send progress and client events as fast as they can: each is told
    `rate_limited` (once per run of drops: a frame let through by the refilled bucket starts
    a new run), is closed with 4029, and only what the rate allows was committed — the server
    does not go on committing their backlog after they are gone."""
    exam = await api.create_exam()
    sessions = await api.create_sessions(exam["id"], 10)
    dropped_before = await rate_limited_count(limited, "candidate_message")
    clients = []
    for session in sessions:
        client, reply = await open_from(limited, address(), session["access_code"])
        assert reply["type"] == "opened"
        clients.append(client)
    started = time.monotonic()
    await asyncio.gather(*(flood(c, 3000) for c in clients))
    codes = await asyncio.gather(*(read_until_closed(c) for c in clients))
    lifetime = time.monotonic() - started
    assert codes == [4029] * 10
    for client in clients:
        errors = [m for m in client.received if m["type"] == "error"]
        assert errors and {e["code"] for e in errors} == {"rate_limited"}, errors
        assert all(e["retry_after"] >= 1 for e in errors)
        # A slow server reads the flood over more time, and the bucket refills meanwhile:
        # at most one run of drops per token refilled, never one error per dropped frame.
        assert len(errors) <= 1 + MESSAGE_RATE * lifetime, (len(errors), lifetime)

    async def all_disconnected() -> list[dict[str, Any]] | None:
        states = [await api.session(exam["id"], s["id"]) for s in sessions]
        return states if not any(s["connected"] for s in states) else None

    states = await eventually(all_disconnected)
    allowed = MESSAGE_BURST + MESSAGE_RATE * lifetime + 1
    for state in states:
        assert state["alerts"] <= allowed, (state["alerts"], allowed)
    assert await rate_limited_count(limited, "candidate_message") >= dropped_before + 10


async def test_a_flooding_dashboard_gets_an_error_then_4029(
    limited: ServerProcess, api: Api,
) -> None:
    """The dashboard socket has its own rate: a flood of pings is cut off the same way."""
    exam = await api.create_exam()
    dashboard = await connect(limited, "/ws/proctor", address(),
                              Authorization=f"Bearer {STAFF_TOKEN}")
    await dashboard.send({"type": "subscribe", "exam_id": exam["id"]})
    await dashboard.recv("snapshot")
    with contextlib.suppress(ConnectionClosed):
        for _ in range(3000):
            await dashboard.send({"type": "ping", "t": 1})
    assert await read_until_closed(dashboard) == 4029
    errors = [m for m in dashboard.received if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["rate_limited"]
    pongs = [m for m in dashboard.received if m["type"] == "pong"]
    assert len(pongs) <= MESSAGE_BURST + 1 + MESSAGE_RATE * 20


# -- attempts per address --------------------------------------------------------------------


async def test_handshakes_are_limited_per_address(limited: ServerProcess) -> None:
    """Over its handshake budget an address is refused (HTTP 429, Retry-After, JSON) while
    another address still connects; the refusal is counted and logged."""
    source = address()
    before = await rate_limited_count(limited, "handshake")
    for _ in range(6):
        client = await connect(limited, "/ws/candidate", source)
        await client.close()
    with pytest.raises(InvalidStatus) as refused:
        await connect(limited, "/ws/candidate", source)
    response = refused.value.response
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert json.loads(response.body)["error"]["code"] == "rate_limited"
    other = await connect(limited, "/ws/proctor", address(), Authorization=f"Bearer {STAFF_TOKEN}")
    await other.close()
    assert await rate_limited_count(limited, "handshake") == before + 1
    assert "rate limit:" in limited.log() and "handshake refused" in limited.log()


async def test_access_code_guessing_is_limited_per_address(
    limited: ServerProcess, api: Api,
) -> None:
    """Wrong codes spend an address's budget (then `rate_limited` + 4029, even for a right
    code); right codes cost nothing; other addresses are not affected."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    guesser = address()
    before = await rate_limited_count(limited, "access_code")
    for guess in ("AAAA-0000", "BBBB-1111", "CCCC-2222"):
        client, reply = await open_from(limited, guesser, guess)
        assert reply["type"] == "refused" and reply["reason"] == "not_found"
        assert await client.wait_closed() == 4103
    for code in ("DDDD-3333", session["access_code"]):
        client, reply = await open_from(limited, guesser, code)
        assert reply["type"] == "error" and reply["code"] == "rate_limited", reply
        assert reply["retry_after"] >= 1
        assert await read_until_closed(client) == 4029
    assert await rate_limited_count(limited, "access_code") == before + 2

    honest = address()
    for _ in range(5):  # more than the budget of 3: right codes are free
        client, reply = await open_from(limited, honest, session["access_code"])
        assert reply["type"] == "opened", reply
        await client.close()


async def make_user(api: Api) -> str:
    """A new active user's login (e-mail)."""
    email = f"limits-{uuid.uuid4().hex[:8]}@example.org"
    created = await api.http.post("/api/v1/users", json={
        "full_name": "Limits", "email": email, "roles": ["proctor"], "groups": []})
    assert created.status_code == 201, created.text
    done = await api.http.post("/api/v1/auth/activate", json={
        "token": created.json()["activation_token"], "password": PASSWORD})
    assert done.status_code == 200, done.text
    return email


async def test_login_guessing_is_limited_per_address_even_in_parallel(
    limited: ServerProcess, api: Api,
) -> None:
    """20 wrong logins at once from one address: at most the budget (3) reach the password
    check, the rest are 429 `rate_limited` with Retry-After; right passwords cost nothing,
    and another address logs in."""
    email = await make_user(api)
    guesser = address()
    before = await rate_limited_count(limited, "login")
    async with httpx.AsyncClient(base_url=limited.url, timeout=30,
                                 headers={"X-Forwarded-For": guesser}) as http:
        answers = await asyncio.gather(*(
            http.post("/api/v1/auth/login", json={"login": email, "password": f"guess {i}"})
            for i in range(20)
        ))
        right = await http.post("/api/v1/auth/login", json={"login": email, "password": PASSWORD})
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(401) <= 3 and statuses.count(429) >= 17, statuses
    limited_answer = next(a for a in answers if a.status_code == 429)
    assert limited_answer.json()["error"]["code"] == "rate_limited"
    assert int(limited_answer.headers["Retry-After"]) >= 1
    assert right.status_code == 429  # the budget is spent, whatever the password
    assert await rate_limited_count(limited, "login") >= before + 17

    async with httpx.AsyncClient(base_url=limited.url, timeout=30,
                                 headers={"X-Forwarded-For": address()}) as http:
        for _ in range(5):  # more than the budget: right passwords give their attempt back
            ok = await http.post("/api/v1/auth/login", json={"login": email, "password": PASSWORD})
            assert ok.status_code == 200, ok.text
