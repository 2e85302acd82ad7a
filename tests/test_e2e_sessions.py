"""The session rules end to end: real uvicorn, real WebSocket clients, memory and Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from clients import (
    JSON,
    MSGPACK,
    Api,
    LiveCandidate,
    LiveDashboard,
    WsClient,
    eventually,
    open_candidate,
    watch,
)
from server import ServerProcess

from realtime.state.model import HIDDEN_FROM_CANDIDATE


async def test_fifty_racing_opens_of_a_locking_session_have_exactly_one_winner(
    server: ServerProcess, api: Api
) -> None:
    """50 concurrent opens of one unlocked session in a locking exam: one opens, 49 refused."""
    exam = await api.create_exam(settings={"lock_sessions": True})
    [session] = await api.create_sessions(exam["id"], 1)
    results = await asyncio.gather(
        *(open_candidate(server.ws_url, session["access_code"]) for _ in range(50))
    )
    replies = [reply for _, reply in results]
    assert sum(r["type"] == "opened" for r in replies) == 1
    refused = [r for r in replies if r["type"] == "refused"]
    assert len(refused) == 49
    assert {r["reason"] for r in refused} == {"already_open"}
    state = await api.session(exam["id"], session["id"])
    assert state["locked"] is True and state["connected"] is True
    for client, _ in results:
        await client.close()


async def test_unlock_then_open_relocks_automatically(server: ServerProcess, api: Api) -> None:
    """A supervisor unlocks; the next open succeeds and locks the session again at once."""
    exam = await api.create_exam(settings={"lock_sessions": True})
    [session] = await api.create_sessions(exam["id"], 1)
    first, opened = await open_candidate(server.ws_url, session["access_code"])
    assert opened["session"]["locked"] is True
    second, refused = await open_candidate(server.ws_url, session["access_code"])
    assert refused == {**refused, "type": "refused", "reason": "already_open"}
    assert await second.wait_closed() == 4103

    await api.command(exam["id"], action="unlock", target=session["id"])
    assert (await first.recv("command"))["action"] == "unlock"
    third, reopened = await open_candidate(server.ws_url, session["access_code"], JSON)
    assert reopened["type"] == "opened"
    assert reopened["session"]["locked"] is True
    assert (await first.recv("superseded"))["type"] == "superseded"
    assert await first.wait_closed() == 4100
    kinds = [e["kind"] for e in await api.history(exam["id"], session["id"])]
    assert kinds.count("relocked") == 2
    assert "unlock" in kinds and "refused" in kinds
    await third.close()


async def test_same_tab_resumes_a_locked_session_with_its_token(
    server: ServerProcess, api: Api
) -> None:
    """After a blip, the resume token reopens a locked session; without it, it's refused."""
    exam = await api.create_exam(settings={"lock_sessions": True})
    [session] = await api.create_sessions(exam["id"], 1)
    dashboard, _ = await watch(server.ws_url, exam["id"])
    tab, opened = await open_candidate(server.ws_url, session["access_code"], client_id="tab-1")
    token = opened["resume_token"]
    await tab.close()
    await dashboard.recv_event("disconnected", session["id"])

    stranger, refused = await open_candidate(server.ws_url, session["access_code"])
    assert refused["reason"] == "locked"
    await stranger.close()

    again, resumed = await open_candidate(
        server.ws_url, session["access_code"], resume_token=token, client_id="tab-1"
    )
    assert resumed["type"] == "opened"
    assert resumed["resume_token"] != token  # rotated on every open
    assert resumed["session"]["reconnects"] == 1
    event = await dashboard.recv_event("reconnected", session["id"])
    assert event["changes"]["connected"] is True
    await again.close()

    old_token, refused_again = await open_candidate(
        server.ws_url, session["access_code"], resume_token=token
    )
    assert refused_again["reason"] == "locked"
    await old_token.close()
    await dashboard.close()


async def test_terminate_tells_the_candidate_then_closes_with_4101(
    server: ServerProcess, api: Api
) -> None:
    """Terminate is pushed as a command, then the socket closes with the documented code."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    candidate, _ = await open_candidate(server.ws_url, session["access_code"], JSON)
    result = await api.command(
        exam["id"], action="terminate", target=[session["id"]], reason="cheating"
    )
    assert len(result["applied"]) == 1
    command = await candidate.recv("command")
    assert command["action"] == "terminate"
    assert command["details"]["reason"] == "cheating"
    assert await candidate.wait_closed() == 4101
    again, refused = await open_candidate(server.ws_url, session["access_code"])
    assert refused["reason"] == "closed"
    await again.close()


async def test_bulk_command_by_filter_applies_and_skips_with_reasons(
    server: ServerProcess, api: Api
) -> None:
    """Pause by group pauses the active sessions of the group and says why others were skipped."""
    exam = await api.create_exam()
    hall_a = await api.create_sessions(exam["id"], 3, group="A")
    response = await api.http.post(
        f"/api/v1/exams/{exam['id']}/sessions",
        json={"candidates": [{"candidate_id": "b-1", "group": "B"}]},
    )
    [hall_b] = response.json()["sessions"]
    clients = [await open_candidate(server.ws_url, s["access_code"]) for s in hall_a[:2]]
    other, _ = await open_candidate(server.ws_url, hall_b["access_code"])

    result = await api.command(exam["id"], action="pause", target={"group": "A"})
    assert {a["session_id"] for a in result["applied"]} == {s["id"] for s in hall_a[:2]}
    assert all(a["delivery"] == "sent" for a in result["applied"])
    assert result["skipped"] == [
        {
            "session_id": hall_a[2]["id"],
            "reason": "invalid_status",
            "message": "cannot pause a session that is ready (needs active)",
        }
    ]
    for client, _ in clients:
        assert (await client.recv("command"))["action"] == "pause"
    assert (await api.session(exam["id"], hall_b["id"]))["status"] == "active"

    resumed = await api.command(exam["id"], action="resume", target="all")
    assert len(resumed["applied"]) == 2
    for client, _ in clients:
        await client.close()
    await other.close()


async def test_dashboard_gets_snapshot_then_ordered_deltas_and_recovers_gaps(
    server: ServerProcess, api: Api
) -> None:
    """A dashboard sees a snapshot, ordered deltas, and after a cut only what it missed."""
    exam = await api.create_exam()
    sessions = await api.create_sessions(exam["id"], 3)
    dashboard, snapshot = await watch(server.ws_url, exam["id"], MSGPACK)
    assert snapshot["type"] == "snapshot"
    assert sorted(s["id"] for s in snapshot["sessions"]) == sorted(s["id"] for s in sessions)
    assert all("resume_hash" not in s for s in snapshot["sessions"])
    seq = snapshot["seq"]

    await api.command(exam["id"], action="lock", target="all")
    seqs = [(await dashboard.recv_event("lock"))["seq"] for _ in range(3)]
    assert seqs == sorted(seqs) and seqs[0] > seq
    last_seen = seqs[-1]
    await dashboard.close()

    await api.command(exam["id"], action="notice", target="all", text="Ten minutes left")
    resumed, reply = await watch(server.ws_url, exam["id"], JSON, last_seq=last_seen)
    assert reply["type"] == "events"
    missed = reply["events"]
    assert [e["kind"] for e in missed] == ["notice"] * 3
    assert [e["seq"] for e in missed] == list(range(last_seen + 1, last_seen + 4))
    assert all(e["details"]["text"] == "Ten minutes left" for e in missed)

    await api.command(exam["id"], action="unlock", target=sessions[0]["id"])
    live = await resumed.recv_event("unlock")
    assert live["seq"] == last_seen + 4
    await resumed.close()


async def test_dashboard_ahead_of_the_server_gets_a_fresh_snapshot(
    server: ServerProcess, api: Api
) -> None:
    """A last_seq the exam never reached is answered with a snapshot, not an empty catch-up."""
    exam = await api.create_exam()
    await api.create_sessions(exam["id"], 2)
    dashboard, reply = await watch(server.ws_url, exam["id"], last_seq=10_000)
    assert reply["type"] == "snapshot"
    assert len(reply["sessions"]) == 2
    await api.command(exam["id"], action="lock", target="all")
    assert (await dashboard.recv_event("lock"))["seq"] == reply["seq"] + 1
    await dashboard.close()


async def test_candidate_progress_and_focus_loss_reach_the_dashboard(
    server: ServerProcess, api: Api
) -> None:
    """Progress and client events are live deltas on the dashboard."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    dashboard, _ = await watch(server.ws_url, exam["id"])
    candidate, _ = await open_candidate(server.ws_url, session["access_code"])
    await candidate.send({"type": "progress", "position": 4, "answered": 3})
    progress = await dashboard.recv_event("progress", session["id"])
    assert progress["changes"]["position"] == 4 and progress["changes"]["answered"] == 3
    await candidate.send({"type": "client_event", "name": "focus_lost", "detail": "alt-tab"})
    alert = await dashboard.recv_event("client_event", session["id"])
    assert alert["changes"]["alerts"] == 1 and alert["details"]["name"] == "focus_lost"
    await candidate.send({"type": "submit"})
    assert (await candidate.recv("submitted"))["status"] == "completed"
    assert await candidate.wait_closed() == 4102
    submitted = await dashboard.recv_event("submitted", session["id"])
    assert submitted["after"] == "completed"
    await dashboard.close()


async def test_a_burst_of_client_events_counts_every_one(
    server: ServerProcess, api: Api
) -> None:
    """Client events skip the store read (decided on the connection's view): a burst of them
    still counts every one, in order."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    dashboard, _ = await watch(server.ws_url, exam["id"])
    candidate, _ = await open_candidate(server.ws_url, session["access_code"])
    for i in range(6):
        await candidate.send({"type": "client_event", "name": f"blur-{i}"})
    counts = [
        (await dashboard.recv_event("client_event", session["id"]))["changes"]["alerts"]
        for _ in range(6)
    ]
    assert counts == [1, 2, 3, 4, 5, 6]
    state = await api.session(exam["id"], session["id"])
    assert (state["alerts"], state["last_alert"]) == (6, "blur-5")
    await candidate.close()
    await dashboard.close()


async def test_proctor_sends_commands_on_the_socket(server: ServerProcess, api: Api) -> None:
    """Commands over the proctor socket answer with command_result carrying the request id."""
    exam = await api.create_exam(settings={"requires_authorization": True})
    [session] = await api.create_sessions(exam["id"], 1)
    candidate, opened = await open_candidate(server.ws_url, session["access_code"])
    assert opened["session"]["status"] == "awaiting"
    dashboard, _ = await watch(server.ws_url, exam["id"], JSON)
    await dashboard.send(
        {"type": "command", "request_id": 7, "action": "authorize", "target": session["id"]}
    )
    result = await dashboard.recv("command_result")
    assert result["request_id"] == 7
    assert [a["session_id"] for a in result["applied"]] == [session["id"]]
    command = await candidate.recv("command")
    assert command["action"] == "authorize" and command["session"]["status"] == "active"
    await dashboard.send(
        {
            "type": "command",
            "request_id": 8,
            "action": "extend",
            "target": session["id"],
            "minutes": 15,
        }
    )
    assert (await dashboard.recv("command_result"))["request_id"] == 8
    extended = await candidate.recv("command")
    assert extended["action"] == "extend" and extended["details"]["minutes"] == 15
    await candidate.close()
    await dashboard.close()


async def test_history_records_actor_and_transitions(server: ServerProcess, api: Api) -> None:
    """Every open, command and disconnect is in the history with actor, time and statuses."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    candidate, _ = await open_candidate(server.ws_url, session["access_code"])
    await api.command(exam["id"], action="pause", target=session["id"], reason="noise")
    await candidate.recv("command")
    await candidate.close()
    response = await api.http.post(
        f"/api/v1/exams/{exam['id']}/sessions/{session['id']}/irregularities",
        json={"category": "examinee/unauthorized_material", "note": "phone on desk"},
    )
    assert response.status_code == 201
    events = await api.history(exam["id"], session["id"])
    kinds = [e["kind"] for e in events]
    assert kinds[:3] == ["created", "opened", "pause"]
    assert "irregularity" in kinds
    pause = events[2]
    assert pause["actor"] == "staff:admin"
    assert (pause["before"], pause["after"]) == ("active", "paused")
    assert pause["details"]["reason"] == "noise"
    listed = (await api.http.get(f"/api/v1/exams/{exam['id']}/irregularities")).json()
    assert [(i["category"], i["note"]) for i in listed["irregularities"]] == [
        ("examinee/unauthorized_material", "phone on desk")
    ]


async def test_ws_client_helper_rejects_nothing_silently(server: ServerProcess) -> None:
    """A subprotocol the server does not speak is refused at the handshake."""
    try:
        client = await WsClient.connect(f"{server.ws_url}/ws/candidate", "realtime.v0.xml")
    except Exception as exc:  # the handshake is rejected
        assert "403" in str(exc) or "4406" in str(exc) or "subprotocol" in str(exc).lower()
    else:
        assert await client.wait_closed() == 4406


async def test_a_notice_sent_while_offline_is_shown_on_the_next_open(
    server: ServerProcess, api: Api
) -> None:
    """A notice to a disconnected candidate waits in the session until the page acks it."""
    exam = await api.create_exam()
    [session] = await api.create_sessions(exam["id"], 1)
    result = await api.command(exam["id"], action="notice", target="all", text="Room change")
    assert [a["delivery"] for a in result["applied"]] == ["queued"]
    dashboard, _ = await watch(server.ws_url, exam["id"])
    candidate, opened = await open_candidate(server.ws_url, session["access_code"])
    assert opened["session"]["notice"] == "Room change"
    await candidate.send({"type": "ack", "command_id": opened["session"]["notice_id"]})
    delivered = await dashboard.recv_event("delivered", session["id"])
    assert delivered["changes"]["notice"] == ""
    assert delivered["details"]["command_id"] == result["command_id"]
    await candidate.close()
    await dashboard.close()


async def test_access_codes_are_case_insensitive_and_ids_count_once(
    server: ServerProcess, api: Api
) -> None:
    """A custom lower-case code opens; a target naming a session twice applies once."""
    exam = await api.create_exam()
    response = await api.http.post(
        f"/api/v1/exams/{exam['id']}/sessions",
        json={"candidates": [{"candidate_id": "ada", "access_code": "hall7-ada"}]},
    )
    [session] = response.json()["sessions"]
    assert session["access_code"] == "HALL7-ADA"
    candidate, opened = await open_candidate(server.ws_url, "hall7-ada")
    assert opened["type"] == "opened"
    result = await api.command(exam["id"], action="pause", target=[session["id"]] * 2)
    assert len(result["applied"]) == 1 and result["skipped"] == []
    history = await api.history(exam["id"], session["id"])
    assert all(e["actor"] == "candidate:ada" for e in history if e["kind"] == "opened")
    await candidate.close()


def _as_candidate_sees_it(event: dict[str, Any]) -> dict[str, Any]:
    """The `command` message a candidate gets for a dashboard's copy of a command event."""
    details = event["details"]
    return {
        "type": "command",
        "command_id": details["command_id"],
        "action": event["kind"],
        "details": {k: v for k, v in details.items() if k != "command_id"},
        "session": {k: v for k, v in event["changes"].items() if k not in HIDDEN_FROM_CANDIDATE},
        "at": event["at"],
    }


async def test_bulk_command_frames_decode_to_each_candidates_own_message(
    server: ServerProcess, api: Api
) -> None:
    """The candidates of a bulk command get near-identical messages, built from one encoded
    template (`CommandFrames`): each decodes, on either codec, to its own session's message:
    its own version (and, on resume, its own deadline), the rest as the dashboard saw it."""
    exam = await api.create_exam(duration_minutes=60)
    sessions = await api.create_sessions(exam["id"], 7)
    dashboard = await LiveDashboard.watch(server.ws_url, exam["id"])
    candidates: list[LiveCandidate] = []
    try:
        for i, session in enumerate(sessions[:6]):  # the 7th stays "ready": skipped
            client, opened = await open_candidate(
                server.ws_url, session["access_code"], MSGPACK if i % 2 else JSON
            )
            candidates.append(LiveCandidate(client, opened))  # one by one: deadlines differ
        # a notice goes to the unopened session too (shown when it opens)
        for action, extra, applied in (("pause", {}, 6), ("resume", {}, 6),
                                       ("notice", {"text": "Ten minutes"}, 7)):
            result = await api.command(exam["id"], action=action, target="all", **extra)
            assert len(result["applied"]) == applied, result

            def all_there(action: str = action, applied: int = applied) -> bool:
                return all(c.commands(action) for c in candidates) and (
                    len(dashboard.kinds(action)) == applied
                )

            await eventually(all_there)
            seen = {e["session_id"]: e for e in dashboard.kinds(action)}
            for candidate in candidates:
                [message] = candidate.commands(action)
                assert message == _as_candidate_sees_it(seen[candidate.session_id])
            if action == "resume":  # the per-session values really are per session
                deadlines = {c.commands(action)[0]["session"]["deadline"] for c in candidates}
                assert len(deadlines) == 6
    finally:
        for candidate in candidates:
            await candidate.close()
        await dashboard.close()
