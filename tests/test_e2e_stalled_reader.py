"""A candidate that stops reading its socket is cut off by the send deadline, end to end.

A real uvicorn server, a real candidate page that keeps reading, and a hostile one that opens
its session, then never reads again (a tiny receive buffer, reading paused) while it keeps
sending pongs so the heartbeat sees it alive. Staff push notices to it through the REST API.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from clients import Api, LiveCandidate, PausedReader, eventually, open_candidate
from server import ServerProcess

SEND_TIMEOUT = 1.0  # the server's deadline for a send in this test
NOTICE_TEXT = "Please stay seated until the end of the exam. " * 40  # 1,840 characters per command
MAX_NOTICES = 4000  # bound of the push loop (the stalled socket is cut off long before)


@pytest.fixture(scope="module")
def stalling_server() -> Iterator[ServerProcess]:
    process = ServerProcess(send_timeout=SEND_TIMEOUT)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def api(stalling_server: ServerProcess) -> AsyncIterator[Api]:
    client = Api(stalling_server.url)
    yield client
    await client.close()


async def test_a_candidate_that_stops_reading_is_cut_off_and_shown_disconnected(
    stalling_server: ServerProcess, api: Api
) -> None:
    """Past the send deadline the stalled socket is closed, its session disconnected (listed
    and in its history), commands to it are queued rather than 'sent', others carry on."""
    exam = await api.create_exam()
    stalled_session, other_session = await api.create_sessions(exam["id"], 2)
    other_client, other_opened = await open_candidate(
        stalling_server.ws_url, other_session["access_code"]
    )
    other = LiveCandidate(other_client, other_opened)
    stalled = await PausedReader.open(stalling_server.ws_url, stalled_session["access_code"])
    # a pong every so often: to the heartbeat, the page looks alive
    pongs = asyncio.create_task(stalled.keep_answering({"type": "pong", "t": 0}))
    try:
        deliveries: list[str] = []
        for _ in range(MAX_NOTICES):
            result = await api.command(
                exam["id"], action="notice", target=stalled.session_id, text=NOTICE_TEXT
            )
            [applied] = result["applied"]
            deliveries.append(applied["delivery"])
            if applied["delivery"] != "sent":
                break
        assert deliveries[-1] == "queued", f"still 'sent' after {len(deliveries)} notices"

        await eventually(lambda: not stalled.tcp_open(), timeout=30)

        async def listed_disconnected() -> bool:
            response = await api.http.get(f"/api/v1/exams/{exam['id']}/sessions")
            state = {s["id"]: s for s in response.json()["sessions"]}
            return (
                state[stalled.session_id]["connected"] is False
                and state[other.session_id]["connected"] is True
            )

        await eventually(listed_disconnected, timeout=10)
        history = await api.history(exam["id"], stalled.session_id)
        assert [e["details"] for e in history if e["kind"] == "disconnected"] == [
            {"reason": "close 4008", "incidents": ["dropped"]}  # cut off: a drop for staff
        ]
        metrics = (await api.http.get("/metrics")).text
        assert "realtime_send_deadline_aborts 1.0" in metrics

        result = await api.command(
            exam["id"], action="notice", target=other.session_id, text="still here"
        )
        assert [a["delivery"] for a in result["applied"]] == ["sent"]
        await eventually(
            lambda: [c for c in other.commands("notice") if c["session"]["notice"] == "still here"]
        )
        assert not other.closed
    finally:
        pongs.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pongs
        stalled.close()
        await other.close()
