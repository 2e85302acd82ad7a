"""Three processes on one Redis (and on a 3-master Redis Cluster): each hears only the exams
it serves (fan-out by exam); commands and dashboard deltas cross nodes; 50 opens racing through
all three leave one live holder; a dashboard switching nodes catches up without a gap."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import (
    Api,
    LiveCandidate,
    LiveDashboard,
    eventually,
    metric,
    open_candidate,
    watch,
)
from redis_cluster import LocalCluster
from redis_server import RedisServer
from server import ServerProcess


def start_nodes(count: int, redis_url: str, workdir: Path, prefix: str) -> list[ServerProcess]:
    """`count` processes on one Redis (or cluster) and one SQLite file."""
    first = ServerProcess(redis_url=redis_url, workdir=workdir, redis_prefix=prefix).start()
    return [first] + [
        ServerProcess(redis_url=redis_url, database_url=first.database_url, workdir=workdir,
                      redis_prefix=prefix).start()
        for _ in range(count - 1)
    ]


@pytest.fixture(params=["redis", "cluster"])
def shared_redis(request: pytest.FixtureRequest) -> Iterator[str]:
    """A private Redis, or the run's 3-master cluster (events by sharded pub/sub)."""
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        yield cluster.url
        return
    redis = RedisServer()
    redis.start()
    try:
        yield redis.url
    finally:
        redis.cleanup()


async def test_each_node_hears_only_its_exams_and_commands_cross_nodes(
    tmp_path: Path, shared_redis: str
) -> None:
    prefix = f"x{uuid.uuid4().hex[:8]}:"
    nodes = start_nodes(3, shared_redis, tmp_path, prefix)
    api = Api(nodes[0].url)
    pages: list[LiveCandidate] = []
    try:
        exams = [(await api.create_exam(title=f"Hall {i}"))["id"] for i in range(3)]
        by_exam: dict[str, list[LiveCandidate]] = {}
        for node, exam_id in zip(nodes, exams, strict=True):  # exam i's pages on node i
            for session in await api.create_sessions(exam_id, 3):
                client, opened = await open_candidate(node.ws_url, session["access_code"])
                assert opened["type"] == "opened", opened
                by_exam.setdefault(exam_id, []).append(LiveCandidate(client, opened))
        pages = [p for exam_pages in by_exam.values() for p in exam_pages]
        dashboard = await LiveDashboard.watch(nodes[1].ws_url, exams[0])  # exam 0 on node 1

        assert [await metric(n.url, "realtime_exams_served") for n in nodes] == [1, 2, 1]
        quiet = await metric(nodes[0].url, "realtime_events_received")

        # Exam 2's commands, sent to node 0, reach its pages on node 2; node 0 hears none.
        for n in range(5):
            result = await api.command(exams[2], action="notice", target="all", text=f"n{n}")
            assert {a["delivery"] for a in result["applied"]} == {"sent"}
        await eventually(lambda: all(len(p.commands("notice")) == 5 for p in by_exam[exams[2]]))
        assert await metric(nodes[2].url, "realtime_events_received") > 0
        assert await metric(nodes[0].url, "realtime_events_received") == quiet

        # Exam 0's command through node 2: its pages on node 0 and the dashboard on node 1.
        via_node_2 = Api(nodes[2].url)
        await via_node_2.command(exams[0], action="pause", target="all")
        await via_node_2.close()
        await eventually(lambda: all(p.commands("pause") for p in by_exam[exams[0]]))
        await eventually(lambda: len(dashboard.kinds("pause")) == 3)
        await dashboard.close()
    finally:
        for page in pages:
            await page.close()
        await api.close()
        for node in nodes:
            node.stop()


async def test_fifty_racing_opens_across_three_nodes_leave_one_live_holder(
    tmp_path: Path, shared_redis: str
) -> None:
    """The same session opened 50 times at once through three processes: every racer is
    opened (then superseded) or refused with a documented reason; one live holder remains."""
    prefix = f"r{uuid.uuid4().hex[:8]}:"
    nodes = start_nodes(3, shared_redis, tmp_path, prefix)
    api = Api(nodes[0].url)
    try:
        exam = await api.create_exam()
        [session] = await api.create_sessions(exam["id"], 1)
        results = await asyncio.gather(*(
            open_candidate(nodes[i % 3].ws_url, session["access_code"]) for i in range(50)
        ))
        replies = [reply for _, reply in results]
        assert {r["type"] for r in replies} <= {"opened", "refused"}
        assert {r["reason"] for r in replies if r["type"] == "refused"} <= {
            "already_open", "locked"}
        opened = [LiveCandidate(c, r) for c, r in results if r["type"] == "opened"]
        assert opened
        await eventually(lambda: sum(not c.closed for c in opened) == 1, timeout=30)
        [holder] = [c for c in opened if not c.closed]
        assert all(c.close_code == 4100 for c in opened if c is not holder)
        await holder.send({"type": "progress", "position": 9, "answered": 1})

        async def held() -> bool:
            state = await api.session(exam["id"], session["id"])
            return bool(state["connected"] and state["position"] == 9)

        await eventually(held)
        for candidate in opened:
            await candidate.close()
        for client, reply in results:
            if reply["type"] == "refused":
                await client.close()
    finally:
        await api.close()
        for node in nodes:
            node.stop()


async def test_a_dashboard_switching_nodes_catches_up_without_a_gap(
    tmp_path: Path, shared_redis: str
) -> None:
    """A dashboard drops from one process and comes back on another with its last seq: it
    gets exactly what was committed meanwhile (through a third process), then live deltas."""
    prefix = f"d{uuid.uuid4().hex[:8]}:"
    nodes = start_nodes(3, shared_redis, tmp_path, prefix)
    api, via_third = Api(nodes[0].url), Api(nodes[2].url)
    try:
        exam = await api.create_exam()
        sessions = await api.create_sessions(exam["id"], 3)
        dashboard = await LiveDashboard.watch(nodes[0].ws_url, exam["id"])
        await via_third.command(exam["id"], action="lock", target="all")
        await eventually(lambda: len(dashboard.kinds("lock")) == 3)
        last = dashboard.last_seq
        await dashboard.close()

        for text in ("while away 1", "while away 2"):
            await via_third.command(exam["id"], action="notice", target="all", text=text)
        client, caught_up = await watch(nodes[1].ws_url, exam["id"], last_seq=last)
        assert caught_up["type"] == "events", caught_up
        seqs = [e["seq"] for e in caught_up["events"]]
        assert seqs == list(range(last + 1, last + 7)), seqs  # 2 notices x 3 sessions
        assert {e["kind"] for e in caught_up["events"]} == {"notice"}
        assert caught_up["seq"] == seqs[-1]

        await via_third.command(exam["id"], action="unlock", target=sessions[0]["id"])
        live = await client.recv("event", "event_batch")
        events = [live["event"]] if live["type"] == "event" else live["events"]
        assert [(e["seq"], e["kind"]) for e in events] == [(seqs[-1] + 1, "unlock")]
        await client.close()
    finally:
        await api.close()
        await via_third.close()
        for node in nodes:
            node.stop()


async def test_an_exams_copy_for_commands_is_made_as_its_first_page_opens(
    tmp_path: Path, shared_redis: str
) -> None:
    """A candidate's page opening on a process starts serving its exam there: the copy staff
    commands decide on is made then, with no command; the first commands read no copy."""
    prefix = f"w{uuid.uuid4().hex[:8]}:"
    [node] = start_nodes(1, shared_redis, tmp_path, prefix)
    api = Api(node.url)
    page: LiveCandidate | None = None
    try:
        exam = await api.create_exam()
        sessions = await api.create_sessions(exam["id"], 3)
        assert await metric(node.url, "realtime_command_copies_made") == 0
        client, opened = await open_candidate(node.ws_url, sessions[0]["access_code"])
        assert opened["type"] == "opened", opened
        page = LiveCandidate(client, opened)

        await eventually(lambda: metric(node.url, "realtime_command_copies_made"))
        assert await metric(node.url, "realtime_command_copies_warmed") == 1
        assert await metric(node.url, "realtime_command_copy_reads") == 1

        one = sessions[0]["id"]
        result = await api.command(exam["id"], action="notice", text="hello",
                                   target={"session_ids": [one]})
        assert [a["session_id"] for a in result["applied"]] == [one]
        await api.command(exam["id"], action="pause", target="all")
        await eventually(lambda: page is not None and page.commands("pause"))
        assert await metric(node.url, "realtime_command_copy_reads") == 1  # none by the commands
        assert await metric(node.url, "realtime_command_copies_made") == 1
    finally:
        if page is not None:
            await page.close()
        await api.close()
        node.stop()
