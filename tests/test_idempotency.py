"""`command_id` is an idempotency key: a retry applies nothing twice and answers the same.

`extend` makes a second application visible (extra_minutes grows), so it is the action used
here, on every state backend (memory and Redis), targeted and bulk."""

from __future__ import annotations

import asyncio
from typing import Any

from clients import Api, LiveCandidate, eventually, open_candidate, watch
from server import ServerProcess


async def post_command(api: Api, exam_id: str, **body: Any) -> dict[str, Any]:
    response = await api.http.post(f"/api/v1/exams/{exam_id}/commands", json=body)
    assert response.status_code == 200, (response.status_code, response.text)
    data: dict[str, Any] = response.json()
    return data


async def extra_minutes(api: Api, exam_id: str) -> dict[str, int]:
    response = await api.http.get(f"/api/v1/exams/{exam_id}/sessions")
    assert response.status_code == 200, response.text
    return {s["id"]: s["extra_minutes"] for s in response.json()["sessions"]}


async def open_live(server: ServerProcess, access_code: str) -> LiveCandidate:
    client, reply = await open_candidate(server.ws_url, access_code)
    assert reply["type"] == "opened", reply
    return LiveCandidate(client, reply)


async def pushed_once_then(candidate: LiveCandidate, api: Api, exam_id: str) -> None:
    """Commands reach a page in order: once a later marker notice has arrived, every extend
    pushed before it has too, so the count of extends is final."""
    marker = await post_command(
        api, exam_id, action="notice", target=candidate.session_id, text="marker"
    )
    await eventually(
        lambda: any(c["command_id"] == marker["command_id"] for c in candidate.commands())
    )


async def test_targeted_retry_applies_once(server: ServerProcess) -> None:
    api = Api(server.url)
    try:
        exam = await api.create_exam()
        exam_id = exam["id"]
        sessions = await api.create_sessions(exam_id, 2)
        candidate = await open_live(server, sessions[0]["access_code"])
        target = [s["id"] for s in sessions]
        body = {"action": "extend", "minutes": 5, "target": target, "command_id": "t-1"}

        first = await post_command(api, exam_id, **body)
        assert first["command_id"] == "t-1"
        assert sorted(a["session_id"] for a in first["applied"]) == sorted(target)
        assert {a["delivery"] for a in first["applied"]} == {"sent", "queued"}
        second = await post_command(api, exam_id, **body)
        assert second == first
        # the same id with a target given as one session: still nothing applied twice
        third = await post_command(
            api, exam_id, action="extend", minutes=5, target=target[0], command_id="t-1"
        )
        assert third["command_id"] == "t-1" and third["skipped"] == []
        assert await extra_minutes(api, exam_id) == dict.fromkeys(target, 5)

        await pushed_once_then(candidate, api, exam_id)
        assert [c["command_id"] for c in candidate.commands("extend")] == ["t-1"]
        history = await api.history(exam_id, target[0])
        assert [e["details"]["command_id"] for e in history if e["kind"] == "extend"] == ["t-1"]

        # another id is another command: applied again
        other = await post_command(api, exam_id, **{**body, "command_id": "t-2"})
        assert len(other["applied"]) == 2
        assert {a["seq"] for a in other["applied"]}.isdisjoint(
            {a["seq"] for a in first["applied"]}
        )
        assert await extra_minutes(api, exam_id) == dict.fromkeys(target, 10)
        await pushed_once_then(candidate, api, exam_id)
        assert [c["command_id"] for c in candidate.commands("extend")] == ["t-1", "t-2"]
        await candidate.close()
    finally:
        await api.close()


async def test_bulk_retry_applies_once(server: ServerProcess) -> None:
    api = Api(server.url)
    try:
        exam = await api.create_exam()
        exam_id = exam["id"]
        sessions = await api.create_sessions(exam_id, 30)
        ids = [s["id"] for s in sessions]
        live = [await open_live(server, s["access_code"]) for s in sessions[:5]]
        body = {"action": "extend", "minutes": 5, "target": "all", "command_id": "bulk-1"}

        first = await post_command(api, exam_id, **body)
        assert sorted(a["session_id"] for a in first["applied"]) == sorted(ids)
        second = await post_command(api, exam_id, **body)
        assert second == first
        assert await extra_minutes(api, exam_id) == dict.fromkeys(ids, 5)

        # concurrent duplicates of a fresh command: each session still applies it once
        racing = {"action": "extend", "minutes": 3, "target": {"all": True}, "command_id": "b-2"}
        answers = await asyncio.gather(*(post_command(api, exam_id, **racing) for _ in range(5)))
        for answer in answers:
            assert answer["command_id"] == "b-2" and answer["skipped"] == []
            assert sorted(a["session_id"] for a in answer["applied"]) == sorted(ids)
            assert {a["session_id"]: a["seq"] for a in answer["applied"]} == {
                a["session_id"]: a["seq"] for a in answers[0]["applied"]
            }
        assert await extra_minutes(api, exam_id) == dict.fromkeys(ids, 8)

        # a different id applies again
        third = await post_command(api, exam_id, **{**body, "command_id": "bulk-3"})
        assert len(third["applied"]) == len(ids)
        assert await extra_minutes(api, exam_id) == dict.fromkeys(ids, 13)

        for candidate in live:
            await pushed_once_then(candidate, api, exam_id)
            assert [c["command_id"] for c in candidate.commands("extend")] == [
                "bulk-1", "b-2", "bulk-3",
            ]
        history = await api.history(exam_id, ids[-1])
        assert [e["details"]["command_id"] for e in history if e["kind"] == "extend"] == [
            "bulk-1", "b-2", "bulk-3",
        ]
        for candidate in live:
            await candidate.close()
    finally:
        await api.close()


async def test_retry_over_rest_of_a_websocket_command(server: ServerProcess) -> None:
    """The key is the exam's, whichever way the command came: a dashboard sends it over its
    socket, a script retries it over REST (and the dashboard again): applied once."""
    api = Api(server.url)
    try:
        exam = await api.create_exam()
        exam_id = exam["id"]
        sessions = await api.create_sessions(exam_id, 5)
        ids = [s["id"] for s in sessions]
        dashboard, _ = await watch(server.ws_url, exam_id)
        command = {"action": "extend", "minutes": 7, "target": ids, "command_id": "ws-1"}
        await dashboard.send({"type": "command", "request_id": 1, **command})
        first = await dashboard.recv("command_result")
        assert sorted(a["session_id"] for a in first["applied"]) == sorted(ids)
        again = await post_command(api, exam_id, **command)
        assert again == {k: v for k, v in first.items() if k not in ("type", "request_id")}
        await dashboard.send({"type": "command", "request_id": 2, **command})
        third = await dashboard.recv("command_result")
        assert third["applied"] == first["applied"] and third["request_id"] == 2
        assert await extra_minutes(api, exam_id) == dict.fromkeys(ids, 7)
        await dashboard.close()
    finally:
        await api.close()
