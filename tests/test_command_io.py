"""Targeted commands on Redis: what they read, the answers they keep and their audit rows go to
Redis once per loop turn, as one pipeline with one command_read.lua call per exam, whatever
number of commands is in flight (the contract tests check the answers are those of reads sent
one by one)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import ResponseError
from redis_server import script_calls

from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal
from realtime.db.database import Database
from realtime.identity.audit import AuditLog
from realtime.identity.audited import AuditedSessionService
from realtime.sessions import COMMAND_FIELDS, Target
from realtime.state import machine
from realtime.state.model import Action, Exam, new_session
from realtime.state.redis import RedisStore

A, B = "exam-a", "exam-b"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, prefix=f"io{uuid.uuid4().hex[:8]}:")
    await store.start()
    try:
        await store.add_sessions([
            new_session(id=f"s{n}", exam_id=exam, access_code=f"{store.keys.prefix}{exam}{n}")
            for exam in (A, B) for n in range(4)
        ])
        yield store
    finally:
        await store.close()


async def test_reads_of_one_loop_turn_share_one_round_trip(
    store: RedisStore, redis_url: str
) -> None:
    reads = [(A, f"cmd-{n}", [f"s{n % 4}"]) for n in range(10)] + [(B, "cmd-0", ["s1"])]
    await store.read_for_command(A, "", ["s0"])  # the script is loaded (NOSCRIPT counts too)
    trips, calls = store.command_round_trips, script_calls(redis_url)
    answers = await asyncio.gather(
        *(store.read_for_command(exam, cmd, ids, COMMAND_FIELDS) for exam, cmd, ids in reads)
    )
    assert store.command_round_trips == trips + 1
    assert script_calls(redis_url) == calls + 2  # one script call per exam
    assert [sessions[0]["id"] for _, _, sessions in answers] == [ids[0] for _, _, ids in reads]

    # one after the other: a round trip each
    for exam, cmd, ids in reads[:3]:
        await store.read_for_command(exam, cmd, ids, COMMAND_FIELDS)
    assert store.command_round_trips == trips + 4


async def test_kept_answers_of_one_loop_turn_go_with_the_reads(
    store: RedisStore, redis_url: str
) -> None:
    await asyncio.gather(store.save_command_result(A, "warm", {}),  # scripts loaded
                         store.read_for_command(A, "", ["s0"]))
    trips, calls = store.command_round_trips, script_calls(redis_url)
    _, (answer, _, _) = await asyncio.gather(
        asyncio.gather(*(store.save_command_result(A, f"cmd-{n}", {"n": n}) for n in range(20))),
        store.read_for_command(A, "cmd-3", ["s0"], COMMAND_FIELDS),
    )
    assert answer == {"n": 3}  # kept before the read, in the same round trip
    assert store.command_round_trips == trips + 1
    assert script_calls(redis_url) == calls + 2  # all 20 kept by one call, one read
    assert [await store.command_result(A, f"cmd-{n}") for n in range(20)] == [
        {"n": n} for n in range(20)
    ]


async def test_audit_rows_of_one_loop_turn_go_with_the_kept_answers(
    store: RedisStore, redis_url: str
) -> None:
    """A staff command's audit row goes to the outbox in the round trip that keeps its answer:
    the audit rows of a loop turn in one audit_append.lua call per exam, in order."""
    await asyncio.gather(store.save_command_result(A, "warm", {}),  # scripts loaded
                         store.append_audit(B, [{"n": 0}]))
    trips, calls = store.command_round_trips, script_calls(redis_url)
    await asyncio.gather(
        *(store.save_command_result(A, f"cmd-{n}", {"n": n}) for n in range(5)),
        *(store.append_audit(A, [{"n": n}]) for n in range(1, 4)),
        store.append_audit(B, [{"n": 1}, {"n": 2}]),
    )
    assert store.command_round_trips == trips + 1
    assert script_calls(redis_url) == calls + 3  # keep (A), audit (A), audit (B)
    entries = await store.outbox_claim(A, "t", 10, lease=5.0)
    assert entries is not None
    assert [e.audit for e in entries if e.audit] == [[{"n": 1}, {"n": 2}, {"n": 3}]]
    entries = await store.outbox_claim(B, "t", 10, lease=5.0)
    assert entries is not None
    assert [e.audit for e in entries if e.audit] == [[{"n": 0}], [{"n": 1}, {"n": 2}]]


async def test_a_commands_answer_and_audit_row_share_one_round_trip(
    store: RedisStore, tmp_path: Path
) -> None:
    """The audited service keeps a command's answer and appends its audit row in the same
    round trip (after the one that read what it decided on)."""
    db = await Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'rt.db'}")
    try:
        await db.create_all()
        service = AuditedSessionService(store, db, machine.Liveness(15, 60))
        service.audit = AuditLog(db)
        await store.put_exam(Exam(id=A, title="A"))
        staff = Principal(id="p", name="p", kind="staff", permissions=ALL_PERMISSIONS)
        await asyncio.gather(store.save_command_result(A, "warm", {}),  # scripts loaded
                             store.append_audit(B, [{"n": 0}]),
                             store.read_for_command(A, "", ["s0"]))
        trips = store.command_round_trips
        result = await service.command(A, Action.NOTICE, Target(session_ids=["s1"]), staff,
                                       {"command_id": "cmd-1", "text": "hello"})
        assert [a["session_id"] for a in result.applied] == ["s1"]
        assert store.command_round_trips == trips + 2  # the read, then keep + audit (awaited)
        await service.settle()  # the answer kept: set off, not awaited
        assert (await store.command_result(A, "cmd-1") or {}).get("actor") == "staff:p"
        entries = await store.outbox_claim(A, "t", 10, lease=5.0)
        assert entries is not None
        [row] = [row for e in entries for row in e.audit]
        assert row["action"] == "session_command" and row["details"]["command_id"] == "cmd-1"
    finally:
        await db.close()


async def test_a_failed_script_call_fails_only_its_own_callers(
    store: RedisStore, redis_url: str
) -> None:
    """Exam B's kept answer is not a string (GET fails inside B's script call): B's readers
    get the error, A's readers in the same round trip their answers; the next turn is
    unaffected."""
    client = redis.Redis.from_url(redis_url)
    client.hset(store.keys.command_result(B, "broken"), "x", "1")
    trips = store.command_round_trips
    results = await asyncio.gather(
        store.read_for_command(A, "cmd-1", ["s1"], COMMAND_FIELDS),
        store.read_for_command(B, "broken", ["s1"], COMMAND_FIELDS),
        store.read_for_command(B, "broken", ["s2"], COMMAND_FIELDS),
        store.read_for_command(A, "", ["s2", "ghost"], COMMAND_FIELDS),
        store.save_command_result(A, "kept", {"ok": True}),
        return_exceptions=True,
    )
    assert store.command_round_trips == trips + 1
    first, broken, broken_too, second, kept = results
    assert isinstance(broken, ResponseError) and broken_too is broken
    assert not isinstance(first, BaseException) and not isinstance(second, BaseException)
    assert first[2][0] is not None and first[2][0]["id"] == "s1"
    assert second[2][1] is None and second[2][0] is not None
    assert kept is None and await store.command_result(A, "kept") == {"ok": True}
    result, _, _ = await store.read_for_command(A, "kept", ["s1"], COMMAND_FIELDS)
    assert result == {"ok": True}


async def test_reads_work_again_after_the_scripts_were_flushed(
    store: RedisStore, redis_url: str
) -> None:
    """A restarted Redis has no scripts: the refused calls are loaded and sent again."""
    redis.Redis.from_url(redis_url).script_flush()
    answers = await asyncio.gather(
        store.read_for_command(A, "cmd-1", ["s1"], COMMAND_FIELDS),
        store.read_for_command(B, "cmd-1", ["s1"]),
        store.save_command_result(A, "cmd-9", {"n": 9}),
        store.append_audit(A, [{"n": 9}]),
    )
    assert answers[0][2][0] is not None and answers[0][2][0]["exam_id"] == A
    assert answers[1][2][0] is not None and answers[1][2][0]["access_code"]  # every field
    assert await store.command_result(A, "cmd-9") == {"n": 9}
    entries = await store.outbox_claim(A, "t", 10, lease=5.0)  # appended once
    assert entries is not None and [e.audit for e in entries if e.audit] == [[{"n": 9}]]


async def test_a_read_after_a_refused_keep_is_read_again(
    store: RedisStore, redis_url: str
) -> None:
    """Redis lost the keeping script but not the reading one: the answer kept in the same
    turn is kept once the script is loaded again, and the read that followed it is sent again
    after it, so it still sees the answer."""
    client = redis.Redis.from_url(redis_url)
    client.script_flush()
    client.script_load(store._read_script.script)
    _, (answer, _, sessions) = await asyncio.gather(
        store.save_command_result(A, "cmd-1", {"kept": 1}),
        store.read_for_command(A, "cmd-1", ["s1"], COMMAND_FIELDS),
    )
    assert answer == {"kept": 1}
    assert sessions[0] is not None and sessions[0]["id"] == "s1"
