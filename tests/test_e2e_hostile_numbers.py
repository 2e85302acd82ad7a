"""Issue 10, finding 1: one candidate message with a wild number must not break the dashboard.

A `pong` with t = -1e308, NaN or Infinity used to be accepted; its round trip became
`Infinity`, the exam's REST session list answered 500 and JSON dashboards could not load.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import httpx
import msgpack
import pytest
from clients import JSON, MSGPACK, Api, WsClient, eventually, open_candidate
from server import STAFF_TOKEN, ServerProcess
from websockets.asyncio.client import connect


def strict_json(text: str | bytes) -> Any:
    """Parse as a standard JSON client does: NaN and Infinity are not JSON."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"non-standard JSON token {token!r} from the server")

    return json.loads(text, parse_constant=refuse)


def attack_frames(protocol: str) -> list[tuple[str, bytes | str]]:
    """(name, frame) pongs whose `t` no honest page sends."""
    if protocol == JSON:
        return [
            ("-1e308", '{"type":"pong","t":-1e308}'),
            ("NaN", '{"type":"pong","t":NaN}'),
            ("Infinity", '{"type":"pong","t":Infinity}'),
            ("-Infinity", '{"type":"pong","t":-Infinity}'),
            ("1e400", '{"type":"pong","t":1e400}'),
        ]
    return [
        (name, msgpack.packb({"type": "pong", "t": value}))
        for name, value in (("-1e308", -1e308), ("NaN", math.nan), ("Infinity", math.inf),
                            ("-Infinity", -math.inf))
    ]


async def sessions_listed(server: ServerProcess, exam_id: str) -> list[dict[str, Any]]:
    """The REST session list: must answer 200 in standard JSON with finite round trips."""
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {STAFF_TOKEN}"}
    ) as http:
        response = await http.get(f"/api/v1/exams/{exam_id}/sessions")
    if response.status_code != 200:
        pytest.fail(f"the session list answered {response.status_code}: {response.text}")
    sessions: list[dict[str, Any]] = strict_json(response.content)["sessions"]
    for session in sessions:
        rtt = session["rtt_ms"]
        assert rtt is None or (math.isfinite(rtt) and 0 <= rtt < 3_600_000), session
    return sessions


async def assert_dashboard_loads(server: ServerProcess, exam_id: str) -> dict[str, Any]:
    """A JSON dashboard subscribes and gets a snapshot it can parse."""
    async with connect(
        f"{server.ws_url}/ws/proctor", subprotocols=[JSON],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {STAFF_TOKEN}"},
    ) as ws:
        await ws.send(json.dumps({"type": "subscribe", "exam_id": exam_id}))
        while True:
            message = strict_json(await ws.recv())
            if message["type"] != "ping":
                break
    assert message["type"] == "snapshot", message
    return message  # type: ignore[no-any-return]


@pytest.mark.parametrize("protocol", [JSON, MSGPACK])
async def test_wild_pong_numbers_are_refused_and_the_dashboard_still_loads(
    server: ServerProcess, api: Api, protocol: str
) -> None:
    """Each wild pong gets `invalid`; the session list answers 200 and the dashboard loads."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    candidate, opened = await open_candidate(server.ws_url, session["access_code"], protocol)
    assert opened["type"] == "opened"
    for position, (name, frame) in enumerate(attack_frames(protocol), start=1):
        await candidate.send_raw(frame)
        # progress carries the last round trip into the stored session
        await candidate.send({"type": "progress", "position": position, "answered": 0})

        async def committed(position: int = position) -> bool:
            [listed] = await sessions_listed(server, exam["id"])
            return bool(listed["position"] == position)

        await eventually(committed)
        error = await candidate.recv("error")
        assert error["code"] == "invalid", (name, error)
        assert error["message"], name
    snapshot = await assert_dashboard_loads(server, exam["id"])
    assert [s["id"] for s in snapshot["sessions"]] == [session["id"]]
    await candidate.close()


@pytest.mark.parametrize("when", ["epoch", "past", "future"])
async def test_a_pong_far_from_any_ping_is_refused(
    server: ServerProcess, api: Api, when: str
) -> None:
    """A finite `t` that no ping carried (far past or future) is `invalid` and changes nothing."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    candidate, _ = await open_candidate(server.ws_url, session["access_code"], JSON)
    t = {"epoch": 0.0, "past": time.time() - 1e6, "future": time.time() + 1e6}[when]
    await candidate.send({"type": "pong", "t": t})
    error = await candidate.recv("error")
    assert (error["code"], error.get("request")) == ("invalid", "pong")
    await candidate.send({"type": "progress", "position": 7, "answered": 1})

    async def committed() -> dict[str, Any] | None:
        stored = await api.session(exam["id"], session["id"])
        return stored if stored["position"] == 7 else None

    stored = await eventually(committed)
    assert stored["rtt_ms"] is None
    await candidate.close()


async def test_proctor_ping_echo_and_request_ids_stay_standard_json(
    server: ServerProcess, api: Api
) -> None:
    """A dashboard's ping `t` and `request_id` must be sane; the answer is always valid JSON."""
    exam = await api.create_exam()
    client = await WsClient.connect(
        f"{server.ws_url}/ws/proctor", JSON,
        additional_headers={"Authorization": f"Bearer {STAFF_TOKEN}"},
    )
    await client.send_raw('{"type":"ping","t":-1e308}')
    assert (await client.recv("error"))["code"] == "invalid"
    await client.send({"type": "ping", "t": 12.5})
    assert (await client.recv("pong"))["t"] == 12.5
    await client.send({"type": "subscribe", "exam_id": exam["id"], "request_id": {"x": [1]}})
    error = await client.recv("error")
    assert error["code"] == "invalid" and "request_id" in error["message"]
    await client.send({"type": "subscribe", "exam_id": exam["id"], "last_seq": 2**60})
    assert (await client.recv("error"))["code"] == "invalid"
    await client.send({"type": "subscribe", "exam_id": exam["id"]})
    await client.recv("snapshot")
    for minutes in (10**9, 1441, 0, 2.5, 1e300):
        await client.send({"type": "command", "request_id": 3, "action": "extend",
                           "target": "all", "minutes": minutes})
        error = await client.recv("error")
        assert error["code"] == "invalid", minutes
    await client.close()
