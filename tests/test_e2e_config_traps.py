"""Configuration traps, on real servers: no shared secret with Redis, cookies over HTTPS,
forwarded headers believed only from REALTIME_TRUSTED_PROXIES (also under plain uvicorn),
candidate session tokens that expire and can be revoked, and guessable access codes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clients import Api, WsClient
from redis_server import RedisServer
from server import ServerProcess, free_port
from starlette.requests import Request
from test_identity_e2e import PASSWORD, make_user

from realtime.proxies import Proxies, parse_networks, rewritten_by_server

TOKEN_TTL = 3.0  # seconds a session token of an exam without an end lives (these servers)


def _run_until_up_or_exit(args: list[str], env: dict[str, str], cwd: Path,
                          port: int) -> tuple[int | None, str]:
    """Start a server; (exit code, output) if it exits, (None, output) once it serves."""
    log = cwd / f"out-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    return process.returncode, log.read_text()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                timeout=1) as answer:
                        if answer.status == 200:
                            return None, log.read_text()
                except OSError:
                    time.sleep(0.05)
            raise AssertionError(f"neither served nor exited:\n{log.read_text()[-2000:]}")
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(10)


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env.update({f"REALTIME_{k.upper()}": v for k, v in settings.items()})
    return env


def test_redis_without_a_secret_key_refuses_to_start(redis_server: RedisServer,
                                                     tmp_path: Path) -> None:
    """With a Redis URL and no REALTIME_SECRET_KEY, `realtime serve` and plain uvicorn both
    refuse to start and say which setting is missing."""
    redis_server.start()
    env = _env(redis_url=redis_server.url, redis_prefix=f"c{uuid.uuid4().hex[:8]}:",
               database_url=f"sqlite+aiosqlite:///{tmp_path / 'rt.db'}")
    port = free_port()
    code, output = _run_until_up_or_exit(
        [sys.executable, "-m", "realtime.cli", "serve", "--port", str(port)], env, tmp_path, port)
    assert code == 2, output
    assert "REALTIME_SECRET_KEY" in output and "REALTIME_REDIS_URL" in output
    port = free_port()
    code, output = _run_until_up_or_exit(
        [sys.executable, "-m", "uvicorn", "realtime.app:create_app", "--factory", "--port",
         str(port)], env, tmp_path, port)
    assert code is not None and code != 0, output
    assert "REALTIME_SECRET_KEY" in output


def test_the_embedded_defaults_still_start_without_a_secret_key(tmp_path: Path) -> None:
    """README's `realtime serve` on the embedded defaults (memory, SQLite) needs no key."""
    port = free_port()
    code, output = _run_until_up_or_exit(
        [sys.executable, "-m", "realtime.cli", "serve", "--dev", "--port", str(port)],
        _env(), tmp_path, port)
    assert code is None, output


# -- one server per launch style -------------------------------------------------------------


@pytest.fixture(scope="module", params=["uvicorn", "realtime serve"])
def cserver(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """Plain uvicorn exactly as it starts by default (proxy headers on, trusting 127.0.0.1),
    and `realtime serve`; 127.0.0.2 is the trusted proxy."""
    process = ServerProcess(cli=request.param == "realtime serve", proxy_headers=True,
                            trusted_proxies="127.0.0.2/32", candidate_token_ttl=TOKEN_TTL)
    process.env.pop("FORWARDED_ALLOW_IPS", None)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def staff(cserver: ServerProcess) -> AsyncIterator[Api]:
    client = Api(cserver.url)
    yield client
    await client.close()


def _client(server: ServerProcess, local: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=local)
    return httpx.AsyncClient(base_url=server.url, transport=transport, timeout=30)


async def test_login_cookies_are_secure_when_the_browser_came_over_https(
    cserver: ServerProcess, staff: Api
) -> None:
    """A trusted proxy's X-Forwarded-Proto: https makes both login cookies Secure (without
    REALTIME_COOKIE_SECURE); plain HTTP keeps them usable over HTTP."""
    user, _ = await make_user(staff, ["proctor"], ["A"], email=f"s-{uuid.uuid4().hex[:8]}@x.org")
    body = {"login": user["email"], "password": PASSWORD}
    async with _client(cserver, "127.0.0.2") as proxy, _client(cserver) as direct:
        over_https = await proxy.post("/api/v1/auth/login", json=body,
                                      headers={"X-Forwarded-Proto": "https"})
        plain = await direct.post("/api/v1/auth/login", json=body)
    assert over_https.status_code == plain.status_code == 200
    secure = over_https.headers.get_list("set-cookie")
    assert len(secure) == 2 and all("; secure" in c.lower() for c in secure), secure
    assert not any("; secure" in c.lower() for c in plain.headers.get_list("set-cookie"))


def test_https_is_seen_directly_and_only_from_trusted_proxies() -> None:
    """The scheme rule itself: https on the socket, or X-Forwarded-Proto from a trusted peer."""
    proxies = Proxies(parse_networks(["10.0.0.1/32"]))

    def request(scheme: str, peer: str, proto: str | None) -> Request:
        headers = [(b"x-forwarded-proto", proto.encode())] if proto else []
        return Request({"type": "http", "scheme": scheme, "client": (peer, 5000),
                        "headers": headers, "path": "/", "query_string": b"",
                        "server": ("x", 443)})

    assert proxies.https(request("https", "6.6.6.6", None))
    assert proxies.https(request("http", "10.0.0.1", "https"))
    assert not proxies.https(request("http", "6.6.6.6", "https"))
    assert not proxies.https(request("http", "10.0.0.1", "http"))


def test_an_address_the_server_took_from_the_header_is_noticed() -> None:
    """A peer that is no trusted proxy of ours but is named in X-Forwarded-For was put there
    by the HTTP server (uvicorn's proxy headers), so it is not believed."""
    trusted = parse_networks(["10.0.0.1/32"])
    assert rewritten_by_server("10.20.1.5", ["10.20.1.5"], trusted)
    assert rewritten_by_server("10.20.1.5", ["6.6.6.6, 10.20.1.5:4444"], trusted)
    assert not rewritten_by_server("127.0.0.1", ["10.20.1.5"], trusted)  # the real peer
    assert not rewritten_by_server("10.0.0.1", ["10.0.0.1"], trusted)  # our own proxy


async def test_a_forged_forwarded_for_reserves_no_guest_account(
    cserver: ServerProcess, staff: Api
) -> None:
    """From outside the lab (127.0.0.1), a forged X-Forwarded-For naming a lab address gets
    no guest account, whether uvicorn's own proxy headers are on or not; through the
    trusted proxy the same header counts."""
    assert (await staff.http.put("/api/v1/guests/pool", json={"size": 3})).status_code == 200
    exam = await staff.create_exam(id=f"g-{uuid.uuid4().hex[:8]}",
                                   settings={"allow_guests": True,
                                             "lab_networks": ["10.20.0.0/16"]})
    forged = {"X-Forwarded-For": "10.20.1.5"}
    reserve = {"exam_id": exam["id"], "title": "Mx", "first_name": "Eve", "surname": "Forger"}
    async with _client(cserver) as outside, _client(cserver, "127.0.0.2") as proxy:
        offer = (await outside.get("/api/v1/guests/offer", headers=forged)).json()
        assert exam["id"] not in [e["id"] for e in offer["exams"]]
        refused = await outside.post("/api/v1/guests/reserve", json=reserve, headers=forged)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "guest_not_offered"
        through = await proxy.post("/api/v1/guests/reserve", json=reserve, headers=forged)
        assert through.status_code == 200, through.text
        await staff.http.post(f"/api/v1/guests/{through.json()['login']}/release")


# -- candidate session tokens ----------------------------------------------------------------


async def _open(server: ServerProcess, token: str) -> tuple[WsClient, dict[str, Any]]:
    client = await WsClient.connect(f"{server.ws_url}/ws/candidate")
    await client.send({"type": "open", "token": token})
    return client, await client.recv("opened", "refused")


async def test_session_tokens_expire_but_never_mid_exam(cserver: ServerProcess,
                                                        staff: Api) -> None:
    """Past REALTIME_CANDIDATE_TOKEN_TTL an unused token is refused, while a token whose
    session is running still reopens it."""
    exam = await staff.create_exam()
    unused, running = await staff.create_sessions(exam["id"], 2)
    client, opened = await _open(cserver, running["token"])
    assert opened["type"] == "opened", opened
    await client.close()
    await asyncio.sleep(TOKEN_TTL + 0.5)  # the tokens' lifetime passes (no end on this exam)
    late, refused = await _open(cserver, unused["token"])
    assert (refused["type"], refused["reason"]) == ("refused", "not_found")
    assert "expired" in refused["message"]
    await late.close()
    again, reopened = await _open(cserver, running["token"])
    assert reopened["type"] == "opened", reopened  # active: never cut by expiry
    await again.close()


async def test_staff_revoke_a_session_token_and_get_a_new_one(cserver: ServerProcess,
                                                             staff: Api) -> None:
    """POST …/token: the old token is refused from then on, the new one opens; scope and
    permission apply; the history says who did it."""
    exam = await staff.create_exam(ends_at=time.time() + 3600, groups=["T"])
    [session] = await staff.create_sessions(exam["id"], 1, group="T")
    url = f"/api/v1/exams/{exam['id']}/sessions/{session['id']}/token"
    _, proctor = await make_user(staff, ["proctor"], ["T"])
    denied = await staff.http.post(url, headers={"Authorization": f"Bearer {proctor}"})
    assert denied.status_code == 403
    _, outsider = await make_user(staff, ["scheduler"], ["other"])
    hidden = await staff.http.post(url, headers={"Authorization": f"Bearer {outsider}"})
    assert hidden.status_code == 404
    answer = await staff.http.post(url)
    assert answer.status_code == 200, answer.text
    fresh = answer.json()
    assert fresh["generation"] == 1 and fresh["token"] != session["token"]
    assert fresh["expires_after"] >= exam["ends_at"] + TOKEN_TTL - 1
    old, refused = await _open(cserver, session["token"])
    assert (refused["type"], refused["reason"]) == ("refused", "not_found")
    assert "replaced" in refused["message"]
    await old.close()
    new, opened = await _open(cserver, fresh["token"])
    assert opened["type"] == "opened", opened
    assert "token_gen" not in opened["session"]
    await new.close()
    history = await staff.history(exam["id"], session["id"])
    [revoked] = [e for e in history if e["kind"] == "token_revoked"]
    assert revoked["actor"] == "staff:admin"


async def test_guessable_access_codes_are_refused(staff: Api) -> None:
    """A custom access code must be 8+ letters or digits with 5+ different ones: 400 with a
    message, nothing created; a good one is accepted."""
    exam = await staff.create_exam()
    for bad in ("A", "AB12", "AAAAAAAA", "ABABABAB12", "hall 7 ada", "ÄÖÜÄÖÜÄÖÜ"):
        answer = await staff.http.post(
            f"/api/v1/exams/{exam['id']}/sessions",
            json={"candidates": [{"candidate_id": "x1"}, {"candidate_id": "x2",
                                                          "access_code": bad}]})
        assert answer.status_code == 400, (bad, answer.text)
        assert "access code" in answer.json()["error"]["message"]
    listed = (await staff.http.get(f"/api/v1/exams/{exam['id']}/sessions")).json()
    assert listed["sessions"] == []
    good = await staff.http.post(f"/api/v1/exams/{exam['id']}/sessions",
                                 json={"candidates": [{"candidate_id": "x1",
                                                       "access_code": "hall7-ada"}]})
    assert good.status_code == 201 and good.json()["sessions"][0]["access_code"] == "HALL7-ADA"

