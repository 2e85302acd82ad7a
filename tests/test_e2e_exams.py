"""Exam management on a real server, on SQLite and PostgreSQL: the list with status, dates,
counts and filters; archive (refused while candidates are connected unless forced) and
restore, both audited; roster CSV import with a per-row report, idempotent; access codes as
CSV and printable slips, permission-guarded and audited; group scope on each."""

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
from clients import Api, eventually, open_candidate
from redis_server import RedisServer
from server import STAFF_TOKEN, ServerProcess

PASSWORD = "a good long password"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres",
                                                                marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[ServerProcess]:
    """SQLite with the memory store, and PostgreSQL with Redis: what SQL does differs."""
    if request.param == "sqlite":
        process = ServerProcess()
    else:
        redis_server.start()
        process = ServerProcess(database_url=str(request.getfixturevalue("pg_url")),
                                redis_url=redis_server.url,
                                redis_prefix=f"x{uuid.uuid4().hex[:8]}:")
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def api(server: ServerProcess) -> AsyncIterator[Api]:
    client = Api(server.url)
    yield client
    await client.close()


def tag() -> str:
    return uuid.uuid4().hex[:10]


async def listed(api: Api, **params: str) -> list[dict[str, Any]]:
    r = await api.http.get("/api/v1/exams", params=params)
    assert r.status_code == 200, r.text
    exams: list[dict[str, Any]] = r.json()["exams"]
    return exams


async def audit(api: Api, action: str, subject: str) -> list[dict[str, Any]]:
    r = await api.http.get("/api/v1/audit", params={"action": action})
    assert r.status_code == 200, r.text
    return [e for e in r.json()["entries"] if e["subject"] == subject]


async def user_api(admin: Api, roles: list[str], groups: list[str]) -> Api:
    """An Api for a new, activated, logged-in user with these roles and groups."""
    email = f"{roles[0]}-{tag()}@example.org"
    created = await admin.http.post("/api/v1/users", json={
        "full_name": "Scoped User", "email": email, "roles": roles, "groups": groups})
    assert created.status_code == 201, created.text
    done = await admin.http.post("/api/v1/auth/activate", json={
        "token": created.json()["activation_token"], "password": PASSWORD})
    assert done.status_code == 200, done.text
    login = await admin.http.post("/api/v1/auth/login", json={"login": email, "password": PASSWORD},
                                  headers={"Authorization": ""})
    assert login.status_code == 200, login.text
    return Api(str(admin.http.base_url), login.json()["token"])


def assert_error(r: httpx.Response, status: int, words: str = "") -> None:
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] and error["message"]
    assert words.lower() in error["message"].lower(), error["message"]


# -- the list ----------------------------------------------------------------------------------


async def test_list_shows_status_dates_and_counts_and_filters(api: Api) -> None:
    """Each exam comes with its derived status, its dates and its sessions per status; status,
    date and text filters narrow the list, and malformed ones are a 400."""
    t, now = tag(), time.time()
    soon = await api.create_exam(title=f"Soon {t}", starts_at=now + 3600, ends_at=now + 7200)
    live = await api.create_exam(title=f"Live {t}")
    past = await api.create_exam(title=f"Past {t}", starts_at=now - 7200, ends_at=now - 3600)
    sessions = await api.create_sessions(live["id"], 3)
    done = await api.command(live["id"], action="terminate", target=sessions[0]["id"],
                             reason="absent")
    assert len(done["applied"]) == 1, done

    async def counted() -> dict[str, dict[str, Any]]:
        exams = {e["id"]: e for e in await listed(api, search=t)}
        return exams if exams[live["id"]]["counts"] == {"ready": 2, "terminated": 1} else {}

    exams = await eventually(counted)  # SQL hears of it from the drainer
    assert set(exams) == {soon["id"], live["id"], past["id"]}
    assert [exams[e["id"]]["status"] for e in (soon, live, past)] == [
        "scheduled", "running", "ended"]
    assert exams[live["id"]]["sessions"] == 3
    assert exams[soon["id"]]["counts"] == {} and exams[soon["id"]]["sessions"] == 0
    assert exams[soon["id"]]["starts_at"] == pytest.approx(now + 3600)
    assert exams[live["id"]]["created_at"] == pytest.approx(time.time(), abs=60)
    assert exams[live["id"]]["archived_at"] is None

    async def ids(**params: str) -> set[str]:
        return {e["id"] for e in await listed(api, **{"search": t, **params})}

    assert await ids(status="scheduled") == {soon["id"]}
    assert await ids(status="running,ended") == {live["id"], past["id"]}
    assert await ids(status="ended", search=f"past {t}".upper()) == {past["id"]}
    hour = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 1800))
    assert await ids(**{"from": hour}) == {soon["id"], live["id"]}  # past ended before
    assert await ids(to=hour) == {live["id"], past["id"]}  # soon starts after
    got = await api.http.get(f"/api/v1/exams/{past['id']}")
    assert got.json()["status"] == "ended" and got.json()["archived_at"] is None

    for params, words in (({"status": "finished"}, "status"), ({"from": "yesterday"}, "from"),
                          ({"archived": "maybe"}, "archived"), ({"search": "x" * 201}, "search")):
        assert_error(await api.http.get("/api/v1/exams", params=params), 400, words)


# -- archive and restore -----------------------------------------------------------------------


async def test_archive_hides_the_exam_and_restore_brings_it_back(api: Api) -> None:
    """DELETE archives (hidden by default, listed with archived=true or status=archived, its
    sessions kept); archiving twice changes nothing; restore undoes it; both are audited."""
    t = tag()
    exam = await api.create_exam(title=f"Archive me {t}")
    [session] = await api.create_sessions(exam["id"], 1)
    r = await api.http.delete(f"/api/v1/exams/{exam['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "archived" and r.json()["archived_by"] == "staff:admin"
    first_at = r.json()["archived_at"]
    assert await listed(api, search=t) == []
    assert [e["id"] for e in await listed(api, search=t, archived="true")] == [exam["id"]]
    assert [e["id"] for e in await listed(api, search=t, status="archived")] == [exam["id"]]
    assert (await api.session(exam["id"], session["id"]))["candidate_id"] == "cand-0"
    again = await api.http.delete(f"/api/v1/exams/{exam['id']}")
    assert again.status_code == 200 and again.json()["archived_at"] == first_at
    assert len(await audit(api, "exam_archived", f"exam:{exam['id']}")) == 1

    r = await api.http.post(f"/api/v1/exams/{exam['id']}/restore")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running" and r.json()["archived_at"] is None
    assert [e["id"] for e in await listed(api, search=t)] == [exam["id"]]
    assert len(await audit(api, "exam_restored", f"exam:{exam['id']}")) == 1
    assert (await api.http.post(f"/api/v1/exams/{exam['id']}/restore")).status_code == 200

    assert_error(await api.http.delete("/api/v1/exams/no-such-exam"), 404, "no exam")
    assert_error(await api.http.post("/api/v1/exams/no-such-exam/restore"), 404, "no exam")


async def test_archive_is_refused_while_candidates_are_connected(
    api: Api, server: ServerProcess
) -> None:
    """An exam with a connected candidate is not archived (409, saying how to force it) until
    `force=true`; the candidate keeps the session either way."""
    exam = await api.create_exam(title=f"Busy {tag()}")
    [session] = await api.create_sessions(exam["id"], 1)
    client, opened = await open_candidate(server.ws_url, session["access_code"])
    try:
        assert opened["type"] == "opened"
        refused = await api.http.delete(f"/api/v1/exams/{exam['id']}")
        assert_error(refused, 409, "force=true")
        assert "1 candidate" in refused.json()["error"]["message"]
        assert (await api.http.get(f"/api/v1/exams/{exam['id']}")).json()["status"] == "running"
        assert_error(await api.http.delete(f"/api/v1/exams/{exam['id']}?force=maybe"), 400)
        forced = await api.http.delete(f"/api/v1/exams/{exam['id']}?force=true")
        assert forced.status_code == 200 and forced.json()["status"] == "archived"
        [entry] = await audit(api, "exam_archived", f"exam:{exam['id']}")
        assert entry["details"] == {"connected": 1, "forced": True}
        assert (await api.session(exam["id"], session["id"]))["connected"] is True
    finally:
        await client.close()


# -- roster import -----------------------------------------------------------------------------


def roster(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


async def import_csv(api: Api, exam_id: str, body: bytes, **params: str) -> httpx.Response:
    return await api.http.post(f"/api/v1/exams/{exam_id}/roster", content=body,
                               params=params, headers={"Content-Type": "text/csv"})


async def test_roster_import_reports_each_row_and_is_idempotent(api: Api) -> None:
    """Good rows become sessions; bad ones are reported on their line and do not stop the
    others; importing again creates nothing twice (`exists`)."""
    exam = await api.create_exam(title=f"Roster {tag()}")
    other = await api.create_exam(title=f"Other {tag()}")
    taken = f"TAKEN-{tag().upper()}"
    await api.http.post(f"/api/v1/exams/{other['id']}/sessions", json={
        "candidates": [{"candidate_id": "x", "access_code": taken}]})
    body = roster(
        "\ufeffCandidate_ID,candidate_name,group,access_code",
        "s1,Ada Lovelace,A,",
        's2,"Grace, Hopper",B,ZXCV-BNMK-2345',
        "s3,Too Short,A,ABC",
        "s1,Ada Again,A,",
        "",
        "s4,Only three,A",
        ",No Id,A,",
        f"s5,Code Taken,A,{taken.lower()}",
        "s6,=cmd|' /C calc'!A0,A,",
    )
    r = await import_csv(api, exam["id"], body)
    assert r.status_code == 200, r.text
    report = r.json()
    rows = {row["row"]: row for row in report["rows"]}
    assert sorted(rows) == [2, 3, 4, 5, 7, 8, 9, 10]
    assert {n: rows[n]["result"] for n in rows} == {
        2: "created", 3: "created", 4: "error", 5: "error", 7: "error", 8: "error",
        9: "error", 10: "created"}
    assert "too easy to guess" in rows[4]["message"]
    assert "also on line 2" in rows[5]["message"]
    assert "4 fields" in rows[7]["message"] or "3 fields" in rows[7]["message"]
    assert "candidate_id is empty" in rows[8]["message"]
    assert "already used" in rows[9]["message"]
    assert (report["created"], report["existing"], report["errors"]) == (3, 0, 5)

    sessions = {s["candidate_id"]: s for s in
                (await api.http.get(f"/api/v1/exams/{exam['id']}/sessions")).json()["sessions"]}
    assert set(sessions) == {"s1", "s2", "s6"}
    assert sessions["s2"]["candidate_name"] == "Grace, Hopper"
    assert sessions["s2"]["group"] == "B" and sessions["s2"]["access_code"] == "ZXCV-BNMK-2345"
    assert rows[3]["session_id"] == sessions["s2"]["id"]

    fixed = roster("candidate_id,name", "s1,Renamed Ada", "s3,Fixed Row")
    again = (await import_csv(api, exam["id"], fixed, first_line="40")).json()
    assert [(r["row"], r["result"]) for r in again["rows"]] == [(40, "exists"), (41, "created")]
    assert again["rows"][0]["session_id"] == sessions["s1"]["id"]
    after = (await api.http.get(f"/api/v1/exams/{exam['id']}/sessions")).json()["sessions"]
    assert sorted(s["candidate_id"] for s in after) == ["s1", "s2", "s3", "s6"]
    assert {s["candidate_name"] for s in after if s["candidate_id"] == "s1"} == {"Ada Lovelace"}
    [entry, *_] = await audit(api, "roster_imported", f"exam:{exam['id']}")
    assert (entry["details"]["created"], entry["details"]["errors"]) == (3, 5)


async def declared_status(server: ServerProcess, path: str, length: int) -> int:
    """The status of a POST declaring a `length`-byte body, none of which is sent: a body
    over the limit is refused before it is read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                 f"{STAFF_TOKEN}\r\nContent-Type: text/csv\r\nContent-Length: {length}"
                 "\r\n\r\n".encode())
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(status_line.split()[1])


async def test_roster_refuses_files_it_cannot_read(api: Api, server: ServerProcess) -> None:
    """A file that is not a usable roster is a 400 naming the problem; over the bulk limit a
    413; nothing is created."""
    exam = await api.create_exam(title=f"Bad files {tag()}")
    cases = [
        (b"candidate_id,name\r\n\xff\xfe,x\r\n", "UTF-8"),
        (roster("candidate_id,email", "a,a@example.org"), "unknown column"),
        (roster("name,group", "Ada,A"), "no 'candidate_id'"),
        (roster("candidate_id,name,candidate_name", "a,b,c"), "twice"),
        (b"", "empty"),
        (roster("candidate_id,name"), "no rows"),
        (b"candidate_id\r\na\x00b\r\n", "NUL"),
        (roster("candidate_id,name", 'a,"unterminated'), ""),
    ]
    for body, words in cases:
        r = await import_csv(api, exam["id"], body)
        if r.status_code == 200:  # an unterminated quote is read to the end of the file
            assert r.json()["created"] == 1
            continue
        assert_error(r, 400, words)
    assert_error(await import_csv(api, exam["id"], roster("candidate_id", "a"),
                                  first_line="1"), 400, "first_line")
    too_many = roster("candidate_id", *(f"c{i}" for i in range(10_001)))
    assert_error(await import_csv(api, exam["id"], too_many), 400, "at most")
    assert await declared_status(server, f"/api/v1/exams/{exam['id']}/roster",
                                 4 * 1024 * 1024 + 1) == 413
    assert await declared_status(server, f"/api/v1/exams/{exam['id']}/access-codes.csv",
                                 64 * 1024 + 1) == 413  # not a bulk path
    assert_error(await import_csv(api, "no-such-exam", roster("candidate_id", "a")), 404)
    sessions = (await api.http.get(f"/api/v1/exams/{exam['id']}/sessions")).json()["sessions"]
    assert len(sessions) <= 1  # only the unterminated row, if it was read


# -- access codes ------------------------------------------------------------------------------


async def test_access_codes_as_csv_and_slips(api: Api, server: ServerProcess) -> None:
    """The CSV lists every code with the candidate page's address (spreadsheet-safe, not
    cached); the print view has one slip per candidate (escaped); both are audited."""
    exam = await api.create_exam(title=f"Codes <b>{tag()}</b>")
    r = await api.http.post(f"/api/v1/exams/{exam['id']}/sessions", json={"candidates": [
        {"candidate_id": "c10", "name": "Candidate 10", "group": "A"},
        {"candidate_id": "c2", "name": "Candidate 2", "group": "B"},
        {"candidate_id": "c3", "name": "=HYPERLINK(\"x\")", "group": "A"},
        {"candidate_id": "c4", "name": "<script>alert(1)</script>", "group": "A"},
    ]})
    made = {s["candidate_id"]: s["access_code"] for s in r.json()["sessions"]}
    got = await api.http.get(f"/api/v1/exams/{exam['id']}/access-codes.csv")
    assert got.status_code == 200, got.text
    assert got.headers["content-type"].startswith("text/csv")
    assert got.headers["cache-control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(got.text)))
    assert {r["candidate_id"]: r["access_code"] for r in rows} == made
    by_id = {r["candidate_id"]: r for r in rows}
    assert [r["candidate_id"] for r in rows].index("c2") < [
        r["candidate_id"] for r in rows].index("c10")  # natural order of names
    assert by_id["c3"]["candidate_name"].startswith("'=")
    assert by_id["c2"]["candidate_url"] == f"{server.url}/candidate/"
    assert by_id["c2"]["direct_link"] == f"{server.url}/candidate/?code={made['c2']}"
    only_b = await api.http.get(f"/api/v1/exams/{exam['id']}/access-codes.csv?group=B")
    assert [r["candidate_id"] for r in csv.DictReader(io.StringIO(only_b.text))] == ["c2"]

    page = await api.http.get(f"/api/v1/exams/{exam['id']}/access-codes.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert page.text.count('<section class="slip">') == 4
    assert all(code in page.text for code in made.values())
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    assert f"{server.url}/candidate/" in page.text and "@media print" in page.text
    entries = await audit(api, "access_codes_exported", f"exam:{exam['id']}")
    assert sorted((e["details"]["format"], e["details"]["count"]) for e in entries) == [
        ("csv", 1), ("csv", 4), ("slips", 4)]


# -- scope and permissions ---------------------------------------------------------------------


async def test_scope_and_permissions_of_exam_management(api: Api) -> None:
    """Out of the caller's groups every route answers the 404 of an unknown exam; without the
    permission 403; a scheduler of the exam's group may do all of it."""
    t = tag()
    mine = await api.create_exam(title=f"Mine {t}", groups=[f"A{t}"])
    theirs = await api.create_exam(title=f"Theirs {t}", groups=[f"B{t}"])
    await api.create_sessions(mine["id"], 1)
    scheduler = await user_api(api, ["scheduler"], [f"A{t}"])
    viewer = await user_api(api, ["viewer"], [f"A{t}"])
    try:
        calls = [
            ("DELETE", "", None),
            ("POST", "/restore", None),
            ("POST", "/roster", roster("candidate_id", f"r{t}")),
            ("GET", "/access-codes.csv", None),
            ("GET", "/access-codes.html", None),
        ]
        for method, suffix, body in calls:
            r = await scheduler.http.request(method, f"/api/v1/exams/{theirs['id']}{suffix}",
                                             content=body)
            assert r.status_code == 404, (suffix, r.text)
            assert r.json() == {"error": {"code": "not_found",
                                          "message": f"no exam {theirs['id']!r}"}}
            r = await viewer.http.request(method, f"/api/v1/exams/{mine['id']}{suffix}",
                                          content=body)
            assert_error(r, 403, "missing permission")
        for method, suffix, body in calls:
            r = await scheduler.http.request(method, f"/api/v1/exams/{mine['id']}{suffix}",
                                             content=body)
            assert r.status_code == 200, (suffix, r.text)
        assert {e["id"] for e in await listed(scheduler, search=t)} == {mine["id"]}
        assert {e["id"] for e in await listed(viewer, search=t)} == {mine["id"]}
        [item] = await listed(viewer, search=t)
        assert item["counts"] == {"ready": 2} and item["manages"] is True
        outsider = await user_api(api, ["viewer"], [f"B{t}"])
        try:  # sees `mine` only through its candidate of group B
            await api.http.post(f"/api/v1/exams/{mine['id']}/sessions", json={
                "candidates": [{"candidate_id": f"b{t}", "group": f"B{t}"}]})
            seen = {e["id"]: e for e in await listed(outsider, search=t)}
            assert seen[mine["id"]]["manages"] is False
            assert seen[mine["id"]]["counts"] == {"ready": 1}
            assert seen[theirs["id"]]["manages"] is True
        finally:
            await outsider.close()
    finally:
        await scheduler.close()
        await viewer.close()
