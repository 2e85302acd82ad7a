"""Bad input gets its documented error and never hurts the connection or other sessions."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from clients import JSON, MSGPACK, Api, WsClient, open_candidate, watch
from server import ServerProcess
from websockets.exceptions import ConnectionClosed


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xc1\xff\x00garbage", "malformed"),
        (msgpack.packb([1, 2, 3]), "malformed"),
        (msgpack.packb({"no": "type"}), "invalid"),
        (msgpack.packb({"type": 42}), "invalid"),
        (msgpack.packb({"type": "fly"}), "unknown_type"),
        (msgpack.packb({"type": "progress", "position": "x", "answered": 1}), "invalid"),
        (msgpack.packb({"type": "progress", "position": -1, "answered": 1}), "invalid"),
        (msgpack.packb({"type": "ack"}), "invalid"),
        (msgpack.packb({"type": "open", "access_code": "AGAIN"}), "out_of_order"),
        (msgpack.packb({"type": "x", "pad": "a" * 20_000}), "too_large"),
        ("a text frame on a binary protocol", "malformed"),
    ],
)
async def test_candidate_bad_frames_get_errors_and_the_session_lives_on(
    server: ServerProcess, api: Api, frame: bytes | str, code: str
) -> None:
    """Each bad frame yields an `error` with its code; the same socket still works after."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    candidate, opened = await open_candidate(server.ws_url, session["access_code"], MSGPACK)
    assert opened["type"] == "opened"
    await candidate.send_raw(frame)
    error = await candidate.recv("error")
    assert error["code"] == code
    await candidate.send({"type": "progress", "position": 2, "answered": 1})
    await api.command(exam["id"], action="pause", target=session["id"])
    assert (await candidate.recv("command"))["action"] == "pause"
    assert (await api.session(exam["id"], session["id"]))["position"] == 2
    await candidate.close()


async def test_messages_before_open_are_out_of_order(server: ServerProcess) -> None:
    """Progress before open gets `out_of_order`; an unknown access code is refused."""
    client = await WsClient.connect(f"{server.ws_url}/ws/candidate", JSON)
    await client.send({"type": "progress", "position": 1, "answered": 1})
    assert (await client.recv("error"))["code"] == "out_of_order"
    await client.send({"type": "open", "access_code": "NOPE-NOPE"})
    refused = await client.recv("refused")
    assert refused["reason"] == "not_found"
    assert await client.wait_closed() == 4103


async def test_proctor_bad_messages(server: ServerProcess, api: Api) -> None:
    """Unknown actions, bad targets, commands before subscribing and unknown exams all error."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    client = await WsClient.connect(
        f"{server.ws_url}/ws/proctor",
        JSON,
        additional_headers={"Authorization": "Bearer test-staff-token"},
    )
    await client.send({"type": "command", "request_id": 1, "action": "pause", "target": "all"})
    assert (await client.recv("error"))["code"] == "out_of_order"
    await client.send({"type": "subscribe", "exam_id": "no-such-exam"})
    assert (await client.recv("error"))["code"] == "not_found"
    await client.send({"type": "subscribe", "exam_id": exam["id"]})
    await client.recv("snapshot")
    await client.send({"type": "command", "request_id": 2, "action": "explode", "target": "all"})
    error = await client.recv("error")
    assert (error["code"], error["request_id"]) == ("unknown_action", 2)
    await client.send({"type": "command", "request_id": 3, "action": "pause", "target": 5})
    assert (await client.recv("error"))["code"] == "invalid"
    await client.send(
        {"type": "command", "request_id": 4, "action": "resume", "target": [session["id"], "ghost"]}
    )
    result = await client.recv("command_result")
    assert {s["session_id"]: s["reason"] for s in result["skipped"]} == {
        session["id"]: "invalid_status",
        "ghost": "not_found",
    }
    await client.send_raw("{not json")
    assert (await client.recv("error"))["code"] == "malformed"
    await client.close()


async def test_proctor_socket_requires_a_staff_token(server: ServerProcess) -> None:
    """Without a valid staff token the proctor socket says unauthorized and closes with 4401."""
    client = await WsClient.connect(f"{server.ws_url}/ws/proctor", JSON)
    assert (await client.recv("error"))["code"] == "unauthorized"
    assert await client.wait_closed() == 4401


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/api/v1/exams", {"title": ""}, 400, "invalid"),
        ("POST", "/api/v1/exams", {"title": "x", "duration_minutes": 0}, 400, "invalid"),
        ("POST", "/api/v1/exams", {"title": "x", "settings": {"nope": 1}}, 400, "invalid"),
        (
            "POST",
            "/api/v1/exams",
            {"title": "x", "settings": {"lab_networks": ["x"]}},
            400,
            "invalid",
        ),
        ("GET", "/api/v1/exams/missing", None, 404, "not_found"),
        ("GET", "/api/v1/nowhere", None, 404, "not_found"),
        (
            "POST",
            "/api/v1/exams/missing/commands",
            {"action": "pause", "target": "all"},
            404,
            "not_found",
        ),
    ],
)
async def test_rest_errors_are_json_with_code_and_status(
    api: Api, method: str, path: str, body: object, status: int, code: str
) -> None:
    """REST errors carry the right status and a JSON {error: {code, message}}."""
    response = await api.http.request(method, path, json=body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


async def test_rest_command_validation(api: Api) -> None:
    """Commands with unknown actions, missing fields or malformed JSON are 400 with a code."""
    exam = await api.create_exam()
    url = f"/api/v1/exams/{exam['id']}/commands"
    cases = [
        ({"action": "explode", "target": "all"}, "unknown_action"),
        ({"action": "pause"}, "invalid"),
        ({"action": "extend", "target": "all", "minutes": -3}, "invalid"),
        ({"action": "notice", "target": "all", "text": ""}, "invalid"),
        ({"action": "pause", "target": {"status": "sleeping"}}, "invalid"),
    ]
    for body, code in cases:
        response = await api.http.post(url, json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (400, code), body
    response = await api.http.post(
        url, content=b"{nope", headers={"content-type": "application/json"}
    )
    assert (response.status_code, response.json()["error"]["code"]) == (400, "malformed")


async def test_rest_requires_a_token(server: ServerProcess) -> None:
    """No token: 401. A bad token: 401."""
    import httpx

    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        assert (await anonymous.get("/api/v1/exams")).status_code == 401
        bad = await anonymous.get("/api/v1/exams", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401


async def test_duplicate_sessions_are_refused_and_nothing_is_created(api: Api) -> None:
    """Creating a candidate twice is a 409 and leaves the exam as it was."""
    exam = await api.create_exam()
    await api.create_sessions(exam["id"], 2)
    response = await api.http.post(
        f"/api/v1/exams/{exam['id']}/sessions",
        json={"candidates": [{"candidate_id": "new-one"}, {"candidate_id": "cand-0"}]},
    )
    assert response.status_code == 409
    listed = (await api.http.get(f"/api/v1/exams/{exam['id']}/sessions")).json()["sessions"]
    assert len(listed) == 2


async def test_openapi_document_lists_the_api(api: Api) -> None:
    """The OpenAPI document is published and names the command endpoint."""
    document = (await api.http.get("/api/v1/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    assert "post" in document["paths"]["/api/v1/exams/{exam_id}/commands"]


async def test_huge_frame_closes_only_that_connection(server: ServerProcess, api: Api) -> None:
    """A frame over the transport limit closes that socket (1009); others are untouched."""
    exam = await api.create_exam()
    first, second = await api.create_sessions(exam["id"], 2)
    bystander, _ = await open_candidate(server.ws_url, second["access_code"])
    dashboard, _ = await watch(server.ws_url, exam["id"])
    abuser, _ = await open_candidate(server.ws_url, first["access_code"])
    # The server may close (1009) before the client has written the whole frame: then the
    # send itself reports the close; the code is read below either way.
    with contextlib.suppress(ConnectionClosed):
        await abuser.send_raw(b"\x00" * (2 * 1024 * 1024))
    assert await abuser.wait_closed() == 1009
    await api.command(exam["id"], action="pause", target=second["id"])
    assert (await bystander.recv("command"))["action"] == "pause"
    await bystander.close()
    await dashboard.close()
