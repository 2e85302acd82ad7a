"""Redis Sentinel: the server connects through the sentinels and follows a failover mid-exam;
every acknowledged command survives it, in the state, the pages and the history."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from clients import Api, LiveCandidate, LiveDashboard, eventually, healthz, open_candidate
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError, ResponseError
from sentinel import SentinelSetup
from server import ServerProcess

from realtime.errors import backend_down
from realtime.state.connect import RedisConnector, SentinelUrl, parse_sentinel_url

CANDIDATES = 6
RETRY_FOR = 40.0  # seconds a client keeps retrying one command answered 503
PAUSE_MS = 2000  # writes held on the old master around the promotion


# -- the URL ---------------------------------------------------------------------------------


def test_sentinel_url_names_the_sentinels_service_and_db() -> None:
    """Several sentinels (default port 26379), the service, the db and both passwords."""
    url = ("redis+sentinel://app:p%40ss@10.0.0.1:26380,10.0.0.2,[::1]:5000/exams/3"
           "?sentinel_password=s3cret")
    assert parse_sentinel_url(url) == SentinelUrl(
        sentinels=(("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 5000)),
        service="exams", db=3, username="app", password="p@ss", sentinel_password="s3cret",
    )
    plain = parse_sentinel_url("redis+sentinel://:pw@h:1/mymaster")
    assert (plain.username, plain.password, plain.db) == (None, "pw", 0)


@pytest.mark.parametrize("url", [
    "redis+sentinel://h:26379",  # no service
    "redis+sentinel://h:26379/",  # no service
    "redis+sentinel://h:26379/svc/x",  # db not a number
    "redis+sentinel://h:26379/svc/0/extra",
    "redis+sentinel://h:0/svc",
    "redis+sentinel://h:port/svc",
    "redis+sentinel://h1,,h2/svc",  # an empty host
    "redis+sentinel://h/svc?socket_timeout=1",  # an option we do not know
    "redis://h:6379/0",  # not a Sentinel URL
])
def test_a_bad_sentinel_url_is_refused_with_a_reason(url: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_sentinel_url(url)


def test_a_write_refused_by_a_replica_or_a_cut_off_master_is_unavailable() -> None:
    """READONLY and NOREPLICAS mean nothing was applied: 503 `unavailable`, never 500."""
    assert backend_down(ReadOnlyError("You can't write against a read only replica."))
    assert backend_down(ResponseError("NOREPLICAS Not enough good replicas to write."))
    assert not backend_down(ResponseError("ERR wrong number of arguments"))


# -- against real sentinels ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSetup]:
    with SentinelSetup() as setup:
        yield setup


async def test_the_subscription_check_tells_the_master_from_a_replica(
    sentinels: SentinelSetup,
) -> None:
    """A subscription made through the sentinels is on the master; one on the replica (where
    a failover can leave it) is told apart, so the store re-subscribes on the master."""
    connector = RedisConnector(sentinels.url)
    client = connector.client(Retry(NoBackoff(), 0))
    master = await asyncio.to_thread(sentinels.current_master)
    assert master is not None
    replica = next(node for node in sentinels.nodes if node.port != master[1])
    elsewhere = aioredis.Redis(port=replica.port)
    on_master, on_replica = client.pubsub(), elsewhere.pubsub()
    try:
        await on_master.subscribe("probe")
        await on_replica.subscribe("probe")
        assert await connector.on_master(on_master)
        assert not await connector.on_master(on_replica)
    finally:
        await on_master.aclose()  # type: ignore[no-untyped-call]
        await on_replica.aclose()  # type: ignore[no-untyped-call]
        await elsewhere.aclose()
        await client.aclose()
        await connector.aclose()


@dataclass
class Hall:
    setup: SentinelSetup
    server: ServerProcess
    api: Api
    exam_id: str
    candidates: list[LiveCandidate]
    dashboard: LiveDashboard
    acked: list[str] = field(default_factory=list)  # command ids answered 200, in order
    unavailable: int = 0  # 503 answers (retried)
    ids: Iterator[int] = field(default_factory=itertools.count)

    async def command(self) -> None:
        """One `extend` to everyone, retried with the same command_id while answered 503
        (as a client does); anything but 200 and 503 fails the test."""
        command_id = f"failover-{next(self.ids)}"
        body = {"action": "extend", "minutes": 1, "target": "all", "command_id": command_id}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_FOR
        while True:
            response = await self.api.http.post(f"/api/v1/exams/{self.exam_id}/commands",
                                                json=body)
            if response.status_code == 200:
                assert len(response.json()["applied"]) == CANDIDATES, response.text
                self.acked.append(command_id)
                return
            assert response.status_code == 503, (response.status_code, response.text)
            assert response.json()["error"]["code"] == "unavailable", response.text
            self.unavailable += 1
            assert loop.time() < deadline, f"{command_id} still refused after {RETRY_FOR}s"
            await asyncio.sleep(0.2)  # a client's back-off before the retry


@pytest.fixture
async def hall(sentinels: SentinelSetup, tmp_path: Path) -> AsyncIterator[Hall]:
    server = ServerProcess(redis_url=sentinels.url, workdir=tmp_path).start()
    api = Api(server.url)
    candidates: list[LiveCandidate] = []
    dashboard: LiveDashboard | None = None
    try:
        exam = await api.create_exam()
        sessions = await api.create_sessions(exam["id"], CANDIDATES)
        for session in sessions:
            client, opened = await open_candidate(server.ws_url, session["access_code"])
            assert opened["type"] == "opened", opened
            candidates.append(LiveCandidate(client, opened))
        dashboard = await LiveDashboard.watch(server.ws_url, exam["id"])
        yield Hall(sentinels, server, api, exam["id"], candidates, dashboard)
    finally:
        for candidate in candidates:
            await candidate.close()
        if dashboard is not None:
            await dashboard.close()
        await api.close()
        server.stop()


async def test_a_sentinel_failover_mid_exam_loses_no_acknowledged_command(hall: Hall) -> None:
    """A planned failover (`CLIENT PAUSE … WRITE`, `SENTINEL FAILOVER`) while commands flow:
    changes are held, then refused (503) for a while, never failed (500) nor lost; afterwards
    every acknowledged command is in the sessions, reached every page as a command and the
    dashboard as deltas, and is in the SQL history."""
    setup = hall.setup
    old = setup.current_master()
    assert old is not None
    for _ in range(3):
        await hall.command()

    # The planned failover of docs/operations.md: writes paused on the master (so the replica
    # has every answered change when it is promoted), then SENTINEL FAILOVER.
    await asyncio.to_thread(setup.node(old[1]).pause_writes, PAUSE_MS)
    await asyncio.to_thread(setup.sentinels[0].failover)

    async def switched() -> bool:
        master = await asyncio.to_thread(setup.current_master)
        return master is not None and master != old

    while not await switched():  # commands during the failover
        await hall.command()
    new = setup.current_master()
    assert new is not None
    demoted = setup.node(old[1])

    async def rejoined() -> bool:
        info = await asyncio.to_thread(demoted.info)
        return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

    # Commands while Sentinel demotes the old master, then after it follows the new one.
    for _ in range(200):
        if await rejoined():
            break
        await hall.command()
    else:
        raise AssertionError("the old master never re-joined as a replica")
    for _ in range(3):
        await hall.command()
    acked = hall.acked

    async def green() -> bool:
        status, body = await healthz(hall.server.url)
        return status == 200 and body["history_backlog"]["events"] == 0

    await eventually(green, timeout=30)

    # The sessions: every acknowledged extend applied once, nothing else.
    response = await hall.api.http.get(f"/api/v1/exams/{hall.exam_id}/sessions")
    assert response.status_code == 200, response.text
    minutes = {s["id"]: s["extra_minutes"] for s in response.json()["sessions"]}
    assert set(minutes.values()) == {len(acked)}, (minutes, acked, hall.unavailable)

    # The pages: each command once, in order, as a `command`; nobody locked out.
    def pages_have_all() -> bool:
        return all([c["command_id"] for c in candidate.commands("extend")] == acked
                   for candidate in hall.candidates)

    await eventually(pages_have_all, timeout=30)
    for candidate in hall.candidates:
        assert not candidate.closed, candidate.close_code
        assert candidate.of_type("refused") == []

    # The dashboard: every extend of every session as a delta.
    def dashboard_has_all() -> bool:
        seen = {(e["session_id"], e["details"].get("command_id"))
                for e in hall.dashboard.kinds("extend")}
        return all((c.session_id, cid) in seen for c in hall.candidates for cid in acked)

    await eventually(dashboard_has_all, timeout=30)
    assert not hall.dashboard.closed, hall.dashboard.close_code

    # The SQL history: each acknowledged command once per session.
    for candidate in hall.candidates:
        history = await hall.api.history(hall.exam_id, candidate.session_id)
        ids = [e["details"]["command_id"] for e in history if e["kind"] == "extend"]
        assert ids == acked, (candidate.session_id, ids, acked)

    events: dict[str, Any] = (await healthz(hall.server.url))[1]["events"]
    assert events["subscribed"] is True
    assert setup.current_master() == new
