"""Redis Cluster: the state store on a local 3-master cluster, real servers on it, and an
exam that keeps going while its slot moves to another master or its master fails over.

(The store contract suite runs on the cluster too: the `cluster` param of `store_backend`.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from clients import (
    Api,
    LiveCandidate,
    LiveDashboard,
    eventually,
    healthz,
    metric,
    open_candidate,
)
from redis_cluster import LocalCluster
from server import ServerProcess

from realtime.batching import CommitBatcher
from realtime.errors import backend_down
from realtime.state.cluster import ClusterUrl
from realtime.state.model import Event, new_session
from realtime.state.redis import Keys, RedisStore
from realtime.state.store import Commit, CommitsFailed

CANDIDATES = 6  # per exam, split over the two servers
COMMANDS = 24  # notices sent while the cluster changes under the exam


def test_cluster_urls_are_parsed() -> None:
    url = ClusterUrl.parse("redis+cluster://u%40x:p%3Aw@10.0.0.1:7000, [::1]:7001/")
    assert url.nodes == (("10.0.0.1", 7000), ("::1", 7001))
    assert (url.username, url.password) == ("u@x", "p:w")
    with pytest.raises(ValueError):
        ClusterUrl.parse("redis+cluster://10.0.0.1")


async def test_scripts_are_loaded_again_on_every_master_after_noscript(
    redis_cluster: LocalCluster,
) -> None:
    """SCRIPT FLUSH on every master (a restarted node, a promoted replica has no scripts):
    commits, snapshots, reads and the outbox keep working, each script re-loaded once."""
    store = RedisStore(redis_cluster.url, prefix=f"n{uuid.uuid4().hex[:8]}:")
    await store.start()
    try:
        exams = [f"exam-{n}" for n in range(6)]  # spread over the masters' slots
        await store.add_sessions([
            new_session(id="s1", exam_id=exam, access_code=f"code-{exam}") for exam in exams
        ])
        for port in redis_cluster.master_ports():
            redis_cluster.client(port).script_flush()

        def commit(exam: str) -> Commit:
            return Commit(exam_id=exam, session_id="s1", expected_version=0,
                          changes={"status": "paused"},
                          events=[Event(exam_id=exam, session_id="s1", kind="pause",
                                        actor="proctor:1", at=1.0)])

        results = await store.commit([commit(exam) for exam in exams])
        assert all(result.ok for result in results)
        reads = await asyncio.gather(  # one pipeline: a command_read.lua call per exam
            *(store.read_for_command(exam, "", ["s1", "ghost"], ("id", "status"))
              for exam in exams),
            *(store.save_command_result(exam, "c1", {"exam": exam}) for exam in exams),
        )
        assert reads[:len(exams)] == [(None, {}, [{"id": "s1", "status": "paused"}, None])
                                      for _ in exams]
        for exam in exams:
            assert await store.command_result(exam, "c1") == {"exam": exam}
            sessions, seq = await store.snapshot(exam)
            assert (sessions[0]["status"], seq) == ("paused", 1)
            assert [e.kind for e in await store.events_since(exam, 0) or []] == ["pause"]
        assert (await store.outbox_backlog(0.0)).events == 0  # no exam registered: nothing
    finally:
        await store.close()


@pytest.fixture(scope="module")
def failover_cluster() -> Iterator[LocalCluster]:
    """3 masters with one replica each, for the tests that move slots and fail masters over."""
    cluster = LocalCluster(masters=3, replicas=1)
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()


async def test_a_commit_into_a_half_migrated_slot_fails_whole(
    failover_cluster: LocalCluster,
) -> None:
    """One session key of the exam has already moved to the importing master: the commit of
    two sessions is refused before its first write (not half applied), reported as "nothing
    applied, retry" (503), and goes through once the slot has moved."""
    cluster = failover_cluster
    prefix = f"h{uuid.uuid4().hex[:8]}:"
    store = RedisStore(cluster.url, prefix=prefix)
    await store.start()
    try:
        exam = "half-way"
        await store.add_sessions([new_session(id=sid, exam_id=exam, access_code=f"c-{sid}")
                                  for sid in ("s1", "s2")])
        assert all(r.ok for r in await store.commit([_pause(exam, "s1", 0)]))
        slot, source = cluster.slot(store.keys.seq(exam)), cluster.owner(store.keys.seq(exam))
        target = next(port for port in cluster.master_ports() if port != source)
        src, dst = cluster.client(source), cluster.client(target)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", cluster.node_id(source))
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", cluster.node_id(target))
        src.execute_command("MIGRATE", "127.0.0.1", target, store.keys.session(exam, "s2"), 0,
                            5000)

        with pytest.raises(Exception) as refused:
            await store.commit([_pause(exam, "s1", 1, "resume"), _pause(exam, "s2", 0)])
        assert backend_down(refused.value), refused.value
        assert isinstance(refused.value, CommitsFailed)  # refused before it ran: may go again
        assert refused.value.resendable == {exam}, refused.value
        assert src.hget(store.keys.session(exam, "s1"), "version") == b"1"  # not written
        assert int(src.get(store.keys.seq(exam)) or 0) == 1

        await asyncio.to_thread(cluster.move_slot, slot, target)
        results = await store.commit([_pause(exam, "s1", 1, "resume"), _pause(exam, "s2", 0)])
        assert all(r.ok for r in results)
        assert [e.kind for e in await store.events_since(exam, 0) or []] == [
            "pause", "resume", "pause"]
    finally:
        await store.close()


async def test_a_count_behind_writes_is_refused_before_them(
    failover_cluster: LocalCluster,
) -> None:
    """A command over the whole exam commits its sessions' changes and then a count of the
    exam's sessions. With only that set of sessions already moved, the script must be refused
    before its first write: refused whole, so it may be sent again (it once wrote the session,
    then failed on the count, leaving a change without its event)."""
    cluster = failover_cluster
    store = RedisStore(cluster.url, prefix=f"k{uuid.uuid4().hex[:8]}:")
    await store.start()
    exam = "counted"
    slot = target = 0
    try:
        await store.add_sessions([new_session(id=sid, exam_id=exam, access_code=f"k-{sid}")
                                  for sid in ("s1", "s2")])
        assert all(r.ok for r in await store.commit([_pause(exam, "s1", 0)]))
        slot, source = cluster.slot(store.keys.seq(exam)), cluster.owner(store.keys.seq(exam))
        target = next(port for port in cluster.master_ports() if port != source)
        cluster.begin_move(slot, target, store.keys.sessions(exam))
        whole = [_pause(exam, "s2", 0), Commit(exam, "", None, members=2)]
        with pytest.raises(CommitsFailed) as refused:
            await store.commit(whole)
        assert refused.value.resendable == {exam}
        src = cluster.client(source)
        assert src.hget(store.keys.session(exam, "s2"), "version") in (None, b"0")  # untouched
        await asyncio.to_thread(cluster.finish_move, slot, target)
        slot = 0
        assert all(r.ok for r in await store.commit(whole))
        assert [e.kind for e in await store.events_since(exam, 0) or []] == ["pause", "pause"]
    finally:
        if slot:
            await asyncio.to_thread(cluster.finish_move, slot, target)
        await store.close()


async def test_a_session_not_moved_yet_is_refused_never_unknown(
    failover_cluster: LocalCluster,
) -> None:
    """The exam's seq counter and outbox have moved to the importing master (so its commit
    script runs there, sent by ASK), one session (s1) too, the other (s2), the set of
    sessions and a command's applied record not yet. Redis answers a script there that a key
    not moved yet does not exist: s2 must not be reported unknown (a page takes that for
    good), the command applied a second time, the sessions counted 0. Commits touching what
    has not moved are refused whole (nothing applied, may be sent again). Then the set moves
    too (reads run there): reads of sessions answer exactly (key by key), snapshots and
    command reads are refused. Once the slot has settled each commit applies once."""
    cluster = failover_cluster
    store = RedisStore(cluster.url, prefix=f"u{uuid.uuid4().hex[:8]}:")
    await store.start()
    exam = "unmoved"
    slot = target = 0
    try:
        await store.add_sessions([new_session(id=sid, exam_id=exam, access_code=f"u-{sid}")
                                  for sid in ("s1", "s2")])
        once = Commit(exam, "s1", 0, {"status": "paused"},
                      [Event(exam_id=exam, session_id="s1", kind="pause", actor="proctor:1",
                             at=1.0)], command_id="cmd-1")
        assert all(r.ok for r in await store.commit([once]))
        keys = store.keys
        slot, source = cluster.slot(keys.seq(exam)), cluster.owner(keys.seq(exam))
        target = next(port for port in cluster.master_ports() if port != source)
        cluster.begin_move(slot, target, keys.seq(exam), keys.outbox(exam),
                           keys.session(exam, "s1"))

        for commits in ([_pause(exam, "s2", 0)],  # s2 exists: not "not found"
                        [_pause(exam, "s1", 1, "resume"), _pause(exam, "s2", 0)],  # not half
                        [Commit(exam, "s1", 1, {"status": "paused"},  # its record not moved
                                [Event(exam_id=exam, session_id="s1", kind="pause",
                                       actor="proctor:1", at=1.0)], command_id="cmd-1")],
                        [Commit(exam, "", None, members=2)]):  # the set not moved: not 0
            with pytest.raises(CommitsFailed) as refused:
                await store.commit(commits)
            assert refused.value.resendable == {exam}, refused.value
            assert backend_down(refused.value)
        asking = cluster.client(target).pipeline(transaction=False)  # one connection
        asking.execute_command("ASKING").hget(keys.session(exam, "s1"), "version")
        asking.execute_command("ASKING").get(keys.seq(exam))
        assert asking.execute()[1::2] == [b"1", b"1"]  # nothing written

        cluster.client(source).execute_command("MIGRATE", "127.0.0.1", target, "", 0, 10_000,
                                               "KEYS", keys.sessions(exam))
        s2, s1, ghost = await store.read_sessions(exam, ["s2", "s1", "ghost"])
        assert (s2 and s2["id"], s1 and s1["status"], ghost) == ("s2", "paused", None)
        with pytest.raises(Exception) as unsure:
            await store.snapshot(exam)
        assert backend_down(unsure.value), unsure.value
        with pytest.raises(Exception) as unsure:
            await store.read_for_command(exam, "", ["s2"], ("id", "status"))
        assert backend_down(unsure.value), unsure.value

        await asyncio.to_thread(cluster.finish_move, slot, target)
        slot = 0
        assert [r.duplicate_seq for r in await store.commit([once])] == [1]  # applied once
        results = await store.commit([_pause(exam, "s1", 1, "resume"), _pause(exam, "s2", 0)])
        assert all(r.ok for r in results)
        assert [(e.kind, e.session_id) for e in await store.events_since(exam, 0) or []] == [
            ("pause", "s1"), ("resume", "s1"), ("pause", "s2")]
        sessions, seq = await store.snapshot(exam)
        assert (sorted(s["id"] for s in sessions), seq) == (["s1", "s2"], 3)
    finally:
        if slot:
            await asyncio.to_thread(cluster.finish_move, slot, target)
        await store.close()


async def test_a_commit_refused_mid_migration_goes_through_once_the_slot_settles(
    failover_cluster: LocalCluster,
) -> None:
    """The batcher sends a commit refused while its exam's slot moves again until the slot
    has settled, applied once; another exam's commit is answered meanwhile, not held up."""
    cluster = failover_cluster
    store = RedisStore(cluster.url, prefix=f"m{uuid.uuid4().hex[:8]}:")
    await store.start()
    batcher = CommitBatcher(store, retry_budget=60)  # never spent here: no race with the test
    moving, steady = "moving", next(
        f"steady-{n}" for n in range(100)
        if cluster.slot(store.keys.seq(f"steady-{n}")) != cluster.slot(store.keys.seq("moving")))
    slot = target = 0
    try:
        await store.add_sessions([new_session(id="s1", exam_id=exam, access_code=f"m-{exam}")
                                  for exam in (moving, steady)])
        slot = cluster.slot(store.keys.seq(moving))
        source = cluster.owner(store.keys.seq(moving))
        target = next(port for port in cluster.master_ports() if port != source)
        assert all(r.ok for r in await store.commit([_pause(moving, "s1", 0)]))
        cluster.begin_move(slot, target, store.keys.seq(moving))  # every commit of it refused
        held = asyncio.ensure_future(batcher.commit([_pause(moving, "s1", 1, "resume")]))
        [other] = await batcher.commit([_pause(steady, "s1", 0)])
        assert other.ok
        await eventually(lambda: batcher.retries >= 1)
        assert not held.done() and batcher.awaiting_retry == 1
        await asyncio.to_thread(cluster.finish_move, slot, target)
        slot = 0
        [result] = await held
        assert result.ok and result.events[0].seq == 2
        assert [(e.kind, e.seq) for e in await store.events_since(moving, 0) or []] == [
            ("pause", 1), ("resume", 2)]
        assert (batcher.awaiting_retry, batcher.retries_given_up) == (0, 0)
    finally:
        if slot:
            await asyncio.to_thread(cluster.finish_move, slot, target)
        await batcher.close()
        await store.close()


def _pause(exam: str, sid: str, version: int, kind: str = "pause") -> Commit:
    return Commit(exam_id=exam, session_id=sid, expected_version=version,
                  changes={"status": "paused" if kind == "pause" else "active"},
                  events=[Event(exam_id=exam, session_id=sid, kind=kind, actor="proctor:1",
                                at=1.0)])


# -- real servers on a cluster ------------------------------------------------------------------


@dataclass
class Hall:
    """One exam, its candidates split over two servers, a dashboard on the second."""

    cluster: LocalCluster
    servers: list[ServerProcess]
    apis: list[Api]
    exam_id: str
    candidates: list[LiveCandidate]
    dashboard: LiveDashboard
    access_codes: list[str] = field(default_factory=list)  # of the candidates, in order
    acknowledged: list[str] = field(default_factory=list)

    @property
    def keys(self) -> Keys:
        return Keys(self.servers[0].env["REALTIME_REDIS_PREFIX"])

    @property
    def seq_key(self) -> str:
        return self.keys.seq(self.exam_id)

    async def send_notices(self, count: int, tag: str) -> None:
        """Notices through both servers in turn; those answered 200 are acknowledged."""
        for n in range(count):
            api = self.apis[n % 2]
            text = f"{tag} {n}"
            response = await api.http.post(
                f"/api/v1/exams/{self.exam_id}/commands",
                json={"action": "notice", "target": "all", "text": text},
            )
            if response.status_code == 200:
                assert len(response.json()["applied"]) == CANDIDATES, response.text
                self.acknowledged.append(text)
            else:  # refused (not applied) while the slot was moving: allowed, never 5xx-applied
                assert response.status_code == 503, response.text
            await asyncio.sleep(0.05)  # a steady trickle across the change, not a burst

    async def everything_arrived(self) -> None:
        """Every acknowledged notice reached every page as a command, in order; the history
        has it for every session; the state store and SQL agree."""
        texts = self.acknowledged

        def pages_have_it() -> bool:
            return all([c["details"].get("text") for c in page.commands("notice")] == texts
                       for page in self.candidates)

        try:
            await eventually(pages_have_it, timeout=40)
        except AssertionError:
            got = [[c["details"].get("text") for c in page.commands("notice")]
                   for page in self.candidates]
            logs = [server.log_path.read_text(errors="replace")[-3000:] for server in self.servers]
            raise AssertionError(f"acknowledged {texts}; pages got {got}; logs {logs}") from None
        for page in self.candidates:
            assert not page.closed, page.close_code
            assert page.of_type("state") == [], "a page was resynchronised"

        async def drained() -> bool:
            status, body = await healthz(self.servers[0].url)
            return status == 200 and body["history_backlog"]["events"] == 0

        await eventually(drained, timeout=40)
        for page in self.candidates:
            history = await self.apis[0].history(self.exam_id, page.session_id)
            noticed = [e["details"].get("text") for e in history if e["kind"] == "notice"]
            assert noticed == texts, (page.session_id, noticed)
        await eventually(lambda: len(self.dashboard.kinds("notice")) == CANDIDATES * len(texts),
                         timeout=40)
        seqs = self.dashboard.seqs
        assert seqs == list(range(self.dashboard.start_seq + 1,
                                  self.dashboard.start_seq + 1 + len(seqs))), "gap in deltas"
        assert not self.dashboard.closed

    async def still_green(self) -> None:
        for server in self.servers:
            status, body = await healthz(server.url)
            assert status == 200 and body["events"]["subscribed"], body


async def _hall(
    cluster: LocalCluster, tmp_path: Path, **settings: str | float
) -> AsyncIterator[Hall]:
    prefix = f"c{uuid.uuid4().hex[:8]}:"
    first = ServerProcess(redis_url=cluster.url, workdir=tmp_path, redis_prefix=prefix,
                          **settings).start()
    second = ServerProcess(redis_url=cluster.url, database_url=first.database_url,
                           workdir=tmp_path, redis_prefix=prefix, **settings).start()
    servers = [first, second]
    apis = [Api(first.url), Api(second.url)]
    pages: list[LiveCandidate] = []
    dashboard: LiveDashboard | None = None
    try:
        exam = await apis[0].create_exam()
        sessions = await apis[0].create_sessions(exam["id"], CANDIDATES)
        for n, session in enumerate(sessions):
            client, opened = await open_candidate(servers[n % 2].ws_url, session["access_code"])
            assert opened["type"] == "opened", opened
            pages.append(LiveCandidate(client, opened))
        dashboard = await LiveDashboard.watch(second.ws_url, exam["id"])
        yield Hall(cluster, servers, apis, exam["id"], pages, dashboard,
                   [session["access_code"] for session in sessions])
    finally:
        for page in pages:
            await page.close()
        if dashboard is not None:
            await dashboard.close()
        for api in apis:
            await api.close()
        for server in servers:
            server.stop()


@pytest.fixture
async def hall(redis_cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[Hall]:
    async for made in _hall(redis_cluster, tmp_path):
        yield made


@pytest.fixture
async def moving_hall(failover_cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[Hall]:
    async for made in _hall(failover_cluster, tmp_path):
        yield made


@pytest.fixture
async def patient_hall(failover_cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[Hall]:
    """A hall whose servers send refused commits again for up to a minute: a budget the test's
    migration never outlasts, however slow the machine (the default, 1.5 s, is timing)."""
    async for made in _hall(failover_cluster, tmp_path, commit_retry_budget=60):
        yield made


async def test_two_servers_on_a_cluster_commands_and_deltas_cross(hall: Hall) -> None:
    """Pages on both servers, the dashboard on the second, commands through either: the
    events travel by sharded pub/sub (SPUBLISH to the exam's slot)."""
    monitor = aioredis.Redis(port=hall.cluster.owner(hall.seq_key))
    try:
        channels = await monitor.execute_command("PUBSUB", "SHARDNUMSUB",
                                                 hall.seq_key.replace(":seq", ":events"))
        assert int(channels[1]) == 2  # each server subscribed the exam's shard channel once
    finally:
        await monitor.aclose()
    await hall.send_notices(4, "hello")
    assert len(hall.acknowledged) == 4
    result = await hall.apis[1].command(hall.exam_id, action="pause", target="all")
    assert {a["delivery"] for a in result["applied"]} == {"sent"}
    await eventually(lambda: all(page.commands("pause") for page in hall.candidates))
    await hall.everything_arrived()
    await eventually(lambda: len(hall.dashboard.kinds("pause")) == CANDIDATES)
    state = await hall.apis[0].session(hall.exam_id, hall.candidates[0].session_id)
    assert state["status"] == "paused"
    await hall.still_green()


async def test_the_exam_s_slot_moves_to_another_master_mid_exam(moving_hall: Hall) -> None:
    """Resharding: the exam's slot (all its keys, one MIGRATE) moves to another master while
    notices flow. The servers hear Redis end their shard subscription, re-subscribe on the
    new owner and read back what was published meanwhile; nothing acknowledged is lost."""
    hall = moving_hall
    slot = hall.cluster.slot(hall.seq_key)
    source = hall.cluster.owner(hall.seq_key)
    target = next(port for port in hall.cluster.master_ports() if port != source)
    sending = asyncio.create_task(hall.send_notices(COMMANDS, "move"))
    await eventually(lambda: len(hall.acknowledged) >= 4)
    await asyncio.to_thread(hall.cluster.move_slot, slot, target)
    await sending
    assert hall.cluster.owner(hall.seq_key) == target
    assert len(hall.acknowledged) >= COMMANDS // 2, hall.acknowledged
    await hall.everything_arrived()
    await hall.still_green()
    for server in hall.servers:
        _, body = await healthz(server.url)
        assert body["events"]["losses"] >= 1, body  # noticed, counted, re-made


async def test_the_exam_s_master_fails_over_mid_exam(moving_hall: Hall) -> None:
    """CLUSTER FAILOVER on the replica of the exam's master while notices flow: the promoted
    replica has no scripts loaded and the old master turns replica; everything acknowledged
    is in state and history and reached every page as a command."""
    hall = moving_hall
    master = hall.cluster.owner(hall.seq_key)
    sending = asyncio.create_task(hall.send_notices(COMMANDS, "failover"))
    await eventually(lambda: len(hall.acknowledged) >= 4)
    promoted = await asyncio.to_thread(hall.cluster.fail_over, master)
    await sending
    assert hall.cluster.owner(hall.seq_key) == promoted
    assert len(hall.acknowledged) >= COMMANDS // 2, hall.acknowledged
    await hall.everything_arrived()
    result = await hall.apis[0].command(hall.exam_id, action="pause", target="all")
    assert len(result["applied"]) == CANDIDATES
    await eventually(lambda: all(page.commands("pause") for page in hall.candidates))
    state = await hall.apis[1].session(hall.exam_id, hall.candidates[-1].session_id)
    assert state["status"] == "paused"
    await hall.still_green()


async def test_a_killed_shard_subscription_is_re_made_and_read_back(hall: Hall) -> None:
    """CLIENT KILL TYPE pubsub on the exam's master cuts the shard subscription of both
    servers: counted, re-made, and the notices around it reach every page as commands."""
    owner = hall.cluster.client(hall.cluster.owner(hall.seq_key))
    await hall.send_notices(2, "before")
    assert owner.client_kill_filter(_type="pubsub") >= 2

    async def re_made() -> bool:
        for server in hall.servers:
            status, body = await healthz(server.url)
            if status != 200 or body["events"]["losses"] < 1:
                return False
        return True

    await hall.send_notices(2, "after")
    await eventually(re_made, timeout=30)
    await hall.everything_arrived()


async def metrics_of(hall: Hall, name: str) -> list[float]:
    return [await metric(server.url, name) for server in hall.servers]


@asynccontextmanager
async def slot_in_motion(
    hall: Hall, *moved: str
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """The exam's slot half moved to another master (the keys `moved`, by default its seq
    counter, already there, the rest not): every commit of the exam is refused until the
    yielded `settle()` moves the rest."""
    cluster, key = hall.cluster, hall.seq_key
    slot, source = cluster.slot(key), cluster.owner(key)
    target = next(port for port in cluster.master_ports() if port != source)
    cluster.begin_move(slot, target, *(moved or (key,)))
    settled = False

    async def settle() -> None:
        nonlocal settled
        if not settled:
            settled = True
            await asyncio.to_thread(cluster.finish_move, slot, target)

    try:
        yield settle
    finally:
        await settle()


async def test_candidate_messages_and_a_command_mid_migration_are_applied_late(
    patient_hall: Hall,
) -> None:
    """While the exam's slot moves, a candidate's progress, client event and ack and a staff
    command are refused by the cluster (nothing applied); the servers send them again until
    the slot has settled. Then they are applied, once each and in order: the command answers
    200 (not 503), the pages get no `unavailable`, the history has no gap and no duplicate."""
    hall = patient_hall
    writer, acker = hall.candidates[0], hall.candidates[1]  # on the first, second server
    acker.ack = False  # its ack is sent by hand, mid-migration
    await hall.send_notices(1, "before")
    await eventually(lambda: acker.commands("notice"))
    command_id = acker.commands("notice")[0]["command_id"]
    async with slot_in_motion(hall) as settle:
        await writer.send({"type": "progress", "position": 7, "answered": 3})
        await writer.send({"type": "client_event", "name": "blur", "detail": "mid-move"})
        await acker.send({"type": "ack", "command_id": command_id})
        command = asyncio.ensure_future(hall.apis[1].http.post(
            f"/api/v1/exams/{hall.exam_id}/commands",
            json={"action": "notice", "target": "all", "text": "during 0"}))

        async def all_held() -> bool:  # each of them refused and waiting to go again
            waiting = await metrics_of(hall, "realtime_commits_awaiting_retry")
            return waiting[0] >= 2 and waiting[1] >= 1 + CANDIDATES

        await eventually(all_held, timeout=40)
        assert not command.done()
        await settle()
        response = await command
    assert response.status_code == 200, response.text
    assert len(response.json()["applied"]) == CANDIDATES
    hall.acknowledged.append("during 0")
    await hall.everything_arrived()
    for page in (writer, acker):
        assert page.of_type("error") == [], page.of_type("error")
    state = await hall.apis[0].session(hall.exam_id, writer.session_id)
    assert (state["position"], state["answered"], state["alerts"]) == (7, 3, 1)
    history = await hall.apis[0].history(hall.exam_id, writer.session_id)
    assert [e["details"].get("name") for e in history if e["kind"] == "client_event"] == ["blur"]
    assert len([e for e in history if e["kind"] == "progress"]) == 1
    acks = [e for e in await hall.apis[0].history(hall.exam_id, acker.session_id)
            if e["kind"] == "delivered" and e["details"].get("command_id") == command_id]
    assert len(acks) == 1
    assert min(await metrics_of(hall, "realtime_commit_retries")) >= 1
    assert await metrics_of(hall, "realtime_commit_retries_given_up") == [0, 0]
    await hall.still_green()


async def test_an_open_and_a_client_event_mid_migration_are_never_not_found(
    patient_hall: Hall,
) -> None:
    """The exam's seq counter, outbox and set of sessions have moved to the other master, its
    sessions not yet: the servers' scripts for the exam now run on the importing master, where
    a session not moved yet reads as missing. A page opening its session again (a takeover)
    and another page's client event are not told `not_found` (the page would give up): their
    commits are refused and sent again until the slot has settled, then applied once."""
    hall = patient_hall
    keys, exam = hall.keys, hall.exam_id
    page = hall.candidates[1]  # on the second server; the open goes to the first
    async with slot_in_motion(hall, keys.seq(exam), keys.outbox(exam),
                              keys.sessions(exam)) as settle:
        opening = asyncio.ensure_future(
            open_candidate(hall.servers[0].ws_url, hall.access_codes[0]))
        await page.send({"type": "client_event", "name": "blur", "detail": "mid-move"})

        async def held() -> bool:  # or answered: then the assertions below say what
            if opening.done() or page.of_type("error"):
                return True
            waiting = await metrics_of(hall, "realtime_commits_awaiting_retry")
            return waiting[0] >= 1 and waiting[1] >= 1

        await eventually(held, timeout=40)
        assert not opening.done(), opening.result()[1]
        assert page.of_type("error") == []
        await settle()
        client, reply = await opening
    try:
        assert reply["type"] == "opened", reply
        assert reply["session"]["id"] == hall.candidates[0].session_id
    finally:
        await client.close()

    async def client_events() -> list[Any]:
        history = await hall.apis[0].history(exam, page.session_id)
        return [e["details"]["detail"] for e in history if e["kind"] == "client_event"]

    assert await eventually(client_events) == ["mid-move"]
    assert page.of_type("error") == []
    assert await metrics_of(hall, "realtime_commit_retries_given_up") == [0, 0]


async def test_a_migration_that_outlasts_the_retry_budget_is_still_refused(
    moving_hall: Hall,
) -> None:
    """A slot that stays in motion longer than the retry budget (1.5 s by default): the
    command answers 503 and a candidate's client event `unavailable`, nothing applied, as
    before; sent again once the slot has settled, each is applied once."""
    hall = moving_hall
    page = hall.candidates[0]
    async with slot_in_motion(hall) as settle:
        refused = await hall.apis[1].http.post(
            f"/api/v1/exams/{hall.exam_id}/commands",
            json={"action": "notice", "target": "all", "text": "refused"})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "unavailable"
        await page.send({"type": "client_event", "name": "blur", "detail": "refused"})
        [error] = await eventually(lambda: page.of_type("error"))
        assert (error["code"], error["request"]) == ("unavailable", "client_event")
        retried = await metrics_of(hall, "realtime_commit_retries")
        given_up = await metrics_of(hall, "realtime_commit_retries_given_up")
        assert retried[1] >= 1 and given_up[1] >= CANDIDATES, (retried, given_up)
        assert retried[0] >= 1 and given_up[0] >= 1, (retried, given_up)
        await settle()
    await hall.send_notices(1, "after")
    assert hall.acknowledged == ["after 0"]
    await page.send({"type": "client_event", "name": "blur", "detail": "again"})
    await hall.everything_arrived()  # the refused notice is nowhere: not on pages, not in history

    async def one_client_event() -> list[Any]:
        history = await hall.apis[0].history(hall.exam_id, page.session_id)
        return [e["details"]["detail"] for e in history if e["kind"] == "client_event"]

    assert await eventually(one_client_event) == ["again"]


def test_redirections_used_up_mid_migration_count_as_a_slot_in_motion() -> None:
    """redis-py raises `ClusterError("TTL exhausted.")` once it has followed its redirections
    (each one refused: nothing applied) while a slot was still moving. That is a 503 and a
    retry for a caller, not a failure of ours that closes a candidate's socket (seen once
    in the slot-migration test above on a loaded machine)."""
    from redis.exceptions import ClusterError

    assert backend_down(ClusterError("TTL exhausted."))
    assert not backend_down(ClusterError("something else went wrong"))
    # a script's command refused mid-migration, as Redis 7.0 and later versions word it
    from redis.exceptions import ResponseError
    assert backend_down(ResponseError(
        "Script attempted to access a non local key in a cluster node script: f3ef, on "
        "@user_script:1."))
    assert backend_down(ResponseError(
        "Unable to execute command 'exists' in script because undeclared keys were accessed "
        "during rehashing of the slot"))
    assert not backend_down(ResponseError("WRONGTYPE Operation against a key"))
