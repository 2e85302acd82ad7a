"""A server process starved of CPU refreshes its candidates' `last_seen` late. Its own sweeper
must not then report them dropped: they are held by open sockets of that very process, which
answer its pings all along (`Hub.holds_session`, wired into the sweeper in realtime/app.py).

The starvation is real: the process is stopped (SIGSTOP) for longer than
`REALTIME_STALE_AFTER`, with the ping interval well below it as operations.md asks, and then
continued. When it runs again its sweeper finds every session stale before the heartbeat has
come round to refreshing them (the heartbeat visits one slice of the sockets per tick).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest
from clients import Api, LiveCandidate, LiveDashboard, eventually, open_candidate, watch
from redis_server import RedisServer
from server import ServerProcess

from realtime.hub.hub import HEARTBEAT_TICKS

STALE_AFTER = 2.0
PING_INTERVAL = 0.5  # well below REALTIME_STALE_AFTER and REALTIME_PING_TIMEOUT (12 s)
# One candidate in each slice of the heartbeat: after the stop, whichever slice it visits first,
# the sweeper finds sessions whose refresh is still to come.
CANDIDATES = HEARTBEAT_TICKS
LIMIT = 60.0  # generous bound for every wait: a loaded two-core machine


@pytest.fixture(params=["memory", "redis"])
def starved_server(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> Iterator[ServerProcess]:
    process = ServerProcess.on_store(
        request.param, redis_server, "s", stale_after=STALE_AFTER, ping_interval=PING_INTERVAL
    ).start()
    try:
        yield process
    finally:
        if process.process is not None:
            process.process.send_signal(signal.SIGCONT)  # never leave it stopped
        process.stop()


async def metrics(api: Api) -> dict[str, float]:
    text = (await api.http.get("/metrics")).text
    return {
        name: float(value)
        for name, value in (
            line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
        )
    }


def stale_found(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("realtime_stale_holders_total{"))


async def test_a_starved_process_never_reports_its_own_live_candidates_dropped(
    starved_server: ServerProcess,
) -> None:
    server = starved_server
    assert server.process is not None
    api = Api(server.url)
    pages: list[LiveCandidate] = []
    dashboards: list[LiveDashboard] = []
    try:
        exam = await api.create_exam()
        exam_id = exam["id"]
        sessions = await api.create_sessions(exam_id, CANDIDATES)
        dashboard = await LiveDashboard.watch(server.ws_url, exam_id)  # swept: watched here
        dashboards.append(dashboard)
        for session in sessions:
            client, reply = await open_candidate(server.ws_url, session["access_code"])
            assert reply["type"] == "opened", reply
            pages.append(LiveCandidate(client, reply))
        # The heartbeat has visited every page (pinged it, refreshed its session).
        await eventually(lambda: all(page.of_type("ping") for page in pages), timeout=LIMIT)
        before = await metrics(api)
        pings_before = [len(page.of_type("ping")) for page in pages]

        # Starved: no CPU at all for twice REALTIME_STALE_AFTER. This sleep is the fault's
        # length, not a wait for anything: every `last_seen` is then older than the threshold.
        server.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(2 * STALE_AFTER)
        finally:
            server.process.send_signal(signal.SIGCONT)

        # Its sweeper has since found sessions not refreshed in time, and decided on them.
        after = await eventually(
            lambda: _stale_seen(api, stale_found(before)), timeout=LIMIT, interval=0.2
        )

        # Nobody was reported dropped: no `disconnected` in any history, no incident, and
        # every session is still connected.
        for session in sessions:
            history = await api.history(exam_id, session["id"])
            kinds = [event["kind"] for event in history]
            assert "disconnected" not in kinds, (session["id"], kinds)
            state = await api.session(exam_id, session["id"])
            assert state["connected"] is True, state
            assert state["incidents"] == 0, state
        # The pages were connected and answering pings the whole time, and still are.
        await eventually(
            lambda: all(len(page.of_type("ping")) > n for page, n in zip(pages, pings_before,
                                                                         strict=True)),
            timeout=LIMIT,
        )
        assert not any(page.closed for page in pages)
        # The dashboard watching all along saw no drop: a command after the sweep reaches it
        # after everything committed before (deltas come in seq order).
        await api.command(exam_id, action="notice", target="all", text="still here?")
        await eventually(lambda: len(dashboard.kinds("notice")) == CANDIDATES, timeout=LIMIT)
        assert dashboard.kinds("disconnected") == []
        await eventually(lambda: all(page.commands("notice") for page in pages), timeout=LIMIT)
        # A dashboard opened now shows every candidate connected.
        fresh, snapshot = await watch(server.ws_url, exam_id)
        await fresh.close()
        assert snapshot["type"] == "snapshot"
        assert [s["connected"] for s in snapshot["sessions"]] == [True] * CANDIDATES
        # What operators see: stale holders spared because this process holds them.
        final = await metrics(api)
        assert final['realtime_stale_holders_total{outcome="held_here"}'] >= 1, after
        assert final['realtime_stale_holders_total{outcome="disconnected"}'] == 0, after
    finally:
        for page in pages:
            await page.close()
        for watcher in dashboards:
            await watcher.close()
        await api.close()


async def _stale_seen(api: Api, found_before: float) -> dict[str, float] | None:
    """The metrics once a sweep found more stale holders than `found_before`."""
    samples = await metrics(api)
    return samples if stale_found(samples) > found_before else None
