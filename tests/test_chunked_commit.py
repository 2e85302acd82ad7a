"""A big commit on Redis in chunks (`RedisStore(commit_chunk=...)`).

An exam's commits of one store call beyond `commit_chunk` go as several commit_batch.lua calls
sent back to back on one connection, each its own atomic step (own seqs, outbox entry and
published message), handed out once the last is answered (or the call is cut off: then those
answered). What must hold: seq order =
outbox order = publish order = hand-out order; a fresh command (a caller-given command id,
decided on the copy) over several chunks applies whole, and a retry of it (after a kill or a
cut-off between chunks too) applies nothing twice and answers for every session; NOSCRIPT on
a later chunk is sent again, in order; chunks that went through are answered as such.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from clients import eventually
from redis.exceptions import ConnectionError as RedisConnectionError
from redis_cluster import LocalCluster

from realtime.app import build_store
from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal
from realtime.config import ConfigError, Settings
from realtime.sessions import COMMAND_FIELDS, BulkResult, SessionService, Target
from realtime.state import machine
from realtime.state.model import Action, Event, Exam, new_session
from realtime.state.redis import COMMIT_CHUNK, RedisStore
from realtime.state.store import Commit, CommitsFailed

EXAM = "exam-c"
STAFF = Principal(id="staff", name="staff", kind="staff", permissions=ALL_PERMISSIONS)
LIVENESS = machine.Liveness(stale_after=15, resume_grace=60)
SESSIONS = [f"s{i}" for i in range(5)]


def active(sid: str) -> dict[str, Any]:
    return new_session(id=sid, exam_id=EXAM, candidate_id=f"c-{sid}", candidate_name=sid,
                       access_code=f"code-{uuid.uuid4().hex[:10]}", status="active",
                       authorized=True)


def pause(sid: str, command_id: str = "", fresh: bool = False, check: bool = False) -> Commit:
    if check:  # a decision not to change it: its version must still be the first
        return Commit(EXAM, sid, 0, check_only=True, command_id=command_id, fresh=fresh)
    event = Event(exam_id=EXAM, session_id=sid, kind="pause", actor="staff", at=1.0,
                  before="active", after="paused", changes={"status": "paused"})
    return Commit(EXAM, sid, 0, {"status": "paused"}, [event], command_id=command_id,
                  fresh=fresh)


def resume(sid: str) -> Commit:
    """After `pause(sid)`."""
    event = Event(exam_id=EXAM, session_id=sid, kind="resume", actor="staff", at=2.0,
                  before="paused", after="active", changes={"status": "active"})
    return Commit(EXAM, sid, 1, {"status": "active"}, [event])


async def pauses(store: RedisStore) -> list[str]:
    """The sessions of every pause event in the exam's outbox, in seq order."""
    events = await store.events_since(EXAM, 0)
    assert events is not None
    return [e.session_id for e in events if e.kind == "pause"]


async def deafen(store: RedisStore) -> asyncio.Event:
    """The store's subscription hears a marker and then waits on the returned gate: until it
    is set no echo of the store's own commits comes before Redis's answer, so their events are
    handed out as each answer arrives (`RedisStore._hand_out`; a small echo that came first
    would be dispatched instead)."""
    gate = asyncio.Event()

    async def hold(event: Event) -> None:
        if event.kind == "deaf":
            await gate.wait()

    store.add_listener(hold)
    marker = Event(exam_id=EXAM, session_id="s0", kind="deaf", actor="test", at=0.0)
    [result] = await store.commit([Commit(EXAM, "s0", None, {}, [marker])])
    seq = result.events[0].seq
    await eventually(lambda: store._heard_seq.get(EXAM, 0) >= seq)
    return gate


async def outbox_entries(store: RedisStore) -> int:
    return int(await store._client.xlen(store.keys.outbox(EXAM)))


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Started stores on one prefix (one exam of 5 active sessions, served), closed after."""
    prefix = f"c{uuid.uuid4().hex[:10]}:"
    made: list[RedisStore] = []

    async def make(commit_chunk: int = 2) -> RedisStore:
        store = RedisStore(redis_url, prefix=prefix, commit_chunk=commit_chunk)
        await store.start()
        made.append(store)
        if len(made) == 1:
            await store.put_exam(Exam(id=EXAM, title="chunks"))
            await store.add_sessions([active(sid) for sid in SESSIONS])
        await store.serve(EXAM)
        return store

    yield make
    for store in made:
        await store.close()


def killed_after_first_call(store: RedisStore) -> None:
    """The store's next chunked commit sends its first call only: then the process dies
    (the commit is cancelled there, nothing more of it is sent or done)."""
    send_and_take = store._send_and_take

    async def first_only(commits: Any, calls: Any, results: Any, errors: Any,
                         again: bool) -> Any:
        await send_and_take(commits, calls[:1], results, errors, again)
        raise asyncio.CancelledError

    store._send_and_take = first_only  # type: ignore[method-assign]


def cut_before_second_call(store: RedisStore) -> None:
    """The connection fails as the store sends the second call of its next chunked commit
    (the first one sent, and answered)."""
    encode = store._batch_args
    encoded = 0

    def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal encoded
        encoded += 1
        if encoded == 2:
            raise RedisConnectionError("cut between chunks")
        return encode(*args, **kwargs)

    store._batch_args = failing  # type: ignore[method-assign]


def count_reads(store: RedisStore, cancel_at: int = 0) -> list[int]:
    """Counts the answers the store's commit connections read (`[n]`, reset by the test);
    with `cancel_at`, the read of that answer is cancelled (the process dies waiting for it)."""
    reads = [0]
    pool = store._commit_client.connection_pool
    get_connection = pool.get_connection

    async def counted(*args: Any, **kwargs: Any) -> Any:
        conn = await get_connection(*args, **kwargs)
        if "read_response" not in vars(conn):
            read = conn.read_response

            async def read_response(*a: Any, **k: Any) -> Any:
                if reads[0] + 1 == cancel_at:
                    raise asyncio.CancelledError
                reply = await read(*a, **k)
                reads[0] += 1
                return reply

            conn.read_response = read_response
        return conn

    pool.get_connection = counted  # type: ignore[method-assign]
    return reads


async def test_a_big_commit_goes_in_chunks_handed_out_once_the_last_is_answered(
    stores: Callable[..., Any],
) -> None:
    store: RedisStore = await stores(commit_chunk=2)
    gate = await deafen(store)
    reads = count_reads(store, cancel_at=5)  # the second commit's second answer
    handed: list[tuple[list[int], int]] = []  # each hand-out's seqs, answers read by then
    store.add_commit_listener(lambda events: handed.append(([e.seq for e in events], reads[0])))
    heard: list[int] = []
    store.add_listener(lambda event: heard.append(event.seq))
    before = await outbox_entries(store)

    results = await store.commit([pause(sid) for sid in SESSIONS])

    assert all(r.ok for r in results)
    seqs = [r.events[0].seq for r in results]
    assert seqs == list(range(seqs[0], seqs[0] + 5))  # in the order of the commits
    # three script calls (2, 2, 1 commits), handed out in order once all three were answered
    # (not chunk by chunk: the first chunks' frames would set off acks read before the rest)
    assert handed == [(seqs[0:2], 3), (seqs[2:4], 3), (seqs[4:5], 3)]
    assert await outbox_entries(store) == before + 3  # one outbox entry per chunk

    # a commit cut off after its first answer (the process cancelled waiting for the second)
    # still hands out what was answered: it is applied
    handed.clear()
    with pytest.raises(asyncio.CancelledError):
        await store.commit([resume(sid) for sid in SESSIONS])
    assert handed == [([seqs[-1] + 1, seqs[-1] + 2], 4)]

    gate.set()  # (the calls it sent but did not read ran: their echoes bring them)
    await eventually(lambda: len(heard) == 10)  # every echo, in seq order
    assert heard == list(range(seqs[0], seqs[0] + 10))
    assert await pauses(store) == SESSIONS


async def test_a_fresh_command_over_several_chunks_applies_whole_once(
    stores: Callable[..., Any],
) -> None:
    chunked: RedisStore = await stores(commit_chunk=2)
    one_call: RedisStore = await stores(commit_chunk=0)
    commits = [pause(sid, "cmd-1", fresh=True) for sid in SESSIONS]

    first = await chunked.commit(commits)
    assert [r.ok for r in first] == [True] * 5  # not refused by its own first chunk
    assert await chunked.command_applied(EXAM, "cmd-1") == {
        sid: r.events[0].seq for sid, r in zip(SESSIONS, first, strict=True)}
    # a retry, chunked or not, fresh: the id is known, nothing of it applies
    for store in (chunked, one_call):
        again = await store.commit([pause(sid, "cmd-1", fresh=True) for sid in SESSIONS])
        assert [r.known for r in again] == [True] * 5
    assert await pauses(chunked) == SESSIONS


async def test_a_retry_after_a_kill_between_chunks_of_checks_is_refused(
    stores: Callable[..., Any],
) -> None:
    """The first chunk applied nothing (decisions not to change two sessions) but claimed
    the command: a fresh retry of it is refused whole (it goes the read way), not decided
    again on a copy as a command never seen."""
    first: RedisStore = await stores(commit_chunk=2)
    commits = [pause(sid, "cmd-k", fresh=True, check=sid in ("s0", "s1")) for sid in SESSIONS]
    killed_after_first_call(first)
    with pytest.raises(asyncio.CancelledError):
        await first.commit(commits)
    assert await pauses(first) == []

    retry: RedisStore = await stores(commit_chunk=2)
    again = await retry.commit([pause(sid, "cmd-k", fresh=True, check=sid in ("s0", "s1"))
                                for sid in SESSIONS])
    assert [r.known for r in again] == [True] * 5
    assert await pauses(retry) == []


class Process:
    """A server process: its store (chunks of 2) and its session service."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.service = SessionService(store, db=None,  # type: ignore[arg-type]
                                      liveness=LIVENESS)

    async def command(self, action: Action, target: Target, **params: Any) -> BulkResult:
        result = await self.service.command(EXAM, action, target, STAFF, params)
        await asyncio.gather(*self.service._tasks)  # the answer kept for retries
        return result


def by_session(result: BulkResult) -> dict[str, int]:
    return {a["session_id"]: a["seq"] for a in result.applied}


async def test_a_retry_after_a_kill_between_chunks_finishes_the_command_once(
    stores: Callable[..., Any],
) -> None:
    """A "pause all" with a command id, decided on the copy, killed after its first chunk
    (2 of 5 sessions paused): another process's retry with the same id applies nothing twice,
    finishes the command and answers for all five; a retry after that answers the same."""
    one, other = Process(await stores()), Process(await stores())
    for process in (one, other):
        assert await process.store.command_view(EXAM, COMMAND_FIELDS, whole=True)
    killed_after_first_call(one.store)
    with pytest.raises(asyncio.CancelledError):
        await one.command(Action.PAUSE, Target(all=True), command_id="p-1")
    applied_first = await other.store.command_applied(EXAM, "p-1")
    assert len(applied_first) == 2

    retry = await other.command(Action.PAUSE, Target(all=True), command_id="p-1")
    assert sorted(by_session(retry)) == SESSIONS
    for sid, seq in applied_first.items():  # the first call's, answered with their seqs
        assert by_session(retry)[sid] == seq
    assert sorted(await pauses(other.store)) == SESSIONS  # each paused once
    assert await other.command(Action.PAUSE, Target(all=True), command_id="p-1") == retry


async def test_a_connection_failing_between_chunks_answers_what_went_through(
    stores: Callable[..., Any],
) -> None:
    """The store reports the chunk that went through and fails the others (outcome unknown);
    the command answers for every session, the first chunk's as applied there, never an
    error, and nothing applies twice."""
    store: RedisStore = await stores()
    cut_before_second_call(store)
    with pytest.raises(CommitsFailed) as failed:
        await store.commit([pause(sid) for sid in SESSIONS])
    results = failed.value.results
    assert [r is not None and r.ok for r in results] == [True, True, False, False, False]
    assert [r is None for r in results] == [False, False, True, True, True]
    assert not failed.value.resendable
    assert await pauses(store) == SESSIONS[:2]

    process = Process(await stores())
    assert await process.store.command_view(EXAM, COMMAND_FIELDS, whole=True)
    cut_before_second_call(process.store)
    result = await process.command(Action.RESUME, Target(all=True), command_id="r-1")
    assert sorted(by_session(result)) == SESSIONS[:2]  # the paused two, resumed
    events = await process.store.events_since(EXAM, 0)
    assert events is not None
    assert sorted(e.session_id for e in events if e.kind == "resume") == SESSIONS[:2]


async def test_noscript_on_a_later_chunk_is_sent_again_in_order(
    stores: Callable[..., Any], redis_url: str,
) -> None:
    """Redis forgets its scripts between the first chunk and the second (a restart): the
    refused chunks are sent again once the script is loaded, and everything is applied and
    handed out in order."""
    store: RedisStore = await stores(commit_chunk=2)
    await store.commit([pause("s0")])  # the script is loaded
    gate = await deafen(store)
    handed: list[int] = []
    store.add_commit_listener(lambda events: handed.extend(e.seq for e in events))
    sync = redis.Redis.from_url(redis_url)
    encode = store._batch_args
    entries = await outbox_entries(store)
    encoded = 0

    def flush_after_the_first(*args: Any, **kwargs: Any) -> Any:
        nonlocal encoded
        encoded += 1
        if encoded == 2:  # once the first chunk has run, Redis loses its scripts
            deadline = 200
            while sync.xlen(store.keys.outbox(EXAM)) == entries:
                deadline -= 1
                assert deadline > 0, "the first chunk never ran"
            sync.script_flush()
        return encode(*args, **kwargs)

    store._batch_args = flush_after_the_first  # type: ignore[method-assign]
    try:
        results = await store.commit([pause(sid) for sid in SESSIONS[1:]])
    finally:
        sync.close()
    assert encoded == 3  # two chunks, the second sent again
    assert all(r.ok for r in results)
    seqs = [r.events[0].seq for r in results]
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    assert handed == seqs
    gate.set()
    assert await pauses(store) == SESSIONS


async def test_chunks_on_a_cluster_apply_in_order(redis_cluster: LocalCluster) -> None:
    """On a cluster the chunks go in one pipeline (answered together); a fresh command over
    them applies whole, and its retry is refused."""
    store = RedisStore(redis_cluster.url, prefix=f"c{uuid.uuid4().hex[:10]}:", commit_chunk=2)
    await store.start()
    try:
        await store.put_exam(Exam(id=EXAM, title="chunks"))
        await store.add_sessions([active(sid) for sid in SESSIONS])
        results = await store.commit([pause(sid, "cmd-c", fresh=True) for sid in SESSIONS])
        seqs = [r.events[0].seq for r in results]
        assert seqs == list(range(seqs[0], seqs[0] + 5))
        again = await store.commit([pause(sid, "cmd-c", fresh=True) for sid in SESSIONS])
        assert [r.known for r in again] == [True] * 5
        assert await pauses(store) == SESSIONS
    finally:
        await store.close()


def test_the_chunk_size_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REALTIME_REDIS_COMMIT_CHUNK", "500")
    settings = Settings.from_env()
    assert settings.redis_commit_chunk == 500
    settings.redis_url = "redis://127.0.0.1:1/0"  # (not connected: built only)
    store = build_store(settings)
    assert isinstance(store, RedisStore) and store._commit_chunk == 500
    assert Settings().redis_commit_chunk == COMMIT_CHUNK == 1000  # chunks unless told 0
    assert RedisStore("redis://127.0.0.1:1/0")._commit_chunk == COMMIT_CHUNK
    with pytest.raises(ConfigError, match=r"REALTIME_REDIS_COMMIT_CHUNK=-1"):
        Settings(redis_commit_chunk=-1).check()
