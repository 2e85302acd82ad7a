"""Incidents and time offline, end to end on a real server (memory and Redis): what staff see
live on the dashboard's delta stream, in its snapshot, over REST and in the sessions CSV."""

from __future__ import annotations

import csv
import io

from clients import Api, WsClient, open_candidate, watch
from server import ServerProcess


async def test_a_refused_second_tab_on_a_locked_session_is_an_incident(
    server: ServerProcess, api: Api
) -> None:
    """The refusal reaches dashboards as changes, and is in the snapshot, REST and the CSV."""
    exam = await api.create_exam(settings={"lock_sessions": True})
    [session] = await api.create_sessions(exam["id"], 1)
    dashboard, _ = await watch(server.ws_url, exam["id"])
    tab, opened = await open_candidate(server.ws_url, session["access_code"])
    assert opened["type"] == "opened"
    assert "incidents" not in opened["session"]  # staff-only: the page never sees them

    second, refused = await open_candidate(server.ws_url, session["access_code"])
    assert refused["reason"] == "already_open"
    event = await dashboard.recv_event("refused", session["id"])
    assert event["changes"]["incidents"] == 1
    assert event["changes"]["last_incident"] == "refused"
    assert "already open elsewhere" in event["changes"]["last_incident_text"]
    assert event["details"]["incidents"] == ["refused"]

    later, snapshot = await watch(server.ws_url, exam["id"])
    [row] = [s for s in snapshot["sessions"] if s["id"] == session["id"]]
    assert row["incidents"] == 1 and row["last_incident"] == "refused"
    assert row["last_incident_at"] == event["at"]
    assert "device" not in row  # the browser fingerprint stays private

    rest = await api.session(exam["id"], session["id"])
    assert rest["incidents"] == 1 and rest["last_incident_text"] == row["last_incident_text"]
    listed = (await api.http.get(f"/api/v1/exams/{exam['id']}/sessions")).json()
    assert [s["incidents"] for s in listed["sessions"]] == [1]

    response = await api.http.get(f"/api/v1/exams/{exam['id']}/sessions.csv")
    [line] = list(csv.DictReader(io.StringIO(response.text.lstrip("\ufeff"))))
    assert line["incidents"] == "1" and line["last_incident"] == "refused"
    assert "already open elsewhere" in line["last_incident_text"]

    history = await api.history(exam["id"], session["id"])
    assert [e["details"].get("incidents") for e in history if e["kind"] == "refused"] == [
        ["refused"]
    ]
    for client in (tab, second, dashboard, later):
        await client.close()


async def test_a_second_tab_taking_over_is_an_incident(server: ServerProcess, api: Api) -> None:
    """Without a lock the second tab wins; dashboards see a takeover incident."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    dashboard, _ = await watch(server.ws_url, exam["id"])
    first, _ = await open_candidate(server.ws_url, session["access_code"], client_id="tab-1")
    second, opened = await open_candidate(server.ws_url, session["access_code"],
                                          client_id="tab-2")
    assert opened["type"] == "opened"
    # The takeover is recorded with the open; the page that took over is not told of it
    # (an incident's text may name another device's address).
    assert not {"incidents", "last_incident", "last_incident_text"} & set(opened["session"])
    await first.recv("superseded")
    await dashboard.recv_event("opened", session["id"])
    event = await dashboard.recv_event("opened", session["id"])
    assert event["details"]["superseded"] is True
    assert event["changes"]["last_incident"] == "takeover"
    assert event["changes"]["incidents"] == 1
    rest = await api.session(exam["id"], session["id"])
    assert rest["last_incident"] == "takeover" and rest["offline_seconds"] == 0
    for client in (first, second, dashboard):
        await client.close()


async def test_another_browser_is_a_device_change(server: ServerProcess, api: Api) -> None:
    """Opening from another User-Agent after a close records a device change."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    url = f"{server.ws_url}/ws/candidate"
    for agent in ("Browser A/1.0", "Browser B/2.0"):
        client = await WsClient.connect(url, user_agent_header=agent)
        await client.send({"type": "open", "access_code": session["access_code"]})
        assert (await client.recv("opened", "refused"))["type"] == "opened"
        await client.close()
    rest = await api.session(exam["id"], session["id"])
    assert rest["last_incident"] == "device_changed" and rest["incidents"] == 1


async def test_silent_drops_are_incidents_and_offline_time_adds_up(
    server: ServerProcess, api: Api
) -> None:
    """Two connections lost without a close: two incidents; the offline time is the sum of
    both spells, as the server's own disconnect and reconnect times say."""
    exam = await api.create_exam(settings={"lock_sessions": True})
    [session] = await api.create_sessions(exam["id"], 1)
    dashboard, _ = await watch(server.ws_url, exam["id"])
    client, opened = await open_candidate(server.ws_url, session["access_code"])
    token = opened["resume_token"]
    await dashboard.recv_event("opened", session["id"])
    total = 0.0  # as the server adds it up: each spell in turn, to the millisecond
    for n in (1, 2):
        client.ws.transport.abort()  # no close frame: the network went away
        lost = await dashboard.recv_event("disconnected", session["id"])
        assert lost["details"]["incidents"] == ["dropped"]
        assert lost["details"]["reason"].startswith("lost")
        assert lost["changes"]["incidents"] == n
        assert lost["changes"]["offline_since"] == lost["at"]
        client, opened = await open_candidate(server.ws_url, session["access_code"],
                                              resume_token=token)
        assert opened["type"] == "opened", opened
        token = opened["resume_token"]
        back = await dashboard.recv_event("reconnected", session["id"])
        assert back["changes"]["offline_since"] is None
        total = round(total + (back["at"] - lost["at"]), 3)
        assert back["changes"]["offline_seconds"] == total

    rest = await api.session(exam["id"], session["id"])
    assert rest["incidents"] == 2 and rest["last_incident"] == "dropped"
    assert rest["offline_seconds"] == total > 0
    assert rest["offline_since"] is None

    await client.close()  # a clean close: offline again, but no incident
    closed = await dashboard.recv_event("disconnected", session["id"])
    assert closed["details"]["reason"] == "closed" and "incidents" not in closed["details"]
    assert closed["changes"]["offline_since"] == closed["at"]
    await dashboard.close()
