"""Opens on Redis: what they look up (access codes) and read (sessions) before deciding goes to
Redis once per loop turn, as one pipeline (one HMGET of the codes, one command_read.lua call per
exam), however many opens arrive together; an expired copy of the exam is read once for all of
them. The contract tests check `read_sessions` answers what `get_sessions` does."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError
from redis_server import script_calls

from realtime.db.database import Database
from realtime.sessions import SessionService
from realtime.state import machine
from realtime.state.memory import MemoryStore
from realtime.state.model import Exam, new_session
from realtime.state.redis import RedisStore

A, B = "exam-a", "exam-b"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, prefix=f"op{uuid.uuid4().hex[:8]}:")
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def code(store: RedisStore, exam_id: str, n: int) -> str:
    return f"{store.keys.prefix}{exam_id}-{n}".upper()


async def add(store: RedisStore, count: int = 4) -> None:
    await store.add_sessions([
        new_session(id=f"s{n}", exam_id=exam, access_code=code(store, exam, n))
        for exam in (A, B) for n in range(count)
    ])


def count_sent(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the store sends outside commits from now on: a command's name, or "pipeline"."""
    sent: list[str] = []
    client = store._client
    execute, pipeline = client.execute_command, client.pipeline

    async def counted_execute(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]))
        return await execute(*args, **kwargs)

    def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
        sent.append("pipeline")
        return pipeline(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", counted_execute)
    monkeypatch.setattr(client, "pipeline", counted_pipeline)
    return sent


async def test_lookups_and_reads_of_one_loop_turn_share_one_round_trip(
    store: RedisStore, redis_url: str
) -> None:
    await add(store)
    await store.read_sessions(A, ["s0"])  # the script is loaded (NOSCRIPT counts too)
    trips, calls = store.read_round_trips, script_calls(redis_url)
    codes = [code(store, exam, n) for exam in (A, B) for n in range(4)] + ["NO-SUCH-CODE"]
    reads = [(A, ["s1"]), (A, ["s2", "ghost", "s0"]), (B, ["s3"]), (A, ["s1"])]
    found, read = await asyncio.gather(
        asyncio.gather(*(store.session_by_code(c) for c in codes)),
        asyncio.gather(*(store.read_sessions(exam, ids) for exam, ids in reads)),
    )
    assert store.read_round_trips == trips + 1
    assert script_calls(redis_url) == calls + 2  # one script call per exam
    assert found == [(exam, f"s{n}") for exam in (A, B) for n in range(4)] + [None]
    for (exam, ids), sessions in zip(reads, read, strict=True):
        assert sessions == await store.get_sessions(exam, ids)
    assert read[1][1] is None and read[1][2] is not None and read[1][2]["id"] == "s0"

    # one after the other: a round trip each
    for exam, ids in reads[:3]:
        await store.read_sessions(exam, ids)
    assert store.read_round_trips == trips + 4


async def test_candidates_are_looked_up_with_the_codes(
    store: RedisStore, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logged-in candidates' lookups (`session_by_candidate`) go in the same round trip as
    the access codes and the reads: one HMGET per hash; a hash that cannot be read fails
    only the lookups in it."""
    await store.add_sessions([
        new_session(id=f"s{n}", exam_id=exam, candidate_id=f"c{n}",
                    access_code=code(store, exam, n))
        for exam in (A, B) for n in range(3)
    ])
    redis.Redis.from_url(redis_url).set(store.keys.candidates("broken"), "x")
    sent = count_sent(store, monkeypatch)
    trips = store.read_round_trips
    results = await asyncio.gather(
        store.session_by_candidate(A, "c1"),
        store.session_by_candidate(B, "c2"),
        store.session_by_candidate(A, "nobody"),
        store.session_by_candidate("broken", "c1"),
        store.session_by_code(code(store, B, 0)),
        store.read_sessions(A, ["s2"]),
        return_exceptions=True,
    )
    assert store.read_round_trips == trips + 1
    assert sent == ["pipeline"]
    first, second, nobody, broken, found, read = results
    assert (first, second, nobody, found) == ("s1", "s2", None, (B, "s0"))
    assert isinstance(broken, ResponseError)
    assert isinstance(read, list) and read[0] is not None and read[0]["id"] == "s2"


async def test_a_failed_script_call_fails_only_its_own_exams_readers(
    store: RedisStore, redis_url: str
) -> None:
    """A session key of exam B that is not a hash makes B's script call fail: B's readers get
    the error, A's readers and the code lookups of the same round trip their answers."""
    await add(store)
    redis.Redis.from_url(redis_url).set(store.keys.session(B, "broken"), "x")
    trips = store.read_round_trips
    results = await asyncio.gather(
        store.read_sessions(A, ["s1"]),
        store.read_sessions(B, ["broken"]),
        store.read_sessions(B, ["s2"]),
        store.session_by_code(code(store, B, 2)),
        return_exceptions=True,
    )
    assert store.read_round_trips == trips + 1
    first, broken, broken_too, found = results
    assert isinstance(broken, ResponseError) and broken_too is broken
    assert isinstance(first, list) and first[0] is not None and first[0]["id"] == "s1"
    assert found == (B, "s2")
    assert (await store.read_sessions(B, ["s2"]))[0] is not None  # the next turn is unaffected


async def test_reads_work_again_after_the_scripts_were_flushed(
    store: RedisStore, redis_url: str
) -> None:
    await add(store)
    await store.read_sessions(A, ["s0"])
    redis.Redis.from_url(redis_url).script_flush()
    found, [session] = await asyncio.gather(store.session_by_code(code(store, A, 1)),
                                            store.read_sessions(A, ["s1"]))
    assert found == (A, "s1")
    assert session is not None and session["id"] == "s1"


async def test_a_hall_opening_at_once_reads_in_a_few_round_trips(
    store: RedisStore, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty opens by access code at once: every one is opened, and their code lookups and
    session reads take a few pipelines in all, not two round trips each."""
    service = SessionService(store, db, machine.Liveness())
    await service.create_exam(Exam(id=A, title="Hall"))
    await add(store, 40)
    sent = count_sent(store, monkeypatch)

    async def one(n: int) -> bool:
        found = await service.resolve_code(code(store, A, n))
        assert found == (A, f"s{n}")
        opened = await service.open(A, f"s{n}", f"conn-{n}", "", client_id=f"tab-{n}")
        return bool(opened.session["connected"])

    assert await asyncio.gather(*(one(n) for n in range(40))) == [True] * 40
    assert len(sent) <= 4, sent  # one for the lookups, one for the reads (plus slack)
    for n in range(40):
        [session] = await store.get_sessions(A, [f"s{n}"])
        assert session is not None and session["conn_id"] == f"conn-{n}"


async def test_an_expired_exam_is_read_once_for_all_who_wait(db: Database) -> None:
    """The exam's in-process copy expires while a hall opens: one read of the store for all
    of them (each used to read it again), and they all get what the store has now."""
    store = MemoryStore()
    service = SessionService(store, db, machine.Liveness())
    await service.create_exam(Exam(id=A, title="Before"))
    await store.put_exam(Exam(id=A, title="Changed elsewhere"))
    reads: list[str] = []
    get_exam = store.get_exam

    async def counted(exam_id: str) -> Exam | None:
        reads.append(exam_id)
        await asyncio.sleep(0)  # a round trip: the others arrive meanwhile
        return await get_exam(exam_id)

    store.get_exam = counted  # type: ignore[method-assign]
    assert (await service.get_exam(A)).title == "Before"  # the copy, still fresh
    service._exam_cache[A] = (time.monotonic() - 60, service._exam_cache[A][1])  # expired
    exams = await asyncio.gather(*(service.get_exam(A) for _ in range(50)))
    assert {e.title for e in exams} == {"Changed elsewhere"}
    assert reads == [A]
    assert (await service.get_exam(A, fresh=True)).title == "Changed elsewhere"
    assert reads == [A, A]  # `fresh` reads, whatever the copy


async def test_waiters_of_an_exam_read_that_fails_all_get_the_error(db: Database) -> None:
    store = MemoryStore()
    service = SessionService(store, db, machine.Liveness())
    calls = 0

    async def down(exam_id: str) -> Exam | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise ConnectionError("store down")

    store.get_exam = down  # type: ignore[method-assign]
    results = await asyncio.gather(*(service.get_exam(A) for _ in range(10)),
                                   return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, ConnectionError) for r in results)
    with pytest.raises(ConnectionError):  # not kept: the next caller reads again
        await service.get_exam(A)
    assert calls == 2
