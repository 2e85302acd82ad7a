"""Corrections end to end (issue 11): reopening a terminated session, taking time away,
reason categories and strict resume per exam. Real uvicorn on memory and on Redis, real
WebSocket clients, real users with roles."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from clients import JSON, Api, WsClient, eventually, open_candidate, watch
from redis_server import RedisServer
from server import ServerProcess

PASSWORD = "a good long password"


@pytest.fixture(scope="module", params=["memory", "redis"])
def cserver(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[ServerProcess]:
    """A server whose deployment requires a reason category for pause (and nothing else)."""
    process = ServerProcess.on_store(request.param, redis_server, "c",
                                     reason_category_required="pause")
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def admin(cserver: ServerProcess) -> AsyncIterator[Api]:
    client = Api(cserver.url)
    yield client
    await client.close()


async def user_api(admin: Api, role: str, groups: list[str]) -> tuple[str, Api]:
    """A new user of `role` who logged in: (user id, an Api with their token)."""
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.org"
    created = await admin.http.post("/api/v1/users", json={
        "full_name": f"A {role}", "email": email, "roles": [role], "groups": groups})
    assert created.status_code == 201, created.text
    body = created.json()
    done = await admin.http.post("/api/v1/auth/activate", json={
        "token": body["activation_token"], "password": PASSWORD})
    assert done.status_code == 200, done.text
    login = await admin.http.post("/api/v1/auth/login", json={"login": email, "password": PASSWORD},
                                  headers={"Authorization": ""})
    assert login.status_code == 200, login.text
    return body["user"]["id"], Api(str(admin.http.base_url), login.json()["token"])


async def command(api: Api, exam_id: str, **body: Any) -> tuple[int, dict[str, Any]]:
    response = await api.http.post(f"/api/v1/exams/{exam_id}/commands", json=body)
    return response.status_code, response.json()


async def test_reopen_needs_its_permission_and_a_reason_then_the_candidate_opens_again(
    cserver: ServerProcess, admin: Api
) -> None:
    """A proctor may not reopen (403); a supervisor must give a reason (400); reopened, the
    locked session opens once from a new tab, paused with the time it had left, and the
    reopen is in the history and the audit log with who, when and why."""
    exam = await admin.create_exam(groups=["A"], settings={"lock_sessions": True})
    [session] = await admin.create_sessions(exam["id"], 1, group="A")
    _, proctor = await user_api(admin, "proctor", ["A"])
    supervisor_id, supervisor = await user_api(admin, "supervisor", ["A"])
    candidate, opened = await open_candidate(cserver.ws_url, session["access_code"])
    assert opened["session"]["status"] == "active"
    status, _ = await command(admin, exam["id"], action="terminate", target=session["id"])
    assert status == 200
    assert await candidate.wait_closed() == 4101
    refused_tab, refused = await open_candidate(cserver.ws_url, session["access_code"])
    assert refused["reason"] == "closed"
    await refused_tab.close()

    status, body = await command(proctor, exam["id"], action="reopen", target=session["id"],
                                 reason="terminated the wrong candidate")
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await command(supervisor, exam["id"], action="reopen", target=session["id"])
    assert (status, body["error"]["code"]) == (400, "invalid")
    assert "reason" in body["error"]["message"]
    status, body = await command(supervisor, exam["id"], action="reopen", target=session["id"],
                                 reason="terminated the wrong candidate")
    assert status == 200 and [a["session_id"] for a in body["applied"]] == [session["id"]]
    status, again = await command(supervisor, exam["id"], action="reopen", target=session["id"],
                                  reason="twice")
    assert again["skipped"][0]["reason"] == "invalid_status"

    tab, reopened = await open_candidate(cserver.ws_url, session["access_code"], JSON)
    assert reopened["type"] == "opened", reopened
    assert reopened["session"]["status"] == "paused"
    assert reopened["session"]["locked"] is True  # locked again by this open
    await command(admin, exam["id"], action="resume", target=session["id"])
    resumed = await tab.recv("command")
    assert resumed["action"] == "resume" and resumed["session"]["status"] == "active"
    await tab.close()

    history = await admin.history(exam["id"], session["id"])
    [reopen] = [e for e in history if e["kind"] == "reopen"]
    assert reopen["actor"] == f"staff:{supervisor_id}" and reopen["actor_name"] == "A supervisor"
    assert (reopen["before"], reopen["after"]) == ("terminated", "paused")
    assert reopen["details"]["reason"] == "terminated the wrong candidate"
    assert reopen["at"] <= time.time()

    async def audited() -> list[dict[str, Any]]:
        entries = (await admin.http.get("/api/v1/audit",
                                        params={"action": "session_command"})).json()["entries"]
        return [e for e in entries if e["details"].get("command") == "reopen"
                and e["details"].get("applied") == [session["id"]]]

    [entry] = await eventually(audited)
    assert entry["actor"] == f"staff:{supervisor_id}"
    assert entry["details"]["params"]["reason"] == "terminated the wrong candidate"
    await proctor.close()
    await supervisor.close()


async def test_bulk_reopen_over_the_proctor_socket(cserver: ServerProcess, admin: Api) -> None:
    """Reopen works like every command in bulk: a status filter over the WebSocket."""
    exam = await admin.create_exam()
    sessions = await admin.create_sessions(exam["id"], 3)
    await command(admin, exam["id"], action="terminate", target=[s["id"] for s in sessions[:2]])
    dashboard, _ = await watch(cserver.ws_url, exam["id"], JSON)
    await dashboard.send({"type": "command", "request_id": "r", "action": "reopen",
                          "target": {"status": "terminated"}})
    error = await dashboard.recv("command_result", "error")
    assert (error["type"], error["code"]) == ("error", "invalid")
    await dashboard.send({"type": "command", "request_id": "r2", "action": "reopen",
                          "target": {"status": "terminated"}, "reason": "fire alarm"})
    result = await dashboard.recv("command_result")
    assert sorted(a["session_id"] for a in result["applied"]) == sorted(
        s["id"] for s in sessions[:2])
    event = await dashboard.recv_event("reopen", sessions[0]["id"])
    assert event["changes"]["status"] == "ready"
    await dashboard.close()


async def test_reduce_takes_time_away_per_candidate_and_in_bulk_never_past_now(
    cserver: ServerProcess, admin: Api
) -> None:
    """Bulk reduce moves every deadline earlier and the candidate page is told the new end at
    once; more than is left is refused per session (`not_enough_time`), nothing clamped."""
    exam = await admin.create_exam(duration_minutes=60)
    sessions = await admin.create_sessions(exam["id"], 3)
    tabs = [await open_candidate(cserver.ws_url, s["access_code"], JSON) for s in sessions]
    deadlines = {s["id"]: reply["session"]["deadline"] for s, (_, reply) in zip(
        sessions, tabs, strict=True)}
    status, result = await command(admin, exam["id"], action="reduce", target="all",
                                   minutes=20, reason="wrong duration")
    assert status == 200 and len(result["applied"]) == 3
    for session, (tab, _) in zip(sessions, tabs, strict=True):
        pushed = await tab.recv("command")
        assert pushed["action"] == "reduce" and pushed["details"]["minutes"] == 20
        assert pushed["session"]["deadline"] == pytest.approx(deadlines[session["id"]] - 1200)
    one = sessions[0]["id"]
    status, result = await command(admin, exam["id"], action="reduce", target=one, minutes=41)
    assert status == 200 and result["applied"] == []
    [skip] = result["skipped"]
    assert skip["reason"] == "not_enough_time" and "min left" in skip["message"]
    state = await admin.session(exam["id"], one)
    assert state["deadline"] == pytest.approx(deadlines[one] - 1200)
    assert state["extra_minutes"] == -20
    status, body = await command(admin, exam["id"], action="reduce", target=one, minutes=0)
    assert (status, body["error"]["code"]) == (400, "invalid")
    history = await admin.history(exam["id"], one)
    [reduce] = [e for e in history if e["kind"] == "reduce"]
    assert reduce["details"]["minutes"] == 20 and reduce["details"]["reason"] == "wrong duration"
    for tab, _ in tabs:
        await tab.close()


async def test_pause_needs_a_known_reason_category_when_the_deployment_says_so(
    cserver: ServerProcess, admin: Api
) -> None:
    """REALTIME_REASON_CATEGORY_REQUIRED=pause: pause without a category or with an unknown
    one is 400 with nothing applied; with one it is applied and the category is in the
    history. Other actions take a category optionally."""
    exam = await admin.create_exam()
    [session] = await admin.create_sessions(exam["id"], 1)
    tab, _ = await open_candidate(cserver.ws_url, session["access_code"])
    listed = (await admin.http.get("/api/v1/reason-categories")).json()
    assert listed["required"] == ["pause"]
    status, body = await command(admin, exam["id"], action="pause", target=session["id"],
                                 reason="noise")
    assert (status, body["error"]["code"]) == (400, "invalid")
    status, body = await command(admin, exam["id"], action="pause", target=session["id"],
                                 reason_category="environment/party")
    assert status == 400 and "environment/noise" in body["error"]["message"]
    assert (await admin.session(exam["id"], session["id"]))["status"] == "active"
    status, body = await command(admin, exam["id"], action="pause", target=session["id"],
                                 reason="noise", reason_category="environment/noise")
    assert status == 200 and len(body["applied"]) == 1
    status, body = await command(admin, exam["id"], action="lock", target=session["id"])
    assert status == 200 and len(body["applied"]) == 1
    history = await admin.history(exam["id"], session["id"])
    [pause] = [e for e in history if e["kind"] == "pause"]
    assert pause["details"]["reason_category"] == "environment/noise"
    await tab.close()


async def test_irregularity_categories_are_listed_and_validated(
    cserver: ServerProcess, admin: Api
) -> None:
    """The tree is served over REST; a report must name one of its leaves (400 otherwise)."""
    exam = await admin.create_exam()
    [session] = await admin.create_sessions(exam["id"], 1)
    tree = (await admin.http.get("/api/v1/reason-categories")).json()["categories"]
    assert [c["id"] for c in tree] == ["environment", "examinee", "proctor", "technical", "other"]
    examinee = next(c for c in tree if c["id"] == "examinee")
    assert {"id": "behaviour", "label": "Behaviour"} in examinee["categories"]
    url = f"/api/v1/exams/{exam['id']}/sessions/{session['id']}/irregularities"
    for bad in ({"category": "phone"}, {"category": "examinee"}, {}, {"category": 3}):
        response = await admin.http.post(url, json=bad)
        assert response.status_code == 400, (bad, response.text)
    response = await admin.http.post(url, json={"category": "examinee/behaviour",
                                                "note": "talking"})
    assert response.status_code == 201, response.text
    listed = (await admin.http.get(f"/api/v1/exams/{exam['id']}/irregularities")).json()
    assert [i["category"] for i in listed["irregularities"]] == ["examinee/behaviour"]


async def test_a_strict_exam_refuses_same_tab_resume_while_a_lenient_one_allows_it(
    cserver: ServerProcess, admin: Api
) -> None:
    """resume_grace_seconds 0 on one exam: its dropped tab needs an unlock even with its
    resume token; on an exam left to the deployment default (60 s) the same tab resumes."""
    strict = await admin.create_exam(settings={"lock_sessions": True, "resume_grace_seconds": 0})
    lenient = await admin.create_exam(settings={"lock_sessions": True})
    assert strict["settings"]["resume_grace_seconds"] == 0
    assert lenient["settings"]["resume_grace_seconds"] is None
    outcomes = {}
    for exam in (strict, lenient):
        [session] = await admin.create_sessions(exam["id"], 1)
        dashboard, _ = await watch(cserver.ws_url, exam["id"])
        tab, opened = await open_candidate(cserver.ws_url, session["access_code"], client_id="t")
        await tab.close()
        await dashboard.recv_event("disconnected", session["id"])
        again, reply = await open_candidate(cserver.ws_url, session["access_code"],
                                            resume_token=opened["resume_token"], client_id="t")
        outcomes[exam["id"]] = reply.get("reason") or reply["type"]
        await again.close()
        await dashboard.close()
    assert outcomes == {strict["id"]: "locked", lenient["id"]: "opened"}

    patched = await admin.http.patch(f"/api/v1/exams/{lenient['id']}",
                                     json={"settings": {"resume_grace_seconds": 300}})
    assert patched.status_code == 200 and patched.json()["settings"]["resume_grace_seconds"] == 300
    for bad in (-1, "60", 1.5, True, 86401):
        response = await admin.http.patch(f"/api/v1/exams/{lenient['id']}",
                                          json={"settings": {"resume_grace_seconds": bad}})
        assert response.status_code == 400, (bad, response.text)
    back = await admin.http.patch(f"/api/v1/exams/{lenient['id']}",
                                  json={"settings": {"resume_grace_seconds": None}})
    assert back.json()["settings"]["resume_grace_seconds"] is None


async def test_reduce_and_reopen_are_refused_on_a_socket_without_a_reason(
    cserver: ServerProcess,
) -> None:
    """Bad correction input over the proctor socket is an `invalid` error frame, socket open."""
    client = await WsClient.connect(f"{cserver.ws_url}/ws/proctor", JSON,
                                    additional_headers={"Authorization": "Bearer test-staff-token"})
    exam = Api(cserver.url)
    created = await exam.create_exam()
    await client.send({"type": "subscribe", "exam_id": created["id"]})
    await client.recv("snapshot")
    for bad in ({"action": "reduce", "target": "all"},
                {"action": "reduce", "target": "all", "minutes": 2000},
                {"action": "reopen", "target": "all", "reason": "   "},
                {"action": "lock", "target": "all", "reason_category": ""}):
        await client.send({"type": "command", **bad})
        error = await client.recv("error", "command_result")
        assert (error["type"], error["code"]) == ("error", "invalid"), bad
    await client.close()
    await exam.close()
