"""A logged-in candidate opens an exam: the session is created on first open if eligible."""

from __future__ import annotations

import asyncio

from clients import Api, WsClient, watch
from server import ServerProcess
from test_identity_e2e import make_user


async def open_with_login(ws_url: str, token: str, exam_id: str) -> tuple[WsClient, dict]:  # type: ignore[type-arg]
    client = await WsClient.connect(f"{ws_url}/ws/candidate")
    await client.send({"type": "open", "token": token, "exam_id": exam_id})
    return client, await client.recv("opened", "refused")


async def test_eligible_candidate_gets_a_session_on_first_open(
    server: ServerProcess, api: Api
) -> None:
    """A candidate user of the exam's group opens it; the session appears on the dashboard."""
    exam = await api.create_exam(groups=["hall-1"])
    user, token = await make_user(api, ["candidate"], ["hall-1"])
    dashboard, snapshot = await watch(server.ws_url, exam["id"])
    assert snapshot["sessions"] == []
    client, opened = await open_with_login(server.ws_url, token, exam["id"])
    assert opened["type"] == "opened"
    assert opened["session"]["candidate_id"] == user["id"]
    assert opened["session"]["group"] == "hall-1"
    created = await dashboard.recv_event("created")
    assert created["session_id"] == opened["session"]["id"]
    await client.close()
    again, reopened = await open_with_login(server.ws_url, token, exam["id"])
    assert reopened["session"]["id"] == opened["session"]["id"]
    await again.close()
    await dashboard.close()


async def test_racing_first_opens_create_one_session(server: ServerProcess, api: Api) -> None:
    """Ten simultaneous first opens by the same candidate end in one session."""
    exam = await api.create_exam(settings={"lock_sessions": True})
    _, token = await make_user(api, ["candidate"])
    results = await asyncio.gather(
        *(open_with_login(server.ws_url, token, exam["id"]) for _ in range(10))
    )
    opened = [reply for _, reply in results if reply["type"] == "opened"]
    assert len(opened) == 1
    listed = (await api.http.get(f"/api/v1/exams/{exam['id']}/sessions")).json()["sessions"]
    assert len(listed) == 1
    for client, _ in results:
        await client.close()


async def test_candidate_outside_the_exam_groups_is_refused(
    server: ServerProcess, api: Api
) -> None:
    """A candidate of another group is refused with not_eligible and nothing is created."""
    exam = await api.create_exam(groups=["hall-1"])
    _, token = await make_user(api, ["candidate"], ["hall-2"])
    client, refused = await open_with_login(server.ws_url, token, exam["id"])
    assert (refused["type"], refused["reason"]) == ("refused", "not_eligible")
    assert await client.wait_closed() == 4103
    listed = (await api.http.get(f"/api/v1/exams/{exam['id']}/sessions")).json()["sessions"]
    assert listed == []


async def test_staff_login_tokens_cannot_open_candidate_sessions(
    server: ServerProcess, api: Api
) -> None:
    """A proctor's login token is not a candidate credential."""
    exam = await api.create_exam()
    _, token = await make_user(api, ["proctor"])
    client, refused = await open_with_login(server.ws_url, token, exam["id"])
    assert refused["reason"] == "not_found"
    await client.close()
