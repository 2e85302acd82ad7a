"""Reports on a real server: history filters and paging past 1,000 events, staff by name, the
device of every open, and the CSV / print exports with their ranges, escaping and scope."""

from __future__ import annotations

import csv
import io
import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from clients import Api, WsClient, eventually, open_candidate
from redis_server import RedisServer
from server import ServerProcess

PASSWORD = "a good long password"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FORMULAS = ["=1+2", "+SUM(A1)", "-3+4", "@cmd", "\tx", "\rx"]


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[ServerProcess]:
    """As conftest's, with the per-socket message rate off: a test sends 1,100 client events
    as fast as it can (the limit itself is tested in test_limits_e2e.py)."""
    process = ServerProcess.on_store(request.param, redis_server, "e", candidate_message_rate=0)
    process.start()
    yield process
    process.stop()


def rows_of(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


def iso(at: float) -> str:
    """An ISO-8601 time a microsecond before `at` (so `from=` it includes `at`)."""
    micros = math.floor(at * 1_000_000) - 1
    return (EPOCH + timedelta(microseconds=micros)).isoformat()


async def make_user(admin: Api, roles: list[str], groups: list[str]) -> tuple[str, str, Api]:
    """An active user who logged in: (user id, full name, an Api with their token)."""
    email = f"{roles[0]}-{uuid.uuid4().hex[:8]}@example.org"
    name = f"Ada {uuid.uuid4().hex[:6]}"
    created = await admin.http.post("/api/v1/users", json={
        "full_name": name, "email": email, "roles": roles, "groups": groups})
    assert created.status_code == 201, created.text
    body = created.json()
    done = await admin.http.post("/api/v1/auth/activate", json={
        "token": body["activation_token"], "password": PASSWORD})
    assert done.status_code == 200, done.text
    login = await admin.http.post("/api/v1/auth/login", json={"login": email, "password": PASSWORD},
                                  headers={"Authorization": ""})
    assert login.status_code == 200, login.text
    return body["user"]["id"], name, Api(str(admin.http.base_url), login.json()["token"])


async def all_pages(api: Api, path: str) -> tuple[list[dict[str, Any]], int]:
    """Follow `next` links; returns every event and how many pages it took."""
    events: list[dict[str, Any]] = []
    pages = 0
    url: str | None = path
    while url:
        answer = await api.http.get(url)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        events.extend(body["events"])
        pages += 1
        url = body["next"]
        assert pages < 20
    return events, pages


async def test_session_history_pages_past_1000_events(server: ServerProcess, api: Api) -> None:
    """1,100 client events: JSON pages of 1,000 with a next link, backward pages, and a CSV
    with every one of them (nothing silently dropped)."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    candidate, _ = await open_candidate(server.ws_url, session["access_code"])
    for i in range(1100):
        await candidate.send({"type": "client_event", "name": f"blur-{i}"})
    await eventually(lambda: _alerts(api, exam["id"], session["id"], 1100))
    base = f"/api/v1/exams/{exam['id']}/sessions/{session['id']}/history"
    first = (await api.http.get(base)).json()
    assert len(first["events"]) == 1000 and first["next"]
    events, pages = await all_pages(api, base)
    seqs = [e["seq"] for e in events]
    assert pages == 2 and seqs == sorted(set(seqs))
    kinds = [e["kind"] for e in events]
    assert kinds.count("client_event") == 1100 and kinds[0] == "created"
    # smaller pages, and backward from the latest
    small, small_pages = await all_pages(api, base + "?limit=400")
    assert small == events and small_pages == 3
    back = (await api.http.get(f"{base}?before_seq={seqs[-1] + 1}&limit=5")).json()
    assert [e["seq"] for e in back["events"]] == seqs[-5:]
    older = (await api.http.get(back["next"])).json()
    assert [e["seq"] for e in older["events"]] == seqs[-10:-5]
    # the CSV has them all, read in pages on the server
    rows = rows_of(await api.http.get(base + ".csv"))
    assert [int(r["seq"]) for r in rows] == seqs
    assert rows[-1]["details"] == '{"detail": "", "name": "blur-1099"}'
    await candidate.close()


async def _alerts(api: Api, exam_id: str, session_id: str, count: int) -> bool:
    return bool((await api.session(exam_id, session_id))["alerts"] >= count)


async def test_history_filters_by_time_and_kind(server: ServerProcess, api: Api) -> None:
    """`from`/`to` select a time range (ISO-8601), `exclude` hides progress and deliveries,
    and malformed filters are a 400 with a message."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    candidate, _ = await open_candidate(server.ws_url, session["access_code"])
    for minutes in range(1, 7):
        await api.command(exam["id"], action="extend", minutes=minutes, target=session["id"])
    notice = await api.command(exam["id"], action="notice", text="hi", target=session["id"])
    await candidate.recv("command")
    await candidate.send({"type": "ack", "command_id": notice["command_id"]})
    await candidate.send({"type": "progress", "position": 3, "answered": 2})
    base = f"/api/v1/exams/{exam['id']}/sessions/{session['id']}/history"
    every = await eventually(lambda: _history_with(api, base, {"delivered", "progress"}))
    ats = [e["at"] for e in every]
    since, until = iso(every[2]["at"]), iso(every[5]["at"])
    lo, hi = datetime.fromisoformat(since).timestamp(), datetime.fromisoformat(until).timestamp()
    ranged = (await api.http.get(base, params={"from": since, "to": until})).json()["events"]
    assert ranged == [e for e in every if lo <= e["at"] < hi]
    assert 0 < len(ranged) < len(every)
    # a date, an offset spelled with an unencoded '+', and no upper bound
    assert (await api.http.get(base + "?from=2000-01-01")).json()["events"] == every
    plus = (await api.http.get(base + "?from=2000-01-01T00:00:00+01:00")).json()["events"]
    assert plus == every
    assert (await api.http.get(base, params={"to": "2000-01-01"})).json()["events"] == []
    assert ats == sorted(ats)
    shown = (await api.http.get(base + "?exclude=progress,delivered")).json()["events"]
    assert shown == [e for e in every if e["kind"] not in ("progress", "delivered")]
    for bad, word in (("from=yesterday", "from"), ("to=2026-13-01", "to"),
                      ("from=2026-01-02&to=2026-01-01", "after"), ("exclude=nonsense", "exclude"),
                      ("limit=0", "limit"), ("after_seq=x", "after_seq"),
                      ("after_seq=1&before_seq=9", "not both")):
        answer = await api.http.get(f"{base}?{bad}")
        assert answer.status_code == 400, bad
        assert word in answer.json()["error"]["message"], answer.text
        csv_answer = await api.http.get(f"{base}.csv?{bad}")
        assert csv_answer.status_code == 400, bad
    await candidate.close()


async def _history_with(api: Api, path: str, kinds: set[str]) -> list[dict[str, Any]] | None:
    events: list[dict[str, Any]] = (await api.http.get(path)).json()["events"]
    return events if kinds <= {e["kind"] for e in events} else None


async def test_staff_by_name_and_the_device_of_every_open(
    server: ServerProcess, api: Api
) -> None:
    """History names staff by their full name (the raw actor id is kept) and records the
    address and User-Agent of every open and refusal."""
    exam = await api.create_exam(groups=["A"], settings={"lock_sessions": True})
    [session] = await api.create_sessions(exam["id"], 1, group="A")
    user_id, name, proctor = await make_user(api, ["proctor"], ["A"])
    laptop = "Mozilla/5.0 (exam laptop 7)"
    ws = await WsClient.connect(f"{server.ws_url}/ws/candidate", user_agent_header=laptop)
    await ws.send({"type": "open", "access_code": session["access_code"]})
    await ws.recv("opened")
    rival = await WsClient.connect(f"{server.ws_url}/ws/candidate", user_agent_header="Phone/2")
    await rival.send({"type": "open", "access_code": session["access_code"]})
    assert (await rival.recv("refused"))["reason"] == "already_open"
    await proctor.command(exam["id"], action="pause", target=session["id"])
    events = await proctor.history(exam["id"], session["id"])
    paused = next(e for e in events if e["kind"] == "pause")
    assert paused["actor"] == f"staff:{user_id}" and paused["actor_name"] == name
    assert next(e for e in events if e["kind"] == "created")["actor_name"] == "admin"
    opened = next(e for e in events if e["kind"] == "opened")
    assert opened["details"]["user_agent"] == laptop
    assert opened["details"]["remote_addr"] == "127.0.0.1"
    assert opened["actor_name"] == session["candidate_name"]
    refused = next(e for e in events if e["kind"] == "refused")
    assert refused["details"]["user_agent"] == "Phone/2"
    rows = rows_of(await proctor.http.get(
        f"/api/v1/exams/{exam['id']}/sessions/{session['id']}/history.csv"))
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["pause"]["actor_name"] == name
    assert by_kind["opened"]["user_agent"] == laptop
    assert by_kind["opened"]["remote_addr"] == "127.0.0.1"
    await ws.close()
    await rival.close()
    await proctor.close()


async def test_exports_of_an_exam(server: ServerProcess, api: Api) -> None:
    """sessions.csv in natural order with formula cells escaped; history.csv and
    irregularities.csv within a date range; the print view escapes HTML."""
    exam = await api.create_exam()
    names = ["Candidate 10", "Candidate 2", "candidate 1", *FORMULAS]
    created = (await api.http.post(f"/api/v1/exams/{exam['id']}/sessions", json={"candidates": [
        {"candidate_id": f"c{i}", "name": n, "group": "G"} for i, n in enumerate(names)
    ]})).json()["sessions"]
    sessions = rows_of(await api.http.get(f"/api/v1/exams/{exam['id']}/sessions.csv"))
    shown = [r["candidate_name"] for r in sessions]
    assert shown[-3:] == ["candidate 1", "Candidate 2", "Candidate 10"]
    assert sorted(shown[:-3]) == sorted("'" + f for f in FORMULAS)
    assert {r["session_id"] for r in sessions} == {s["id"] for s in created}
    assert {r["status"] for r in sessions} == {"ready"}
    assert rows_of(await api.http.get(
        f"/api/v1/exams/{exam['id']}/sessions.csv?search=Candidate 2"))[0]["candidate_name"] == (
        "Candidate 2")
    target = created[0]["id"]
    url = f"/api/v1/exams/{exam['id']}/sessions/{target}/irregularities"
    notes = ["first", "=HYPERLINK(\"http://x\")", "<script>alert(1)</script>"]
    for note in notes:
        posted = await api.http.post(url, json={"category": "other", "note": note})
        assert posted.status_code == 201
    listed = (await api.http.get(f"/api/v1/exams/{exam['id']}/irregularities")).json()
    ats = [r["at"] for r in listed["irregularities"]]
    irregular = rows_of(await api.http.get(f"/api/v1/exams/{exam['id']}/irregularities.csv"))
    assert [r["note"] for r in irregular] == ["first", "'" + notes[1], notes[2]]
    assert irregular[0]["candidate_name"] == "Candidate 10"
    assert irregular[0]["actor_name"] == "admin"
    later = rows_of(await api.http.get(f"/api/v1/exams/{exam['id']}/irregularities.csv",
                                       params={"from": iso(ats[1])}))
    assert [r["note"] for r in later] == [r["note"] for r in irregular][1:]
    in_json = (await api.http.get(f"/api/v1/exams/{exam['id']}/irregularities",
                                  params={"to": iso(ats[1])})).json()["irregularities"]
    assert [r["note"] for r in in_json] == ["first"]
    # the exam's whole history, and a range of it
    history = rows_of(await api.http.get(f"/api/v1/exams/{exam['id']}/history.csv"))
    assert [r["kind"] for r in history] == ["created"] * len(names) + ["irregularity"] * 3
    assert [int(r["seq"]) for r in history] == sorted(int(r["seq"]) for r in history)
    ranged = rows_of(await api.http.get(f"/api/v1/exams/{exam['id']}/history.csv",
                                        params={"from": iso(ats[0])}))
    assert [r["kind"] for r in ranged] == ["irregularity"] * 3
    page = (await api.http.get(f"/api/v1/exams/{exam['id']}/history?limit=4")).json()
    assert len(page["events"]) == 4 and page["next"]
    # the print view
    printed = await api.http.get(f"/api/v1/exams/{exam['id']}/irregularities.html")
    assert printed.status_code == 200 and printed.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in printed.text
    assert "<script>" not in printed.text and printed.text.count("<tr>") == 4
    assert (await api.http.get(f"/api/v1/exams/{exam['id']}/history.pdf")).status_code == 404


async def test_exports_keep_the_group_scope(server: ServerProcess, api: Api) -> None:
    """A proctor of another group gets 404 for the exam's and a session's history and
    irregularities, and no session rows."""
    exam = await api.create_exam(groups=["A"])
    [session] = await api.create_sessions(exam["id"], 1, group="A")
    _, _, outsider = await make_user(api, ["proctor"], ["B"])
    _, _, insider = await make_user(api, ["proctor"], ["A"])
    base = f"/api/v1/exams/{exam['id']}"
    for path in (f"{base}/history.csv", f"{base}/history", f"{base}/irregularities.csv",
                 f"{base}/history.html", f"{base}/sessions/{session['id']}/history.csv"):
        assert (await outsider.http.get(path)).status_code == 404, path
        assert (await insider.http.get(path)).status_code == 200, path
    # the session list mirrors GET …/sessions: out-of-scope sessions are left out
    listed = await outsider.http.get(f"{base}/sessions.csv")
    assert listed.status_code == 404 or rows_of(listed) == []
    assert [r["session_id"] for r in rows_of(await insider.http.get(f"{base}/sessions.csv"))] == [
        session["id"]]
    # a scheduler has no history permission
    _, _, scheduler = await make_user(api, ["scheduler"], ["A"])
    assert (await scheduler.http.get(f"{base}/history.csv")).status_code == 403
    for client in (outsider, insider, scheduler):
        await client.close()
