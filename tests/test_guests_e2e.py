"""Guest accounts end to end on real servers: where and when guests are offered, the
X-Forwarded-For rules, a guest sitting an exam and being reassigned, and the 200-way
reservation race across two server processes sharing PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from clients import Api, WsClient, watch
from redis_server import RedisServer
from server import STAFF_TOKEN, ServerProcess
from test_identity_e2e import bearer, login, make_user

PEOPLE = {"title": "Mr", "first_name": "Alan", "surname": "Turing", "student_number": "S-1912"}


@pytest.fixture(scope="module", params=["memory", "redis"])
def gserver(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[ServerProcess]:
    """SQLite, each state backend; 127.0.0.2 is a trusted proxy (tests connect from it too)."""
    process = ServerProcess.on_store(request.param, redis_server, "g",
                                     trusted_proxies="127.0.0.2/32")
    # uvicorn rewrites the client from X-Forwarded-For itself for FORWARDED_ALLOW_IPS (default
    # 127.0.0.1); `realtime serve` hands it REALTIME_TRUSTED_PROXIES. Here it trusts nobody
    # (TEST-NET-1), so what is tested is the app's own rule.
    process.env["FORWARDED_ALLOW_IPS"] = "192.0.2.1"
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def staff(gserver: ServerProcess) -> AsyncIterator[Api]:
    client = Api(gserver.url)
    yield client
    await client.close()


@pytest.fixture
async def anon(gserver: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A candidate's browser on a lab computer: no credentials, from 127.0.0.1."""
    async with httpx.AsyncClient(base_url=gserver.url, timeout=30) as client:
        yield client


@pytest.fixture
async def via_proxy(gserver: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """Requests arriving from the trusted proxy's address, 127.0.0.2."""
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=gserver.url, transport=transport,
                                 timeout=30) as client:
        yield client


async def _pool(staff: Api, size: int) -> dict[str, Any]:
    response = await staff.http.put("/api/v1/guests/pool", json={"size": size})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def _guest_exam(staff: Api, networks: list[str], **fields: Any) -> str:
    settings = {"allow_guests": True, "lab_networks": networks, **fields.pop("settings", {})}
    exam = await staff.create_exam(id=f"g-{uuid.uuid4().hex[:8]}", settings=settings, **fields)
    return str(exam["id"])


async def _reserve(client: httpx.AsyncClient, exam_id: str, **headers: str) -> httpx.Response:
    return await client.post("/api/v1/guests/reserve", json={"exam_id": exam_id, **PEOPLE},
                             headers=headers)


async def _release_all(staff: Api) -> None:
    listed = (await staff.http.get("/api/v1/guests", params={"status": "reserved"})).json()
    for account in listed["accounts"]:
        await staff.http.post(f"/api/v1/guests/{account['login']}/release")


async def test_guests_offered_only_in_lab_networks_while_live(
    staff: Api, anon: httpx.AsyncClient
) -> None:
    await _pool(staff, 5)
    now = time.time()
    lab = await _guest_exam(staff, ["127.0.0.0/8"])
    elsewhere = await _guest_exam(staff, ["10.9.0.0/16"])
    no_guests = await _guest_exam(staff, ["127.0.0.0/8"], settings={"allow_guests": False})
    later = await _guest_exam(staff, ["127.0.0.0/8"], starts_at=now + 3600)
    over = await _guest_exam(staff, ["127.0.0.0/8"], starts_at=now - 7200, ends_at=now - 3600)
    offer = (await anon.get("/api/v1/guests/offer")).json()
    offered = {e["id"] for e in offer["exams"]}
    assert lab in offered and offer["client_ip"] == "127.0.0.1"
    assert not offered & {elsewhere, no_guests, later, over}
    for exam_id in (elsewhere, no_guests, later, over):
        refused = await _reserve(anon, exam_id)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "guest_not_offered"
    missing = await _reserve(anon, "no-such-exam")
    assert missing.status_code == 403
    ok = await _reserve(anon, lab)
    assert ok.status_code == 200, ok.text
    assert ok.json()["login"].startswith("guest")
    bad = await anon.post("/api/v1/guests/reserve", json={"exam_id": lab, "title": "Mr"})
    assert bad.status_code == 400
    await _release_all(staff)


async def test_forwarded_for_only_from_trusted_proxies(
    staff: Api, anon: httpx.AsyncClient, via_proxy: httpx.AsyncClient
) -> None:
    await _pool(staff, 5)
    lab = await _guest_exam(staff, ["127.0.0.0/8"])
    remote_lab = await _guest_exam(staff, ["10.9.0.0/16"])
    spoof = {"X-Forwarded-For": "10.9.1.2"}
    # From 127.0.0.1 (not a trusted proxy) the header is ignored: the peer address counts.
    refused = await _reserve(anon, remote_lab, **spoof)
    assert refused.status_code == 403, refused.text
    assert (await _reserve(anon, lab, **spoof)).status_code == 200
    assert (await anon.get("/api/v1/guests/offer", headers=spoof)).json()["client_ip"] == (
        "127.0.0.1")
    # From the trusted proxy it names the client.
    offer = (await via_proxy.get("/api/v1/guests/offer", headers=spoof)).json()
    assert offer["client_ip"] == "10.9.1.2"
    assert [e["id"] for e in offer["exams"] if e["id"] in (lab, remote_lab)] == [remote_lab]
    assert (await _reserve(via_proxy, remote_lab, **spoof)).status_code == 200
    outside = await _reserve(via_proxy, lab, **spoof)
    assert outside.status_code == 403, outside.text
    # A client-supplied hop before the proxy's own entry does not help either.
    chained = {"X-Forwarded-For": "127.0.0.1, 192.168.7.7"}
    assert (await _reserve(via_proxy, lab, **chained)).status_code == 403
    # Without the header, the proxy itself is the client.
    assert (await via_proxy.get("/api/v1/guests/offer")).json()["client_ip"] == "127.0.0.2"
    await _release_all(staff)


async def _open(ws_url: str, token: str, exam_id: str) -> tuple[WsClient, dict[str, Any]]:
    client = await WsClient.connect(f"{ws_url}/ws/candidate")
    await client.send({"type": "open", "token": token, "exam_id": exam_id})
    return client, await client.recv("opened", "refused")


async def test_a_guest_sits_the_exam_and_is_reassigned(
    gserver: ServerProcess, staff: Api, anon: httpx.AsyncClient
) -> None:
    await _pool(staff, 5)
    exam_id = await _guest_exam(staff, ["127.0.0.0/8"], groups=["hall-9"])
    reserved = (await _reserve(anon, exam_id)).json()
    token = await login(anon, reserved["login"], reserved["password"])
    client, opened = await _open(gserver.ws_url, token, exam_id)
    assert opened["type"] == "opened", opened
    sid = opened["session"]["id"]
    assert opened["session"]["group"] == "hall-9"
    # The guest account opens only the exam it was reserved for.
    other_exam = await _guest_exam(staff, ["127.0.0.0/8"], groups=["hall-9"])
    elsewhere, refused = await _open(gserver.ws_url, token, other_exam)
    assert (refused["type"], refused["reason"]) == ("refused", "not_eligible")
    await elsewhere.close()
    await client.send({"type": "progress", "position": 2, "answered": 1})
    await staff.command(exam_id, action="pause", target=sid)  # staff controls apply as usual
    assert (await client.recv("command"))["action"] == "pause"

    listed = (await staff.http.get(f"/api/v1/exams/{exam_id}/guest-sessions")).json()
    assert listed["warning"] and [s["session_id"] for s in listed["sessions"]] == [sid]
    assert listed["sessions"][0]["guest"]["student_number"] == "S-1912"
    url = f"/api/v1/exams/{exam_id}/guest-sessions/{sid}/reassign"
    busy = await staff.http.post(url, json={"candidate_id": "turing"})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "guest_session_active"
    await staff.command(exam_id, action="terminate", target=sid)
    await client.close()

    _, proctor = await make_user(staff, ["proctor"], ["hall-9"])
    denied = await staff.http.post(url, json={"candidate_id": "turing"}, headers=bearer(proctor))
    assert denied.status_code == 403
    _, other_scope = await make_user(staff, ["supervisor"], ["hall-1"])
    hidden = await staff.http.get(f"/api/v1/exams/{exam_id}/guest-sessions",
                                  headers=bearer(other_scope))
    assert hidden.status_code == 404  # an exam out of scope answers like an unknown one
    unseen = await staff.http.post(url, json={"candidate_id": "turing"},
                                   headers=bearer(other_scope))
    assert unseen.status_code == 404
    supervisor_user, supervisor = await make_user(staff, ["supervisor"], ["hall-9"])
    dashboard, snapshot = await watch(gserver.ws_url, exam_id)
    done = await staff.http.post(url, headers=bearer(supervisor),
                                 json={"candidate_id": "turing", "candidate_name": "Alan T."})
    assert done.status_code == 200, done.text
    # The watching dashboard learns it live, in sequence.
    live = await dashboard.recv_event("reassigned", sid)
    assert live["seq"] > snapshot["seq"]
    assert live["changes"]["candidate_id"] == "turing"
    await dashboard.close()
    assert done.json()["account_released"] is True
    again = await staff.http.post(url, headers=bearer(supervisor), json={"candidate_id": "x"})
    assert again.status_code == 409

    session = await staff.session(exam_id, sid)
    assert (session["candidate_id"], session["candidate_name"]) == ("turing", "Alan T.")
    history = await staff.history(exam_id, sid)
    assert history[-1]["kind"] == "reassigned"
    assert all(e["details"].get("guest_account") == reserved["login"] for e in history[:-1])
    audit = (await staff.http.get("/api/v1/audit", params={"action": "guest_reassigned"})).json()
    [entry] = [e for e in audit["entries"] if e["subject"] == f"session:{sid}"]
    assert entry["actor"] == f"staff:{supervisor_user['id']}"
    assert entry["details"]["guest_account"] == reserved["login"]
    # The released account refuses its old password, and its old login token is dead.
    stale = await anon.post("/api/v1/auth/login",
                            json={"login": reserved["login"], "password": reserved["password"]})
    assert stale.status_code == 401
    await asyncio.sleep(1.1)  # the authenticator caches token lookups for a second
    refused_client, refused = await _open(gserver.ws_url, token, exam_id)
    assert refused["type"] == "refused"
    await refused_client.close()
    # Reserved again: the same account, another password.
    again_reserved = (await _reserve(anon, exam_id)).json()
    assert again_reserved["login"] == reserved["login"]
    assert again_reserved["password"] != reserved["password"]
    await login(anon, reserved["login"], again_reserved["password"])
    await _release_all(staff)


async def test_guest_passwords_are_words_and_guesses_never_lock_the_account(
    staff: Api, anon: httpx.AsyncClient
) -> None:
    """A guest password is four short words; a dozen wrong guesses (more than the lockout
    limit, at once) never block the account, and the right password still logs in."""
    await _pool(staff, 5)
    exam_id = await _guest_exam(staff, ["127.0.0.0/8"])
    reserved = (await _reserve(anon, exam_id)).json()
    words = reserved["password"].split("-")
    assert len(words) == 4 and all(w.isalpha() and w.islower() and len(w) <= 5 for w in words)
    guesses = await asyncio.gather(*(
        anon.post("/api/v1/auth/login", json={"login": reserved["login"], "password": guess})
        for guess in [f"wrong-guess-{i}" for i in range(12)]
    ))
    assert [g.status_code for g in guesses] == [401] * 12
    await login(anon, reserved["login"], reserved["password"])
    await _release_all(staff)


# -- the race ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_servers(pg_url: str) -> Iterator[list[ServerProcess]]:
    servers = [ServerProcess(database_url=pg_url) for _ in range(2)]
    servers[0].start()  # creates the tables
    servers[1].start()
    yield servers
    for process in servers:
        process.stop()


@pytest.mark.postgres
@pytest.mark.timeout(300)  # 200 argon2 hashes and ~800 SQL transactions on two busy cores
async def test_200_reservations_race_for_100_accounts_on_two_processes(
    pg_servers: list[ServerProcess],
) -> None:
    first, second = pg_servers
    staff = Api(first.url)
    try:
        await _pool(staff, 100)
        exam_id = await _guest_exam(staff, ["127.0.0.0/8"])
    finally:
        await staff.close()
    limits = httpx.Limits(max_connections=200)
    # Each process serves its 100 one after another in small groups: the last answer comes
    # when the whole burst is done, which takes a while on a loaded machine.
    clients = [httpx.AsyncClient(base_url=s.url, timeout=240, limits=limits)
               for s in pg_servers]
    try:
        replies = await asyncio.gather(
            *(_reserve(clients[i % 2], exam_id) for i in range(200))
        )
    finally:
        for client in clients:
            await client.aclose()
    won = [r.json() for r in replies if r.status_code == 200]
    lost = [r for r in replies if r.status_code != 200]
    assert len(won) == 100, [r.text for r in lost[:3]]
    assert len({w["login"] for w in won}) == 100
    assert {w["login"] for w in won} == {f"guest{k}" for k in range(1, 101)}
    assert len(lost) == 100
    assert all(r.status_code == 409 and r.json()["error"]["code"] == "no_guest_free"
               for r in lost)
    staff = Api(second.url, STAFF_TOKEN)
    try:
        status = (await staff.http.get("/api/v1/guests/status")).json()
    finally:
        await staff.close()
    assert (status["free"], status["reserved"]) == (0, 100)


def _cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "realtime.cli", "guests", "--url", server.url, "--token",
         STAFF_TOKEN, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


async def test_cli(gserver: ServerProcess, staff: Api, anon: httpx.AsyncClient) -> None:
    created = await asyncio.to_thread(_cli, gserver, "create", "--count", "7")
    assert created.returncode == 0, created.stderr
    assert "7 accounts" in created.stdout
    exam_id = await _guest_exam(staff, ["127.0.0.0/8"])
    reserved = (await _reserve(anon, exam_id)).json()
    listing = await asyncio.to_thread(_cli, gserver, "list", "--status", "reserved")
    assert reserved["login"] in listing.stdout and "Turing" in listing.stdout
    status = await asyncio.to_thread(_cli, gserver, "status")
    assert "1 reserved" in status.stdout
    refused = await asyncio.to_thread(_cli, gserver, "reassign", "--exam", exam_id,
                                      "--session", "nope", "--candidate", "c1")
    assert refused.returncode == 1 and "HTTP 404" in refused.stderr
    shrink = await asyncio.to_thread(_cli, gserver, "resize", "--count", "0")
    assert shrink.returncode == 1 and "guest_reserved" in shrink.stderr
    released = await asyncio.to_thread(_cli, gserver, "release", reserved["login"])
    assert released.returncode == 0 and "free" in released.stdout
    await _release_all(staff)
