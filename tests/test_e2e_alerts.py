"""Exam-day alerts against real servers: a hall-wide drop raises ONE `drop_alert` (on memory,
and on Redis with the drops seen by two processes), a raised hand reaches the dashboard and
its acknowledgement the candidate, and a pause or lock queued while the page was offline is
`delivered` once the page shows it after reconnecting."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from clients import Api, LiveCandidate, LiveDashboard, WsClient, eventually, open_candidate, watch
from redis_server import RedisServer
from server import ServerProcess


async def exam_history(api: Api, exam_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    url: str | None = f"/api/v1/exams/{exam_id}/history"
    while url:
        response = await api.http.get(url)
        assert response.status_code == 200, response.text
        events += response.json()["events"]
        url = response.json().get("next")
    return events


def drop(page: LiveCandidate) -> None:
    """Cut the page's connection without a close frame, as a dead network does."""
    transport = page.client.ws.transport
    assert transport is not None
    transport.abort()


async def open_pages(ws_url: str, sessions: list[dict[str, Any]]) -> list[LiveCandidate]:
    pages = []
    for session in sessions:
        client, opened = await open_candidate(ws_url, session["access_code"])
        assert opened["type"] == "opened", opened
        pages.append(LiveCandidate(client, opened))
    return pages


async def test_hall_wide_drop_raises_one_alert(server: ServerProcess, api: Api) -> None:
    """Eight candidates dropping at once (threshold 6 in 60 s) give every dashboard one
    `drop_alert` naming them, one history entry, and the active alert in a later snapshot."""
    exam = await api.create_exam(
        settings={"drop_alert_count": 6, "drop_alert_window_seconds": 60}
    )
    sessions = await api.create_sessions(exam["id"], 8, group="hall-A")
    pages = await open_pages(server.ws_url, sessions)
    dashboard = await LiveDashboard.watch(server.ws_url, exam["id"])
    try:
        for page in pages:
            drop(page)
        await eventually(lambda: len(dashboard.kinds("disconnected")) == 8)
        [alert] = await eventually(lambda: dashboard.kinds("drop_alert"))
        details = alert["details"]
        assert details["count"] >= 6 and details["window_seconds"] == 60
        assert details["group"] == "hall-A" and details["groups"]["hall-A"] == details["count"]
        assert set(details["sessions"]) <= {s["id"] for s in sessions}
        assert alert["actor"] == "system" and alert["session_id"] in details["sessions"]

        history = await eventually(
            lambda: _with_kind(exam_history(api, exam["id"]), "drop_alert")
        )
        assert [e["details"]["id"] for e in history] == [details["id"]]

        later, snapshot = await watch(server.ws_url, exam["id"])
        assert [a["id"] for a in snapshot["alerts"]] == [details["id"]]
        await later.close()
        response = await api.http.get(f"/api/v1/exams/{exam['id']}/alerts")
        assert [a["id"] for a in response.json()["alerts"]] == [details["id"]]
        assert len(dashboard.kinds("drop_alert")) == 1
    finally:
        await dashboard.close()
        for page in pages:
            await page.close()


async def _with_kind(history: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in await history if e["kind"] == kind]


async def test_few_drops_raise_no_alert(server: ServerProcess, api: Api) -> None:
    """Below the threshold the drops stay ordinary disconnects (and 0 turns alerts off)."""
    exam = await api.create_exam(settings={"drop_alert_count": 0})
    sessions = await api.create_sessions(exam["id"], 3)
    pages = await open_pages(server.ws_url, sessions)
    dashboard = await LiveDashboard.watch(server.ws_url, exam["id"])
    try:
        for page in pages:
            drop(page)
        await eventually(lambda: len(dashboard.kinds("disconnected")) == 3)
        history = await eventually(
            lambda: _with_kind(exam_history(api, exam["id"]), "disconnected")
        )
        assert len(history) == 3
        response = await api.http.get(f"/api/v1/exams/{exam['id']}/alerts")
        assert response.json() == {"alerts": []}
        assert dashboard.kinds("drop_alert") == []
    finally:
        await dashboard.close()
        for page in pages:
            await page.close()


@pytest.fixture
def two_nodes(tmp_path: Path) -> Any:
    redis = RedisServer()
    redis.start()
    prefix = f"a{uuid.uuid4().hex[:8]}:"
    first = ServerProcess(redis_url=redis.url, workdir=tmp_path, redis_prefix=prefix).start()
    second = ServerProcess(redis_url=redis.url, database_url=first.database_url,
                           workdir=tmp_path, redis_prefix=prefix).start()
    try:
        yield first, second
    finally:
        second.stop()
        first.stop()
        redis.cleanup()


async def test_drops_seen_by_two_processes_raise_one_alert(two_nodes: Any) -> None:
    """Half the hall on each process, dashboards on both: all eight drops are counted once
    whichever process heard them, and each dashboard gets the same single alert."""
    first, second = two_nodes
    api = Api(first.url)
    exam = await api.create_exam(settings={"drop_alert_count": 8})
    sessions = await api.create_sessions(exam["id"], 8)
    pages = (await open_pages(first.ws_url, sessions[:4])
             + await open_pages(second.ws_url, sessions[4:]))
    dashboards = [await LiveDashboard.watch(n.ws_url, exam["id"]) for n in (first, second)]
    try:
        for page in pages:
            drop(page)
        for dashboard in dashboards:
            await eventually(lambda d=dashboard: len(d.kinds("disconnected")) == 8)
        alerts = [await eventually(lambda d=d: d.kinds("drop_alert")) for d in dashboards]
        assert [len(a) for a in alerts] == [1, 1]
        assert alerts[0][0]["seq"] == alerts[1][0]["seq"]
        details = alerts[0][0]["details"]
        assert details["count"] == 8 and sorted(details["sessions"]) == sorted(
            s["id"] for s in sessions
        )
        history = await eventually(
            lambda: _with_kind(exam_history(api, exam["id"]), "drop_alert")
        )
        assert [e["seq"] for e in history] == [alerts[0][0]["seq"]]
        for node in (first, second):
            client, snapshot = await watch(node.ws_url, exam["id"])
            assert [a["id"] for a in snapshot["alerts"]] == [details["id"]]
            await client.close()
    finally:
        for dashboard in dashboards:
            await dashboard.close()
        for page in pages:
            await page.close()
        await api.close()


async def test_raised_hand_is_seen_and_acknowledged(server: ServerProcess, api: Api) -> None:
    """raise_hand → the dashboard sees the flag → staff acknowledge → the page gets the
    acknowledgement; both are in the history with actor and time."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    [page] = await open_pages(server.ws_url, [session])
    dashboard = await LiveDashboard.watch(server.ws_url, exam["id"])
    try:
        await page.send({"type": "raise_hand"})
        [raised] = await eventually(lambda: dashboard.kinds("hand_raised"))
        assert raised["changes"]["hand_raised"] is True
        assert raised["actor"] == "candidate:cand-0"
        await eventually(lambda: page.of_type("hand_raised"))

        await page.send({"type": "raise_hand"})  # already up: refused, nothing recorded
        error = await eventually(lambda: page.of_type("error"))
        assert error[0]["reason"] == "already_raised" and error[0]["request"] == "raise_hand"

        result = await api.command(exam["id"], action="acknowledge_hand", target=session["id"])
        assert [a["delivery"] for a in result["applied"]] == ["sent"]
        [ack] = await eventually(lambda: page.commands("acknowledge_hand"))
        assert ack["session"]["hand_raised"] is False
        assert ack["session"]["hand_acked_by"] == "staff:admin"
        await eventually(lambda: [e for e in dashboard.kinds("delivered")
                                  if e["details"]["command_id"] == result["command_id"]])
        assert (await api.session(exam["id"], session["id"]))["hand_raised"] is False

        again = await api.command(exam["id"], action="acknowledge_hand", target=session["id"])
        assert [k["reason"] for k in again["skipped"]] == ["hand_not_raised"]

        history = await eventually(lambda: _kinds(api, exam["id"], session["id"],
                                                  {"hand_raised", "acknowledge_hand"}))
        assert [(e["kind"], e["actor"]) for e in history] == [
            ("hand_raised", "candidate:cand-0"), ("acknowledge_hand", "staff:admin")]
        assert all(e["at"] > 0 for e in history)
    finally:
        await dashboard.close()
        await page.close()


async def _kinds(api: Api, exam_id: str, session_id: str, kinds: set[str]) -> Any:
    events = [e for e in await api.history(exam_id, session_id) if e["kind"] in kinds]
    return events if len(events) >= len(kinds) else None


@pytest.mark.parametrize("action", ["pause", "lock"])
async def test_queued_command_is_delivered_after_reconnect(
    server: ServerProcess, api: Api, action: str
) -> None:
    """A pause or lock applied while the page was offline answers `queued`; the reopened page
    finds its id in the session, acks it, and the dashboard gets `delivered` for it."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    client, opened = await open_candidate(server.ws_url, session["access_code"])
    assert opened["type"] == "opened"
    token = opened["resume_token"]
    await client.close()
    dashboard = await LiveDashboard.watch(server.ws_url, exam["id"])
    try:
        await eventually(lambda: dashboard.kinds("disconnected") or _offline(api, exam, session))
        result = await api.command(exam["id"], action=action, target=session["id"])
        assert [a["delivery"] for a in result["applied"]] == ["queued"]
        command_id = result["command_id"]
        field = "status_command_id" if action == "pause" else "lock_command_id"

        page: WsClient
        page, reopened = await open_candidate(server.ws_url, session["access_code"],
                                              resume_token=token)
        assert reopened["type"] == "opened", reopened
        assert reopened["session"][field] == command_id
        await page.send({"type": "ack", "command_id": command_id})
        await eventually(lambda: [e for e in dashboard.kinds("delivered")
                                  if e["details"]["command_id"] == command_id])
        current = await eventually(lambda: _field_cleared(api, exam, session, field))
        assert current[field] == ""
        await page.close()
    finally:
        await dashboard.close()


async def _offline(api: Api, exam: dict[str, Any], session: dict[str, Any]) -> bool:
    return not (await api.session(exam["id"], session["id"]))["connected"]


async def _field_cleared(
    api: Api, exam: dict[str, Any], session: dict[str, Any], field: str
) -> dict[str, Any] | None:
    current = await api.session(exam["id"], session["id"])
    return current if current[field] == "" else None


async def test_alert_and_indicator_settings_are_validated(api: Api) -> None:
    """Thresholds have defaults, merge on PATCH, and bad values are a clear 400."""
    exam = await api.create_exam()
    settings = exam["settings"]
    assert settings["drop_alert_count"] == 10 and settings["drop_alert_window_seconds"] == 60
    assert settings["indicators"]["rtt_ms"] == {"warning": 500, "danger": 2000}
    path = f"/api/v1/exams/{exam['id']}"
    response = await api.http.patch(path, json={"settings": {
        "indicators": {"alerts": {"danger": 5}, "rtt_ms": {"warning": None}}}})
    assert response.status_code == 200, response.text
    indicators = response.json()["settings"]["indicators"]
    assert indicators["alerts"] == {"warning": 1, "danger": 5}
    assert indicators["rtt_ms"] == {"warning": None, "danger": 2000}
    for bad in (
        {"drop_alert_count": -1},
        {"drop_alert_count": "many"},
        {"drop_alert_window_seconds": 0},
        {"indicators": {"rtt_ms": {"warning": 900, "danger": 100}}},
        {"indicators": {"cpu": {"warning": 1}}},
        {"indicators": {"alerts": {"warning": True}}},
        {"indicators": {"alerts": {"loud": 1}}},
    ):
        response = await api.http.patch(path, json={"settings": bad})
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["code"] == "invalid"
