"""The shortest path through the product: a command reaches a connected candidate."""

from __future__ import annotations

from clients import JSON, MSGPACK, Api, open_candidate, watch
from server import ServerProcess


async def test_pause_reaches_connected_candidate(server: ServerProcess, api: Api) -> None:
    """A pause sent over REST is pushed to the candidate and shown on the dashboard."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    dashboard, snapshot = await watch(server.ws_url, exam["id"], JSON)
    assert snapshot["type"] == "snapshot"
    candidate, opened = await open_candidate(server.ws_url, session["access_code"], MSGPACK)
    assert opened["type"] == "opened"
    assert opened["session"]["status"] == "active"

    result = await api.command(exam["id"], action="pause", target=session["id"])
    assert [a["session_id"] for a in result["applied"]] == [session["id"]]

    command = await candidate.recv("command")
    assert command["action"] == "pause"
    assert command["session"]["status"] == "paused"
    event = await dashboard.recv_event("pause", session["id"])
    assert event["after"] == "paused"
    await candidate.send({"type": "ack", "command_id": command["command_id"]})
    delivered = await dashboard.recv_event("delivered", session["id"])
    assert delivered["details"]["command_id"] == result["command_id"]
    await candidate.close()
    await dashboard.close()
