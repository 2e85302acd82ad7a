"""Identity and access end to end, on real servers: the role × action matrix over REST and
WebSocket, group scopes, login cookies + CSRF, live sockets closing on deactivation, role
change and logout, lockout across two processes, candidate limits, audit and CSV exports."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from clients import JSON, Api, WsClient, open_candidate, watch
from redis_server import RedisServer
from server import STAFF_TOKEN, ServerProcess
from websockets.exceptions import InvalidStatus

from realtime.auth.permissions import ACTION_PERMISSION
from realtime.identity.roles import RoleSet
from realtime.state.model import Action

PASSWORD = "a good long password"
ROLES = RoleSet.default()
PARAMS: dict[str, dict[str, Any]] = {"extend": {"minutes": 5}, "notice": {"text": "hello"},
                                     "reduce": {"minutes": 1}, "reopen": {"reason": "mistake"}}


@pytest.fixture(scope="module", params=["memory", "redis"])
def idserver(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[ServerProcess]:
    process = ServerProcess.on_store(request.param, redis_server, "i",
                                     auth_recheck_interval=0.3)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def admin(idserver: ServerProcess) -> AsyncIterator[Api]:
    client = Api(idserver.url)
    yield client
    await client.close()


async def make_user(
    admin: Api, roles: list[str], groups: list[str] | None = None, email: str | None = None,
) -> tuple[dict[str, Any], str]:
    """A new active user; returns it and a bearer token from a real login."""
    email = email or f"{'-'.join(roles)}-{uuid.uuid4().hex[:8]}@example.org"
    created = await admin.http.post(
        "/api/v1/users",
        json={"full_name": f"User {email}", "email": email, "roles": roles,
              "groups": groups or []},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    done = await admin.http.post(
        "/api/v1/auth/activate", json={"token": body["activation_token"], "password": PASSWORD}
    )
    assert done.status_code == 200, done.text
    token = await login(admin.http, email)
    return body["user"], token


async def login(http: httpx.AsyncClient, name: str, password: str = PASSWORD) -> str:
    response = await http.post("/api/v1/auth/login", json={"login": name, "password": password},
                               headers={"Authorization": ""})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def proctor_socket(ws_url: str, token: str, **headers: str) -> WsClient:
    return await WsClient.connect(
        f"{ws_url}/ws/proctor", JSON, additional_headers={**bearer(token), **headers}
    )


# -- the matrix ------------------------------------------------------------------------------


async def test_role_action_matrix(idserver: ServerProcess, admin: Api) -> None:
    """Every role × every action, allowed or refused, over REST and over WebSocket."""
    exam = await admin.create_exam(groups=["A"])
    sessions = await admin.create_sessions(exam["id"], 2, group="A")
    http = admin.http
    for role_name, role in ROLES.roles.items():
        _, token = await make_user(admin, [role_name], ["A"])
        h = bearer(token)
        staff = role.staff
        # session commands over REST
        for action in Action:
            perm = ACTION_PERMISSION[action].value  # acknowledge_hand: sessions.notice
            allowed = staff and perm in {p.value for p in role.permissions}
            r = await http.post(f"/api/v1/exams/{exam['id']}/commands", headers=h,
                                json={"action": action.value, "target": sessions[0]["id"],
                                      **PARAMS.get(action.value, {})})
            assert r.status_code == (200 if allowed else 403), (role_name, action, r.text)
        # the other REST permissions
        checks: list[tuple[str, str, str, Any]] = [
            ("sessions.view", "GET", f"/api/v1/exams/{exam['id']}/sessions", None),
            ("sessions.history", "GET",
             f"/api/v1/exams/{exam['id']}/sessions/{sessions[1]['id']}/history", None),
            ("sessions.irregularity", "POST",
             f"/api/v1/exams/{exam['id']}/sessions/{sessions[1]['id']}/irregularities",
             {"category": "examinee/behaviour"}),
            ("exams.manage", "POST", "/api/v1/exams", {"title": "x", "groups": ["A"]}),
            ("sessions.create", "POST", f"/api/v1/exams/{exam['id']}/sessions",
             {"candidates": [{"candidate_id": f"n-{role_name}", "group": "A"}]}),
            ("users.manage", "GET", "/api/v1/users", None),
            ("users.export", "GET", "/api/v1/users.csv", None),
            ("audit.view", "GET", "/api/v1/audit", None),
        ]
        for perm, method, path, body in checks:
            allowed = staff and perm in {p.value for p in role.permissions}
            r = await http.request(method, path, headers=h, json=body)
            assert (r.status_code < 300) == allowed, (role_name, perm, r.status_code, r.text)
            if not allowed:
                assert r.status_code == 403
        # over WebSocket
        ws = await proctor_socket(idserver.ws_url, token)
        if not staff:
            assert await ws.wait_closed() == 4403
            continue
        await ws.send({"type": "subscribe", "exam_id": exam["id"]})
        assert (await ws.recv("snapshot", "error"))["type"] == "snapshot"
        for i, action in enumerate(Action):
            allowed = ACTION_PERMISSION[action].value in {p.value for p in role.permissions}
            await ws.send({"type": "command", "request_id": i, "action": action.value,
                           "target": sessions[1]["id"], **PARAMS.get(action.value, {})})
            reply = await ws.recv("command_result", "error")
            assert reply["request_id"] == i
            if allowed:
                assert reply["type"] == "command_result", (role_name, action, reply)
            else:
                assert (reply["type"], reply["code"]) == ("error", "forbidden"), (role_name, action)
        await ws.close()
    denials = (await http.get("/api/v1/audit", params={"action": "permission_denied"})).json()
    assert any(e["details"].get("command") == "terminate" for e in denials["entries"])
    assert any(e["details"].get("permission") == "audit.view" for e in denials["entries"])


# -- scopes ----------------------------------------------------------------------------------


async def test_group_scope(idserver: ServerProcess, admin: Api) -> None:
    """A proctor of group A never sees or touches group B: lists, snapshot, deltas, history,
    replay and bulk commands."""
    mixed = await admin.create_exam(groups=[])
    a_sessions = await admin.create_sessions(mixed["id"], 2, group="A")
    b_sessions = (await admin.http.post(
        f"/api/v1/exams/{mixed['id']}/sessions",
        json={"candidates": [{"candidate_id": f"b{i}", "group": "B"} for i in range(2)]},
    )).json()["sessions"]
    other = await admin.create_exam(groups=["B"])
    _, token = await make_user(admin, ["proctor"], ["A"])
    h = bearer(token)
    http = admin.http
    exams = (await http.get("/api/v1/exams", headers=h)).json()["exams"]
    assert other["id"] not in {e["id"] for e in exams}
    listed = (await http.get(f"/api/v1/exams/{mixed['id']}/sessions", headers=h)).json()
    assert {s["id"] for s in listed["sessions"]} == {s["id"] for s in a_sessions}
    b0 = b_sessions[0]["id"]
    base = f"/api/v1/exams/{mixed['id']}/sessions/{b0}"
    assert (await http.get(base, headers=h)).status_code == 404
    assert (await http.get(base + "/history", headers=h)).status_code == 404
    assert (await http.get(f"/api/v1/exams/{other['id']}", headers=h)).status_code == 404

    ws, snapshot = await watch(idserver.ws_url, mixed["id"], JSON, token=token)
    assert {s["id"] for s in snapshot["sessions"]} == {s["id"] for s in a_sessions}
    seq = snapshot["seq"]
    # group B first, then group A: the first delta the proctor gets must be A's
    await admin.command(mixed["id"], action="extend", minutes=3, target=b0)
    await admin.command(mixed["id"], action="extend", minutes=3, target=a_sessions[0]["id"])
    event = await ws.recv("event")
    assert event["event"]["session_id"] == a_sessions[0]["id"]
    # a bulk command of the proctor touches group A only
    result = (await http.post(f"/api/v1/exams/{mixed['id']}/commands", headers=h,
                              json={"action": "lock", "target": "all"})).json()
    assert {a["session_id"] for a in result["applied"]} == {s["id"] for s in a_sessions}
    assert not {s["session_id"] for s in result["skipped"]} & {s["id"] for s in b_sessions}
    assert "out_of_scope" not in result  # left out as if they did not exist, not even counted
    # explicitly naming a B session: skipped as if it did not exist
    named = (await http.post(f"/api/v1/exams/{mixed['id']}/commands", headers=h,
                             json={"action": "lock", "target": [b0]})).json()
    assert named["applied"] == [] and named["skipped"][0]["reason"] == "not_found"
    for s in b_sessions:
        assert (await admin.session(mixed["id"], s["id"]))["locked"] is False
    # the WS deltas of the bulk lock are A's only
    for _ in a_sessions:
        assert (await ws.recv_event("lock"))["session_id"] in {s["id"] for s in a_sessions}
    # replay from a sequence number: again A only
    await ws.send({"type": "subscribe", "exam_id": mixed["id"], "last_seq": seq})
    replay = await ws.recv("events", "snapshot")
    assert replay["type"] == "events" and replay["events"]
    assert {e["session_id"] for e in replay["events"]} <= {s["id"] for s in a_sessions}
    # subscribing to an exam of group B: not found, like an exam that does not exist
    await ws.send({"type": "subscribe", "exam_id": other["id"]})
    reply = await ws.recv("snapshot", "error")
    assert (reply["type"], reply["code"]) == ("error", "not_found")
    await ws.close()


# -- cookies, CSRF, origins ------------------------------------------------------------------


async def test_cookie_login_and_csrf(idserver: ServerProcess, admin: Api) -> None:
    user, _ = await make_user(admin, ["scheduler"], ["A"])
    async with httpx.AsyncClient(base_url=idserver.url) as browser:
        r = await browser.post("/api/v1/auth/login",
                               json={"login": user["email"], "password": PASSWORD})
        assert r.status_code == 200
        cookies = r.headers.get_list("set-cookie")
        token_cookie = next(c for c in cookies if c.startswith("realtime_token="))
        csrf_cookie = next(c for c in cookies if c.startswith("realtime_csrf="))
        assert "HttpOnly" in token_cookie and "samesite=strict" in token_cookie.lower()
        assert "HttpOnly" not in csrf_cookie
        csrf = r.json()["csrf_token"]
        assert browser.cookies["realtime_csrf"] == csrf
        assert (await browser.get("/api/v1/exams")).status_code == 200
        exam = {"title": "cookie exam", "groups": ["A"]}
        assert (await browser.post("/api/v1/exams", json=exam)).status_code == 403
        bad = await browser.post("/api/v1/exams", json=exam, headers={"X-CSRF-Token": "nope"})
        assert bad.status_code == 403
        ok = await browser.post("/api/v1/exams", json=exam, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 201, ok.text
        me = (await browser.get("/api/v1/auth/me")).json()
        assert me["id"] == user["id"] and me["groups"] == ["A"] and me["roles"] == ["scheduler"]
        cookie = f"realtime_token={browser.cookies['realtime_token']}"
        host = f"127.0.0.1:{idserver.port}"
        # a socket authenticated by cookie from another site is refused
        evil = await WsClient.connect(f"{idserver.ws_url}/ws/proctor", JSON, additional_headers={
            "Cookie": cookie, "Origin": "http://evil.example"})
        assert await evil.wait_closed() == 4403
        good = await WsClient.connect(f"{idserver.ws_url}/ws/proctor", JSON, additional_headers={
            "Cookie": cookie, "Origin": f"http://{host}"})
        await good.send({"type": "subscribe", "exam_id": ok.json()["id"]})
        assert (await good.recv("snapshot"))["type"] == "snapshot"
        out = await browser.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 200
        assert await good.wait_closed() == 4401  # logout ends live sockets too
        assert (await browser.get("/api/v1/exams")).status_code == 401


async def test_origin_allow_list() -> None:
    server = ServerProcess(allowed_origins="http://good.example").start()
    try:
        ok = await proctor_socket(server.ws_url, STAFF_TOKEN, Origin="http://good.example")
        await ok.send({"type": "ping", "t": 1})
        assert (await ok.recv("pong"))["type"] == "pong"
        await ok.close()
        try:
            bad = await proctor_socket(server.ws_url, STAFF_TOKEN, Origin="http://evil.example")
        except InvalidStatus as exc:
            assert exc.response.status_code == 403
        else:
            assert await bad.wait_closed() == 4403
    finally:
        server.stop()


# -- live sockets follow account changes -------------------------------------------------------


async def test_deactivation_and_role_change_close_live_sockets(
    idserver: ServerProcess, admin: Api
) -> None:
    exam = await admin.create_exam(groups=["A"])
    gone, gone_token = await make_user(admin, ["proctor"], ["A"])
    moved, moved_token = await make_user(admin, ["proctor"], ["A"])
    ws1, snap1 = await watch(idserver.ws_url, exam["id"], JSON, token=gone_token)
    ws2, snap2 = await watch(idserver.ws_url, exam["id"], JSON, token=moved_token)
    assert snap1["type"] == snap2["type"] == "snapshot"
    r = await admin.http.post(f"/api/v1/users/{gone['id']}/deactivate")
    assert r.status_code == 200 and r.json()["status"] == "deactivated"
    r = await admin.http.patch(f"/api/v1/users/{moved['id']}", json={"roles": ["viewer"]})
    assert r.status_code == 200
    closed = await asyncio.gather(ws1.wait_closed(5), ws2.wait_closed(5))
    assert closed == [4401, 4403]
    r = await admin.http.get("/api/v1/exams", headers=bearer(gone_token))
    assert r.status_code == 401
    r = await admin.http.post("/api/v1/auth/login", json={"login": gone["email"],
                                                          "password": PASSWORD})
    assert r.status_code == 403 and "deactivated" in r.json()["error"]["message"]
    # the viewer reconnects and may watch but not act
    ws3, snap3 = await watch(idserver.ws_url, exam["id"], JSON, token=moved_token)
    assert snap3["type"] == "snapshot"
    await ws3.send({"type": "command", "action": "pause", "target": "all"})
    assert (await ws3.recv("error"))["code"] == "forbidden"
    await ws3.close()
    assert (await admin.http.post(f"/api/v1/users/{gone['id']}/reactivate")).status_code == 200
    await login(admin.http, gone["email"])


async def test_last_admin_is_kept(idserver: ServerProcess, admin: Api) -> None:
    root, token = await make_user(admin, ["admin"])
    users = (await admin.http.get("/api/v1/users", params={"role": "admin",
                                                           "status": "active"})).json()["users"]
    for user in users:  # earlier tests of this module may have made admins
        if user["id"] != root["id"]:
            r = await admin.http.patch(f"/api/v1/users/{user['id']}", json={"roles": ["viewer"]})
            assert r.status_code == 200
    r = await admin.http.post(f"/api/v1/users/{root['id']}/deactivate")
    assert r.status_code == 409 and "last active admin" in r.json()["error"]["message"]
    r = await admin.http.patch(f"/api/v1/users/{root['id']}", json={"roles": ["proctor"]},
                               headers=bearer(token))
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    second, _ = await make_user(admin, ["admin", "proctor"])
    r = await admin.http.patch(f"/api/v1/users/{root['id']}", json={"roles": ["proctor"]})
    assert r.status_code == 200
    r = await admin.http.patch(f"/api/v1/users/{second['id']}", json={"roles": ["proctor"]})
    assert r.status_code == 409


# -- candidates ------------------------------------------------------------------------------


async def test_candidates_never_act_as_staff(idserver: ServerProcess, admin: Api) -> None:
    exam = await admin.create_exam()
    mine, theirs = await admin.create_sessions(exam["id"], 2)
    # a candidate token is no staff token
    r = await admin.http.post(f"/api/v1/exams/{exam['id']}/commands",
                              headers=bearer(mine["token"]),
                              json={"action": "terminate", "target": theirs["id"]})
    assert r.status_code == 401
    ws = await proctor_socket(idserver.ws_url, mine["token"])
    assert await ws.wait_closed() == 4401
    # it reaches its own session only
    client = await WsClient.connect(f"{idserver.ws_url}/ws/candidate", JSON)
    await client.send({"type": "open", "token": mine["token"]})
    opened = await client.recv("opened", "refused")
    assert opened["type"] == "opened" and opened["session"]["id"] == mine["id"]
    # and a staff command on the candidate channel is just an unknown message
    await client.send({"type": "command", "action": "terminate", "target": theirs["id"]})
    assert (await client.recv("error"))["code"] == "unknown_type"
    assert (await admin.session(exam["id"], theirs["id"]))["status"] == "ready"
    await client.close()
    other, _ = await open_candidate(idserver.ws_url, theirs["access_code"], JSON)
    await other.close()
    # a user account with the candidate role is no staff either
    _, token = await make_user(admin, ["candidate"])
    r = await admin.http.post(f"/api/v1/exams/{exam['id']}/commands", headers=bearer(token),
                              json={"action": "pause", "target": "all"})
    assert r.status_code == 403
    ws = await proctor_socket(idserver.ws_url, token)
    assert await ws.wait_closed() == 4403


# -- audit and exports -----------------------------------------------------------------------


async def test_audit_and_exports(idserver: ServerProcess, admin: Api) -> None:
    user, token = await make_user(admin, ["supervisor"], ["A"])
    exam = await admin.create_exam(groups=["A"])
    [session] = await admin.create_sessions(exam["id"], 1, group="A")
    r = await admin.http.post(f"/api/v1/exams/{exam['id']}/commands", headers=bearer(token),
                              json={"action": "lock", "target": session["id"]})
    assert r.status_code == 200
    bad = await admin.http.post("/api/v1/auth/login",
                                json={"login": user["email"], "password": "wrong wrong"})
    assert bad.status_code == 401
    assert (await admin.http.get("/api/v1/users", headers=bearer(token))).status_code == 403
    entries = (await admin.http.get("/api/v1/audit", params={"user": user["id"]})).json()[
        "entries"]
    actions = [e["action"] for e in entries]
    for expected in ("user_created", "user_activated", "login", "session_command",
                     "login_failed", "permission_denied"):
        assert expected in actions, actions
    command = next(e for e in entries if e["action"] == "session_command")
    assert command["ip"] == "127.0.0.1" and command["details"]["applied"] == [session["id"]]
    assert command["details"]["command"] == "lock"
    t = command["at"]
    window = (await admin.http.get("/api/v1/audit", params={
        "user": user["id"], "from": t, "to": t + 0.0001})).json()["entries"]
    assert [e["action"] for e in window] == ["session_command"]
    newest = (await admin.http.get("/api/v1/audit", params={
        "user": user["id"], "order": "desc", "limit": 2})).json()["entries"]
    assert [e["action"] for e in newest] == actions[::-1][:2]
    text = (await admin.http.get("/api/v1/audit.csv", params={"user": user["id"]})).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["action"] for r in rows] == actions and rows[0]["time"].startswith("20")
    r = await admin.http.get("/api/v1/users.csv", params={"search": user["email"][:12]})
    assert r.headers["content-type"].startswith("text/csv")
    [row] = [x for x in csv.DictReader(io.StringIO(r.text)) if x["email"] == user["email"]]
    assert row["roles"] == "supervisor" and row["status"] == "active" and row["last_login"]
    listed = (await admin.http.get("/api/v1/users", params={"search": user["email"]})).json()
    assert listed["users"][0]["logged_in"] is True and listed["users"][0]["blocked"] is False


# -- lockout across processes ----------------------------------------------------------------


async def test_lockout_across_two_processes(redis_server: RedisServer, tmp_path: Any) -> None:
    redis_server.start()
    shared = {"redis_url": redis_server.url, "redis_prefix": f"l{uuid.uuid4().hex[:8]}:",
              "database_url": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
              "workdir": tmp_path, "login_block_seconds": 6}
    one = ServerProcess(**shared).start()  # type: ignore[arg-type]
    two = ServerProcess(**shared).start()  # type: ignore[arg-type]
    a, b = Api(one.url), Api(two.url)
    try:
        user, _ = await make_user(a, ["proctor"], ["A"])

        async def attempt(api: Api, password: str) -> httpx.Response:
            return await api.http.post("/api/v1/auth/login", headers={"Authorization": ""},
                                       json={"login": user["email"], "password": password})

        for api in (a, b, a, b):
            assert (await attempt(api, "wrong password")).status_code == 401
        fifth = await attempt(b, "wrong password")
        assert fifth.status_code == 429
        error = fifth.json()["error"]
        assert error["code"] == "login_blocked" and "blocked until" in error["message"]
        assert error["blocked_until"] > 0 and int(fifth.headers["retry-after"]) >= 1
        assert (await attempt(a, PASSWORD)).status_code == 429  # blocked on the other, too
        listed = (await b.http.get(f"/api/v1/users/{user['id']}")).json()
        assert listed["blocked"] is True
        assert (await a.http.post(f"/api/v1/users/{user['id']}/unlock")).status_code == 200
        assert (await attempt(b, PASSWORD)).status_code == 200  # lifted at once, everywhere
        for api in (b, a, b, a, b):
            last = await attempt(api, "wrong password")
        assert last.status_code == 429
        blocked_until = last.json()["error"]["blocked_until"]
        assert (await attempt(a, PASSWORD)).status_code == 429
        # The block expires by itself: refused until `blocked_until`, let in after it
        # (polled, bounded; on a loaded machine a login's hashing alone takes a while).
        for _ in range(120):
            reply = await attempt(a, PASSWORD)
            if reply.status_code != 429:
                break
            await asyncio.sleep(0.25)
        assert reply.status_code == 200 and time.time() >= blocked_until - 0.5
        audit = (await b.http.get("/api/v1/audit", params={"user": user["id"],
                                                           "action": "lockout"})).json()
        assert len(audit["entries"]) == 2
    finally:
        await a.close()
        await b.close()
        one.stop()
        two.stop()
