"""Issue 10, finding 7: input that used to be a 500 is a 4xx with a message, on PostgreSQL.

NUL characters (PostgreSQL refuses them in text), tokens that are not ASCII
(`hmac.compare_digest` raised), deeply nested JSON (RecursionError), out-of-range query
parameters, and an OpenAPI document that omitted path parameters.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgpack
import pytest
from clients import JSON, MSGPACK, Api, WsClient, open_candidate
from server import STAFF_TOKEN, ServerProcess

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_server(pg_url: str) -> Iterator[ServerProcess]:
    process = ServerProcess(database_url=pg_url).start()
    yield process
    process.stop()


@pytest.fixture
async def http(pg_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=pg_server.url, headers={"Authorization": f"Bearer {STAFF_TOKEN}"}, timeout=30
    ) as client:
        yield client


def assert_client_error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] and error["message"], error
    return error


NESTED = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/exams", {"id": "nul\u0000exam", "title": "x"}),
        ("POST", "/api/v1/exams", {"title": "a\u0000b"}),
        ("POST", "/api/v1/users", {"full_name": "A\u0000", "email": "a@b.c", "roles": ["admin"]}),
        ("POST", "/api/v1/auth/login", {"login": "ad\u0000min", "password": "x"}),
        ("POST", "/api/v1/guests/reserve", {"exam_id": "e\u0000", "title": "Mr",
                                             "first_name": "A", "surname": "B"}),
    ],
)
async def test_nul_in_a_body_is_400_not_a_postgres_error(
    http: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    """A NUL character anywhere in a JSON body is refused before it reaches PostgreSQL."""
    error = assert_client_error(await http.request(method, path, json=body))
    assert error["code"] == "invalid"
    assert "NUL" in error["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/users/%00",
        "/api/v1/exams/a%00b",
        "/api/v1/exams/x/sessions/%00/history",
        "/api/v1/audit?user=%00",
        "/api/v1/users?search=a%00",
        "/api/v1/exams/x/sessions?search=%00",
    ],
)
async def test_nul_in_the_url_is_400(http: httpx.AsyncClient, path: str) -> None:
    """A NUL in a path or query parameter is 400, whatever the endpoint."""
    error = assert_client_error(await http.get(path))
    assert "NUL" in error["message"]


async def test_deeply_nested_json_is_400(http: httpx.AsyncClient) -> None:
    """Nesting past the parser's limit is `malformed`; past what messages need, `invalid`."""
    deep = await http.post("/api/v1/exams", content=NESTED,
                           headers={"content-type": "application/json"})
    assert assert_client_error(deep)["code"] in ("malformed", "invalid")
    body = {"title": "x", "settings": json.loads("[" * 100 + "]" * 100)}
    assert assert_client_error(await http.post("/api/v1/exams", json=body))["code"] == "invalid"


@pytest.mark.parametrize("limit", ["-1", "0", "100001", "99999999999999999999999", "1e3", "²"])
async def test_audit_limit_out_of_range_is_400(http: httpx.AsyncClient, limit: str) -> None:
    """`limit` must be an integer 1..100000 (a negative one was an SQL error)."""
    for path in ("/api/v1/audit", "/api/v1/audit.csv"):
        error = assert_client_error(await http.get(path, params={"limit": limit}))
        assert "limit" in error["message"]
    assert (await http.get("/api/v1/audit", params={"limit": "5"})).status_code == 200


@pytest.mark.parametrize(
    ("field", "length"),
    [("candidate_id", 129), ("access_code", 65), ("group", 129), ("name", 201)],
)
async def test_oversized_session_fields_are_400(
    http: httpx.AsyncClient, field: str, length: int
) -> None:
    """Fields longer than their documented limit are 400 (an indexed one past PostgreSQL's
    index row size was a database error); nothing is created."""
    exam = (await http.post("/api/v1/exams", json={"title": "long"})).json()
    value = secrets.token_hex(5000)[:length] if length > 3000 else "x" * length
    candidate = {"candidate_id": "long-1", field: value}
    response = await http.post(f"/api/v1/exams/{exam['id']}/sessions",
                               json={"candidates": [candidate]})
    assert field in assert_client_error(response)["message"]
    listed = await http.get(f"/api/v1/exams/{exam['id']}/sessions")
    assert listed.json()["sessions"] == []


async def test_huge_access_code_is_400_not_a_postgres_index_error(
    http: httpx.AsyncClient
) -> None:
    """A 10 000-character access code would not fit PostgreSQL's unique index."""
    exam = (await http.post("/api/v1/exams", json={"title": "huge"})).json()
    candidate = {"candidate_id": "huge-1", "access_code": secrets.token_hex(5000)}
    response = await http.post(f"/api/v1/exams/{exam['id']}/sessions",
                               json={"candidates": [candidate]})
    assert_client_error(response)


@pytest.mark.parametrize("param", ["after_seq", "before_seq"])
async def test_history_seq_beyond_the_sql_column_is_400(
    http: httpx.AsyncClient, param: str
) -> None:
    """Found by the REST fuzzer: a `seq` bound past 32 bits was a PostgreSQL error (500)."""
    exam = (await http.post("/api/v1/exams", json={"title": "seq"})).json()
    created = await http.post(f"/api/v1/exams/{exam['id']}/sessions",
                              json={"candidates": [{"candidate_id": "seq-1"}]})
    session_id = created.json()["sessions"][0]["id"]
    path = f"/api/v1/exams/{exam['id']}/sessions/{session_id}/history"
    error = assert_client_error(await http.get(path, params={param: "3151427388"}))
    assert param in error["message"]
    assert (await http.get(path, params={param: "2147483647"})).status_code == 200


@pytest.mark.parametrize("token", ["é", "ключ", "\u2603" * 40, "rt_é"])
async def test_non_ascii_tokens_are_401(pg_server: ServerProcess, token: str) -> None:
    """A token that is not ASCII is an invalid token (401), not a TypeError (500)."""
    async with httpx.AsyncClient(base_url=pg_server.url) as anonymous:
        header = ("Bearer " + token).encode("utf-8")
        response = await anonymous.get("/api/v1/exams", headers={"Authorization": header})
        assert_client_error(response, 401)


async def test_non_ascii_csrf_header_is_403(
    pg_server: ServerProcess, http: httpx.AsyncClient
) -> None:
    """A cookie login with a CSRF header that is not ASCII is refused (403), not a 500."""
    password = "Correct-horse-9"
    created = await http.post(
        "/api/v1/users",
        json={"full_name": "Csrf Tester", "email": "csrf@example.org", "roles": ["admin"]},
    )
    assert created.status_code == 201, created.text
    activated = await http.post(
        "/api/v1/auth/activate",
        json={"token": created.json()["activation_token"], "password": password},
    )
    assert activated.status_code == 200, activated.text
    async with httpx.AsyncClient(base_url=pg_server.url) as browser:
        login = await browser.post(
            "/api/v1/auth/login", json={"login": "csrf@example.org", "password": password}
        )
        assert login.status_code == 200, login.text
        header = "\u00e9t\u00e9".encode()
        response = await browser.post("/api/v1/exams", json={"title": "x"},
                                      headers={"X-CSRF-Token": header})
        assert_client_error(response, 403)


async def test_candidate_open_with_a_non_ascii_token_is_refused(pg_server: ServerProcess) -> None:
    """An `open` with a non-ASCII token is refused (not found), the server does not fail."""
    for protocol in (JSON, MSGPACK):
        client = await WsClient.connect(f"{pg_server.ws_url}/ws/candidate", protocol)
        await client.send({"type": "open", "token": "é-token", "exam_id": "x"})
        assert (await client.recv("refused"))["reason"] == "not_found"
        assert await client.wait_closed() == 4103
    assert "Traceback" not in pg_server.log()


async def test_nul_in_websocket_messages_is_invalid(pg_server: ServerProcess) -> None:
    """A NUL in any string of a frame (either codec) gets `invalid`; the session lives on."""
    api = Api(pg_server.url)
    try:
        exam = await api.create_exam()
        [session] = await api.create_sessions(exam["id"], 1)
        candidate, opened = await open_candidate(pg_server.ws_url, session["access_code"])
        assert opened["type"] == "opened"
        await candidate.send_raw(msgpack.packb({"type": "client_event", "name": "x\u0000y"}))
        assert (await candidate.recv("error"))["code"] == "invalid"
        await candidate.send({"type": "client_event", "name": "focus_lost"})
        await api.command(exam["id"], action="pause", target=session["id"])
        assert (await candidate.recv("command"))["action"] == "pause"
        history = await api.history(exam["id"], session["id"])
        assert "x\u0000y" not in json.dumps(history)
        await candidate.close()
    finally:
        await api.close()
    assert "Traceback" not in pg_server.log()


async def test_openapi_declares_every_path_parameter(http: httpx.AsyncClient) -> None:
    """Every `{name}` in a path is a declared, required path parameter of each operation."""
    document = (await http.get("/api/v1/openapi.json")).json()
    templated = 0
    for path, operations in document["paths"].items():
        names = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        for method, operation in operations.items():
            declared = {
                p["name"] for p in operation.get("parameters", [])
                if p["in"] == "path" and p.get("required")
            }
            assert names <= declared, (method, path, declared)
            templated += bool(names)
    assert templated >= 18
