"""Liveness under load: the heartbeat's decisions on an injected clock, and its store refresher.

A candidate is cut off (4009) only for pings it left unanswered for longer than the ping
timeout, on a clock that leaves out the time the event loop was stalled; the store is
refreshed in a task of its own, so a slow or failing store never holds up the pings.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from starlette.websockets import WebSocket

from realtime.channels.codec import CODECS, JSON
from realtime.channels.common import messages
from realtime.config import Settings
from realtime.errors import CloseCode
from realtime.hub.connection import Connection
from realtime.hub.hub import (
    HEARTBEAT_TICKS,
    TICK_LATENESS_TOLERATED,
    CandidateLink,
    Heartbeat,
    Hub,
    Refresher,
    run_heartbeat,
)

INTERVAL = 5.0
TIMEOUT = 12.0
STEP = INTERVAL / HEARTBEAT_TICKS
TOLERATED = TIMEOUT * TICK_LATENESS_TOLERATED  # a tick's lateness that is not a stall


class FakeSocket:
    """Records what the server sends; `incoming` feeds what the peer sends."""

    def __init__(self) -> None:
        self.frames: list[bytes | str] = []
        self.closed: tuple[int, str] | None = None
        self.got_frame = asyncio.Event()
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send_bytes(self, data: bytes) -> None:
        self._sent(data)

    async def send_text(self, data: str) -> None:
        self._sent(data)

    def _sent(self, data: bytes | str) -> None:
        self.frames.append(data)
        self.got_frame.set()

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()


def candidate(hub: Hub, session: str = "s1") -> CandidateLink:
    """An open candidate link whose reader waits for the next frame, as after `opened`."""
    conn = Connection(cast(WebSocket, FakeSocket()), CODECS[JSON], 64)
    link = CandidateLink(conn, "e1", session, f"conn-{session}")
    hub.add_candidate(link)
    link.activate(1)
    conn.watched = True
    conn.in_receive = True
    return link


class Ticker:
    """Drives a `Heartbeat` on a fake monotonic clock, one tick after another."""

    def __init__(self, hub: Hub) -> None:
        self.beat = Heartbeat(hub, INTERVAL, TIMEOUT)
        self.now = 1000.0
        self.held: list[list[CandidateLink]] = []

    def tick(self, late: float = 0.0) -> list[CandidateLink]:
        """The next tick, `late` seconds after it was due."""
        self.now += self.beat.delay(self.now) + late
        held = self.beat.tick(self.now)
        self.held.append(held)
        return held

    def cycle(self, late: float = 0.0) -> None:
        """One whole interval: every slice is visited once."""
        for _ in range(HEARTBEAT_TICKS):
            self.tick(late)


async def test_a_link_that_answers_is_never_timed_out_even_when_ticks_run_very_late() -> None:
    """A stalled loop could not read the pongs: the stall counts against nobody."""
    hub = Hub()
    link = candidate(hub)
    ticker = Ticker(hub)
    ticker.cycle()
    assert link.conn.unanswered_since is not None  # pinged, not answered yet
    # The loop stalls for a minute; the pong waits in the socket buffer, unread.
    ticker.tick(late=60.0)
    ticker.cycle(late=2.0)  # and every tick after that runs late too
    assert not link.conn.timed_out and not link.conn.closing
    assert hub.heartbeat_lag_max == pytest.approx(60.0)
    assert hub.heartbeat_stalled == pytest.approx(
        60.0 - TOLERATED + (2.0 - TOLERATED) * HEARTBEAT_TICKS)
    link.conn.unanswered_since = None  # the reader gets to the pong
    for _ in range(10):
        ticker.cycle(late=30.0)
        link.conn.unanswered_since = None  # it answers every ping it gets
    assert not link.conn.timed_out and not link.conn.closing
    assert hub.ping_timeouts == 0
    # Slot 0 was visited 13 times. At the end of the slow round its ping from before the
    # stall was still unread and the 2 s ticks had each counted their tolerated 0.3 s: a
    # suspect, not pinged then, and saved by its pong at the next tick.
    assert hub.pings_sent == 12
    await link.conn.stop()


async def test_pings_go_out_in_small_slices_each_link_once_per_interval() -> None:
    """5,000 candidates: no tick pings more than 50 of them (a tick's pings, and the pongs
    that come back together, are a stretch of work nothing else on the loop can interleave
    with), and over one interval every candidate gets exactly one ping."""
    hub = Hub()
    links = [candidate(hub, f"s{i}") for i in range(5000)]
    ticker = Ticker(hub)
    per_tick = []
    for _ in range(HEARTBEAT_TICKS):
        sent = hub.pings_sent
        ticker.tick()
        per_tick.append(hub.pings_sent - sent)
        for link in links:
            link.conn.unanswered_since = None  # every pong comes back
    assert max(per_tick) <= 50
    assert sum(per_tick) == 5000
    assert all(len(cast(FakeSocket, link.conn.websocket).frames) == 1 for link in links)
    for link in links:
        await link.conn.stop()


async def test_a_link_that_leaves_pings_unanswered_is_timed_out() -> None:
    """Silent for longer than the ping timeout: closed with 4009, confirmed on a second tick."""
    hub = Hub()
    silent, lively = candidate(hub, "s1"), candidate(hub, "s2")
    ticker = Ticker(hub)
    ticker.tick()  # slot 0: the silent one's first ping
    first_ping = silent.conn.unanswered_since
    assert first_ping is not None
    ticks = 1
    while not silent.conn.timed_out:
        ticker.tick()
        lively.conn.unanswered_since = None
        ticks += 1
        assert ticks < 10 * HEARTBEAT_TICKS
    assert ticker.now - STEP - first_ping > TIMEOUT  # never before the timeout
    assert ticker.now - first_ping <= TIMEOUT + INTERVAL + 2 * STEP  # nor much later
    assert silent.conn.close_code == CloseCode.PING_TIMEOUT
    assert not lively.conn.closing
    assert hub.ping_timeouts == 1
    # A timed out link is no longer reported as holding its session.
    assert silent not in ticker.held[-1]
    await silent.conn.stop()
    await lively.conn.stop()


async def test_a_silent_link_is_timed_out_on_time_when_every_tick_runs_a_little_late() -> None:
    """Every tick 20 ms late (40% of a step) is a busy machine's timer latency, not a stall: a
    dead peer is cut off after the ping timeout of wall time, not 40% later (as when every
    tick's lateness was left out of the liveness clock: 21 s instead of 14 s here)."""
    hub = Hub()
    silent = candidate(hub)
    ticker = Ticker(hub)
    late = 0.4 * STEP
    ticker.tick(late)
    first_ping = ticker.now
    assert silent.conn.unanswered_since is not None
    while not silent.conn.timed_out:
        ticker.tick(late)
        assert ticker.now - first_ping < 10 * TIMEOUT
    one_round = INTERVAL + HEARTBEAT_TICKS * late  # the silent link is pinged once a round
    assert ticker.now - first_ping > TIMEOUT  # never before the timeout
    assert ticker.now - first_ping <= TIMEOUT + one_round + 2 * (STEP + late)  # nor later
    assert hub.heartbeat_stalled == 0.0
    await silent.conn.stop()


async def test_a_silent_link_is_still_timed_out_when_every_tick_runs_late() -> None:
    """Under constant load a dead peer takes longer to notice, but it is noticed."""
    hub = Hub()
    silent = candidate(hub)
    ticker = Ticker(hub)
    for _ in range(10):
        ticker.cycle(late=1.0)
        if silent.conn.timed_out:
            break
    assert silent.conn.timed_out and hub.ping_timeouts == 1
    await silent.conn.stop()


async def test_an_answer_read_between_the_two_ticks_saves_the_link() -> None:
    """Found silent at one tick, the link is only suspected: a pong read before the next
    tick (already in the buffer, say) clears it."""
    hub = Hub()
    link = candidate(hub)
    ticker = Ticker(hub)
    ticker.tick()
    assert link.conn.unanswered_since is not None
    link.conn.unanswered_since -= TIMEOUT + 1  # as if left unanswered for too long
    ticker.cycle()
    assert ticker.beat.suspects == [link] and not link.conn.closing
    assert link not in ticker.held[-HEARTBEAT_TICKS]  # a suspect does not refresh its session
    link.conn.unanswered_since = None  # the reader got to the pong meanwhile
    ticker.tick()
    assert not link.conn.timed_out and not link.conn.closing
    assert ticker.beat.suspects == []
    await link.conn.stop()


async def test_a_reader_busy_with_a_message_is_not_timed_out() -> None:
    """While the reader handles a frame (a slow store call), later frames wait unread."""
    hub = Hub()
    link = candidate(hub)
    ticker = Ticker(hub)
    ticker.tick()
    link.conn.in_receive = False
    for _ in range(5):
        ticker.cycle()
    assert not link.conn.closing
    link.conn.in_receive = True  # back to reading, and still nothing comes
    for _ in range(2):
        ticker.cycle()
    assert link.conn.timed_out
    await link.conn.stop()


async def test_any_frame_from_the_peer_answers_the_pings() -> None:
    """The receive loop clears the outstanding ping on every frame, even a bad one."""
    hub = Hub()
    link = candidate(hub)
    socket = cast(FakeSocket, link.conn.websocket)
    stream: AsyncIterator[dict[str, Any]] = messages(
        link.conn.websocket, link.conn, Settings(), None
    )
    link.conn.unanswered_since = 1.0
    await socket.incoming.put({"type": "websocket.receive", "text": "not json"})
    await socket.incoming.put({"type": "websocket.receive", "text": '{"type":"progress"}'})
    message = await asyncio.wait_for(anext(stream), 5)
    assert message == {"type": "progress"}
    assert link.conn.unanswered_since is None
    link.conn.unanswered_since = 2.0
    await socket.incoming.put({"type": "websocket.receive", "text": "not json either"})
    await socket.incoming.put({"type": "websocket.disconnect"})
    async for _ in stream:
        raise AssertionError("nothing more")
    assert link.conn.unanswered_since is None
    await link.conn.stop()


class FakeStore:
    """`touch` reports each call and waits for the test to decide its outcome."""

    def __init__(self) -> None:
        self.calls: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.outcomes: asyncio.Queue[Exception | None] = asyncio.Queue()

    async def touch(self, items: list[Any]) -> None:
        await self.calls.put(items)
        outcome = await self.outcomes.get()
        if outcome is not None:
            raise outcome


async def test_pings_go_on_while_the_store_call_hangs() -> None:
    """The ping loop never waits for the store: a touch that never returns stops nothing."""
    hub = Hub()
    link = candidate(hub)
    socket = cast(FakeSocket, link.conn.websocket)
    entered, never = asyncio.Event(), asyncio.Event()
    calls: list[list[tuple[str, str, str]]] = []

    async def touch(items: list[tuple[str, str, str]]) -> None:
        calls.append(items)
        entered.set()
        await never.wait()

    task = asyncio.create_task(run_heartbeat(hub, 0.05, 100.0, touch, touch_with_conn=True))
    try:
        async with asyncio.timeout(10):
            await entered.wait()
            pings_then = len(socket.frames)
            while len(socket.frames) < pings_then + 3:
                socket.got_frame.clear()
                await socket.got_frame.wait()
                link.conn.unanswered_since = None  # answered
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert calls == [[("e1", "s1", "conn-s1")]]  # one call in flight at a time
    assert all('"type":"ping"' in str(frame) for frame in socket.frames)
    assert not link.conn.closing
    await link.conn.stop()


async def test_held_sessions_are_merged_and_retried_after_a_failing_call() -> None:
    """What arrives during a call goes into the next one; a failed call's links are retried
    (those still held) after a growing backoff, and every held session is refreshed once
    the store answers again."""
    hub = Hub()
    a, b, c, gone = (candidate(hub, s) for s in ("a", "b", "c", "gone"))
    store = FakeStore()
    delays: list[float] = []
    resume: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await resume.get()

    refresher = Refresher(hub, store.touch, backoff=0.5, max_backoff=1.5, sleep=sleep)
    task = asyncio.create_task(refresher.run())
    try:
        async with asyncio.timeout(10):
            refresher.submit([a, gone])
            assert await store.calls.get() == [("e1", "a", "conn-a"), ("e1", "gone", "conn-gone")]
            refresher.submit([b, a])  # while the first call is in flight
            refresher.submit([c])
            hub.remove_candidate(gone)  # its connection ends meanwhile
            await store.outcomes.put(ConnectionError("redis is down"))
            # Everything still held goes into the next call, after the backoff.
            assert sorted(await retry(store, resume)) == [
                ("e1", s, f"conn-{s}") for s in ("a", "b", "c")
            ]
            await store.outcomes.put(ConnectionError("still down"))
            assert len(await retry(store, resume)) == 3
            await store.outcomes.put(ConnectionError("still down"))
            assert len(await retry(store, resume)) == 3
            await store.outcomes.put(None)  # back
            refresher.submit([b])
            assert await store.calls.get() == [("e1", "b", "conn-b")]
            await store.outcomes.put(None)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert delays == [0.5, 1.0, 1.5]  # doubling up to the maximum
    assert hub.touch_failures == 3
    assert hub.touch_calls >= 1 and hub.touched >= 3
    for link in (a, b, c, gone):
        await link.conn.stop()


async def retry(store: FakeStore, resume: asyncio.Queue[None]) -> list[Any]:
    """Let the refresher's backoff end, and return the call it makes then."""
    await resume.put(None)
    return await store.calls.get()


async def test_a_store_without_conn_ids_gets_pairs() -> None:
    """Until the store takes the holder's conn id, run_heartbeat passes (exam, session)."""
    hub = Hub()
    link = candidate(hub)
    got: asyncio.Queue[list[tuple[str, str]]] = asyncio.Queue()

    async def touch(items: list[tuple[str, str]]) -> None:
        await got.put(items)

    task = asyncio.create_task(run_heartbeat(hub, 0.05, 100.0, touch))
    try:
        async with asyncio.timeout(10):
            assert await got.get() == [("e1", "s1")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await link.conn.stop()
