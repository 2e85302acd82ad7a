"""The `StateStore` contract, run unchanged against every backend (see the `store` fixture).

If the memory and the Redis store ever disagree, a test here must fail: the rest of the server
is only tested against whichever backend is convenient.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from clients import eventually
from redis._parsers import hiredis as hiredis_parsers
from redis._parsers import resp3 as resp3_parsers
from redis.crc import key_slot
from redis_server import RedisServer

from realtime.state import redis as redis_module
from realtime.state.model import Event, Exam, ExamSettings, new_session
from realtime.state.redis import Keys, RedisStore
from realtime.state.store import Commit, StateStore, apply_locally

A, B = "exam-a", "exam-b"

StoreFactory = Callable[..., Awaitable[StateStore]]  # the `make_store` fixture


def session(sid: str, exam_id: str = A, **fields: Any) -> dict[str, Any]:
    fields.setdefault("access_code", f"code-{exam_id}-{sid}")
    return new_session(
        id=sid, exam_id=exam_id, candidate_id=f"cand-{sid}", candidate_name=f"Cand {sid}", **fields
    )


def event(exam_id: str, sid: str, kind: str = "progress", **details: Any) -> Event:
    return Event(
        exam_id=exam_id,
        session_id=sid,
        kind=kind,
        actor="proctor:1",
        at=1_700_000_000.25,
        before="active",
        after="active",
        details=details,
        changes={"position": details.get("n", 0)},
    )


def commit(
    exam_id: str, sid: str, expected: int | None, events: int = 1, **changes: Any
) -> Commit:
    return Commit(
        exam_id=exam_id,
        session_id=sid,
        expected_version=expected,
        changes=changes,
        events=[event(exam_id, sid, n=i) for i in range(events)],
    )


async def get(store: StateStore, sid: str, exam_id: str = A) -> dict[str, Any] | None:
    [found] = await store.get_sessions(exam_id, [sid])
    return found


async def current_seq(store: StateStore, exam_id: str) -> int:
    _, seq = await store.snapshot(exam_id)
    return seq


class Collector:
    """A listener that records events and lets a test await them, never sleep for them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._grew = asyncio.Event()

    def __call__(self, received: Event) -> None:
        self.events.append(received)
        self._grew.set()

    async def listen(self, received: Event) -> None:
        """The same, as a coroutine listener."""
        self(received)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Event]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self._grew.clear()
                await self._grew.wait()
        return self.events


def summary(events: list[Event]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in events]


# -- exams and sessions --------------------------------------------------------------------------


async def test_exam_round_trip(store: StateStore) -> None:
    exam = Exam(
        id=A,
        title="Algebra",
        groups=["g1", "g2"],
        starts_at=1000.0,
        ends_at=5000.5,
        duration_minutes=90,
        settings=ExamSettings(requires_authorization=True, lab_networks=["10.0.0.0/8"]),
    )
    await store.put_exam(exam)
    assert await store.get_exam(A) == exam
    assert await store.get_exam("nope") is None


async def test_add_and_get_sessions(store: StateStore) -> None:
    s1 = session("s1", locked=True, deadline=1234.5, position=3, status="active")
    s2 = session("s2")
    other = session("s1", exam_id=B)
    await store.add_sessions([s1, s2, other])

    assert await store.get_sessions(A, ["s1", "missing", "s2"]) == [s1, None, s2]
    assert await store.get_sessions(B, ["s1", "s2"]) == [other, None]
    assert await store.get_sessions(A, []) == []


async def test_read_sessions_answers_as_get_sessions(store: StateStore) -> None:
    """Reads and code lookups arriving together (sharing a round trip on Redis) each get
    what they would get alone."""
    s1 = session("s1", locked=True, deadline=1234.5, position=3, status="active",
                 notice='a "quoted" notice', client_id="tab\n1")
    s2 = session("s2")
    other = session("s1", exam_id=B)
    await store.add_sessions([s1, s2, other])
    answers = await asyncio.gather(
        store.read_sessions(A, ["s1", "missing", "s2"]),
        store.read_sessions(B, ["s1", "s2"]),
        store.read_sessions(A, []),
        store.session_by_code(f"code-{A}-s2"),
        store.session_by_code("unknown"),
        store.read_sessions(A, ["s2"]),
    )
    assert answers == [[s1, None, s2], [other, None], [], (A, "s2"), None, [s2]]


async def test_add_sessions_keeps_existing(store: StateStore) -> None:
    await store.add_sessions([session("s1")])
    [result] = await store.commit([commit(A, "s1", 0, status="active")])
    assert result.ok

    await store.add_sessions([session("s1", access_code="other-code"), session("s2")])

    s1 = await get(store, "s1")
    assert s1 is not None and s1["status"] == "active" and s1["version"] == 1
    assert await get(store, "s2") == session("s2")
    assert await store.session_by_code("other-code") is None


async def test_session_by_code(store: StateStore) -> None:
    await store.add_sessions(
        [session("s1"), session("s1", exam_id=B), session("s3", access_code="")]
    )
    assert await store.session_by_code(f"code-{A}-s1") == (A, "s1")
    assert await store.session_by_code(f"code-{B}-s1") == (B, "s1")
    assert await store.session_by_code("unknown") is None
    assert await store.session_by_code("") is None


# -- commits -------------------------------------------------------------------------------------


async def test_commit_applies_changes_and_bumps_version(store: StateStore) -> None:
    original = session("s1")
    await store.add_sessions([original])
    change = commit(A, "s1", 0, events=2, status="active", started_at=1000.5, locked=True)

    [result] = await store.commit([change])

    assert result.ok and result.found
    assert [e.seq for e in result.events] == [1, 2]
    assert result.events == change.events  # the caller's events, now numbered
    assert all(e.changes["version"] == 1 for e in change.events)
    assert await get(store, "s1") == apply_locally(original, change)

    [again] = await store.commit([commit(A, "s1", 1, deadline=4600.5)])
    assert again.ok and again.events[0].seq == 3 and again.events[0].changes["version"] == 2
    after = await get(store, "s1")
    assert after is not None
    assert (after["version"], after["deadline"], after["locked"]) == (2, 4600.5, True)


async def test_version_conflict_changes_nothing(store: StateStore) -> None:
    await store.add_sessions([session("s1")])
    [first] = await store.commit([commit(A, "s1", 0, position=1)])
    before = await get(store, "s1")

    stale = commit(A, "s1", 0, position=99)
    [result] = await store.commit([stale])

    assert not result.ok and result.found and result.events == []
    assert stale.events[0].seq == 0 and "version" not in stale.events[0].changes
    assert await get(store, "s1") == before
    assert await current_seq(store, A) == 1
    assert summary(await store.events_since(A, 0) or []) == summary(first.events)


async def test_unknown_session_is_not_found(store: StateStore) -> None:
    await store.add_sessions([session("s1")])
    results = await store.commit(
        [commit(A, "ghost", 0), commit(A, "ghost", None), commit(B, "s1", 0)]
    )
    assert [(r.ok, r.found, r.events) for r in results] == [(False, False, [])] * 3
    assert await current_seq(store, A) == 0
    assert await get(store, "ghost") is None


async def test_unconditional_commit_records_events_only(store: StateStore) -> None:
    await store.add_sessions([session("s1")])
    refusal = commit(A, "s1", None, events=2, alerts=5)

    [result] = await store.commit([refusal])

    assert result.ok and [e.seq for e in result.events] == [1, 2]
    assert all("version" not in e.changes for e in refusal.events)
    assert await get(store, "s1") == session("s1")  # version 0, alerts 0
    assert summary(await store.events_since(A, 0) or []) == summary(refusal.events)


async def test_sequence_numbers_are_consecutive_per_exam(store: StateStore) -> None:
    await store.add_sessions([session("s1"), session("s2"), session("s1", exam_id=B)])
    results = await store.commit(
        [
            commit(A, "s1", 0, events=2),
            commit(B, "s1", 0),
            commit(A, "s2", None),
            commit(A, "s1", 0),  # conflict: consumes no seq
            commit(B, "s1", 1, events=3),
            commit(A, "s2", 0),
        ]
    )
    seqs = [[e.seq for e in r.events] for r in results]
    assert seqs == [[1, 2], [1], [3], [], [2, 3, 4], [4]]

    [later] = await store.commit([commit(A, "s1", 1)])
    assert later.events[0].seq == 5
    assert (await current_seq(store, A), await current_seq(store, B)) == (5, 4)


async def test_commit_of_nothing(store: StateStore) -> None:
    assert await store.commit([]) == []


async def test_bulk_commit(store: StateStore) -> None:
    """A command on a whole exam: thousands of sessions in one call."""
    count = 2000
    await store.add_sessions([session(f"s{i}") for i in range(count)])
    results = await store.commit(
        [commit(A, f"s{i}", 0, status="paused", paused_at=1.5) for i in range(count)]
    )
    assert all(r.ok for r in results)
    assert [r.events[0].seq for r in results] == list(range(1, count + 1))
    sessions, seq = await store.snapshot(A)
    assert seq == count
    assert {(s["status"], s["version"]) for s in sessions} == {("paused", 1)}


async def test_concurrent_commits_on_one_version_let_exactly_one_win(store: StateStore) -> None:
    """The compare-and-set race: everyone read version 0, only one may commit on it."""
    contenders = 50
    await store.add_sessions([session("s1")])
    everyone_has_read = asyncio.Barrier(contenders)

    async def contend(i: int) -> bool:
        current = await get(store, "s1")
        assert current is not None
        await everyone_has_read.wait()
        [result] = await store.commit([commit(A, "s1", current["version"], position=i)])
        assert result.found
        return result.ok

    won = await asyncio.gather(*(contend(i) for i in range(contenders)))

    assert won.count(True) == 1
    final = await get(store, "s1")
    assert final is not None
    assert (final["version"], final["position"]) == (1, won.index(True))
    assert await current_seq(store, A) == 1


async def test_touch_refreshes_sessions_their_connection_still_holds(store: StateStore) -> None:
    await store.add_sessions(
        [
            session("s1", connected=True, last_seen=1.0, conn_id="c1"),
            session("s2", last_seen=1.0, conn_id="c2", status="active"),
            session("s3", connected=True, last_seen=1.0, conn_id="other"),
            session("s4", last_seen=1.0, conn_id="c4", status="completed"),
        ]
    )
    lost = await store.touch(
        [(A, "s1", "c1"), (A, "s2", "c2"), (A, "s3", "c3"), (A, "s4", "c4"), (A, "ghost", "x"),
         (B, "s1", "c1")],
        now=50.25,
    )

    s1, s2, s3, ghost = await store.get_sessions(A, ["s1", "s2", "s3", "ghost"])
    assert s1 is not None and (s1["last_seen"], s1["version"]) == (50.25, 0)
    # Marked disconnected (a sweeper during an outage) while the socket still holds it: the
    # caller is told, so it can mark it connected again with an event.
    assert lost == [(A, "s2", "c2")]
    assert s2 is not None and s2["last_seen"] == 1.0 and s2["connected"] is False
    assert s3 is not None and s3["last_seen"] == 1.0  # another connection holds it now
    assert ghost is None and await get(store, "s1", B) is None
    assert await current_seq(store, A) == 0
    assert await store.touch([], now=60.0) == []


async def test_stale_holders_are_connected_sessions_not_seen_since(store: StateStore) -> None:
    await store.add_sessions(
        [
            session("old", connected=True, last_seen=10.5),
            session("fresh", connected=True, last_seen=99.0),
            session("gone", connected=False, last_seen=1.0),
            session("never", connected=True, last_seen=None),
            session("other", exam_id=B, connected=True, last_seen=1.0),
        ]
    )
    assert sorted(await store.stale_holders(A, 50.0)) == ["never", "old"]
    assert await store.stale_holders(A, 5.0) == ["never"]
    assert await store.stale_holders("no-such-exam", 50.0) == []


# -- snapshot and event log ----------------------------------------------------------------------


async def test_snapshot_returns_sessions_and_seq(store: StateStore) -> None:
    assert await store.snapshot(A) == ([], 0)
    await store.add_sessions([session("s1"), session("s2"), session("s3", exam_id=B)])
    await store.commit([commit(A, "s1", 0, events=2, status="active"), commit(A, "s2", None)])

    sessions, seq = await store.snapshot(A)

    assert seq == 3
    by_id = {s["id"]: s for s in sessions}
    assert sorted(by_id) == ["s1", "s2"]
    assert [by_id["s1"], by_id["s2"]] == await store.get_sessions(A, ["s1", "s2"])
    assert by_id["s1"]["version"] == 1


async def test_events_since(store: StateStore) -> None:
    await store.add_sessions([session("s1"), session("s1", exam_id=B)])
    committed = [
        e
        for r in await store.commit(
            [commit(A, "s1", 0, events=3, status="active"), commit(B, "s1", 0),
             commit(A, "s1", None, events=2)]
        )
        for e in r.events
        if e.exam_id == A
    ]

    since = await store.events_since(A, 2)
    assert summary(since or []) == summary(committed[2:])
    assert since is not None and since[0].changes["version"] == 1
    assert summary(await store.events_since(A, 0) or []) == summary(committed)
    assert await store.events_since(A, 5) == []
    assert await store.events_since(A, 9) is None  # beyond the exam's seq: snapshot needed
    assert await store.events_since("no-such-exam", 0) == []


async def drain(store: StateStore, exam_id: str, consumer: str = "test") -> list[Event]:
    """Everything undrained of an exam, acknowledged as written: what a drainer does."""
    drained: list[Event] = []
    while True:
        entries = await store.outbox_claim(exam_id, consumer, 100, lease=5.0)
        assert entries is not None
        if not entries:
            return drained
        drained += [e for entry in entries for e in entry.events]
        await store.outbox_ack(exam_id, consumer, entries)


async def test_events_since_reports_a_trimmed_log(make_store: StoreFactory) -> None:
    store = await make_store(log_size=3)
    await store.add_sessions([session("s1")])
    for _ in range(6):
        await store.commit([commit(A, "s1", None)])
    # Nothing undrained is ever trimmed: the log still reaches back to the start.
    assert [e.seq for e in await store.events_since(A, 0) or []] == [1, 2, 3, 4, 5, 6]
    await store.commit([commit(A, "s1", None, events=1)])
    await drain(store, A)

    assert await store.events_since(A, 2) is None  # drained and beyond the log: resnapshot
    assert [e.seq for e in await store.events_since(A, 5) or []] == [6, 7]
    assert await store.events_since(A, 7) == []


async def test_the_log_is_trimmed_behind_a_run_of_audit_rows(make_store: StoreFactory) -> None:
    """Staff commands append an audit entry each after their events: however many follow the
    event entry holding the log's first seq, the drained log is still trimmed to it."""
    store = await make_store(log_size=3)
    await store.add_sessions([session("s1")])
    for _ in range(4):
        await store.commit([commit(A, "s1", None)])
    for n in range(20):
        await store.append_audit(A, [{"action": "pause", "n": n}])
    for _ in range(2):
        await store.commit([commit(A, "s1", None)])
    await drain(store, A)

    assert await store.events_since(A, 2) is None  # seq 3 is drained and beyond the log
    assert [e.seq for e in await store.events_since(A, 3) or []] == [4, 5, 6]

    # Redis keeps whole entries: while the log's first seq is inside one, from its start.
    whole = isinstance(store, RedisStore)
    await store.commit([commit(A, "s1", None, events=4)])  # seqs 7-10: the log from 8
    await drain(store, A)
    assert await store.events_since(A, 5) is None
    assert [e.seq for e in await store.events_since(A, 7) or []] == [8, 9, 10]
    if whole:
        assert [e.seq for e in await store.events_since(A, 6) or []] == [7, 8, 9, 10]
    await store.commit([commit(A, "s1", None)])  # 11: the log from 9, in the same entry
    await drain(store, A)
    assert await store.events_since(A, 5) is None
    assert [e.seq for e in await store.events_since(A, 8) or []] == [9, 10, 11]
    if whole:
        assert [e.seq for e in await store.events_since(A, 6) or []] == [7, 8, 9, 10, 11]
    await store.commit([commit(A, "s1", None, events=3)])  # 12-14: the log from 12
    await drain(store, A)
    assert await store.events_since(A, 10) is None
    assert [e.seq for e in await store.events_since(A, 11) or []] == [12, 13, 14]


# -- guarded commits, commands, candidates --------------------------------------------------------


async def test_guarded_commit_applies_while_the_guard_holds(store: StateStore) -> None:
    """Candidate traffic: no version read, only "this connection still holds a live session"."""
    await store.add_sessions([session("s1", conn_id="c1", status="active", version=4)])
    progress = commit(A, "s1", None, position=7, last_seen=10.5)
    progress.guard, progress.live_only = {"conn_id": "c1"}, True

    [result] = await store.commit([progress])

    assert result.ok and result.events[0].seq == 1
    assert "version" not in result.events[0].changes  # the version is left alone
    s1 = await get(store, "s1")
    assert s1 is not None and (s1["position"], s1["last_seen"], s1["version"]) == (7, 10.5, 4)

    stolen = commit(A, "s1", None, position=9)
    stolen.guard = {"conn_id": "c2"}
    await store.commit([commit(A, "s1", 4, status="terminated")])
    late = commit(A, "s1", None, position=8)
    late.guard, late.live_only = {"conn_id": "c1"}, True
    results = await store.commit([stolen, late])
    assert [(r.ok, r.guard_failed, r.events) for r in results] == [(False, True, [])] * 2
    s1 = await get(store, "s1")
    assert s1 is not None and s1["position"] == 7
    assert await current_seq(store, A) == 2


async def test_a_versioned_commit_also_checks_its_guard(store: StateStore) -> None:
    """A decision on a field that changes without a version (the sweeper on `last_seen`):
    the version must match and the guard must hold, else nothing is applied."""
    await store.add_sessions([session("s1", connected=True, last_seen=10.5, version=3)])
    stale = commit(A, "s1", 3, connected=False)
    stale.guard = {"last_seen": 9.0}

    [result] = await store.commit([stale])

    assert (result.ok, result.found, result.guard_failed, result.events) == (False, True, True, [])
    s1 = await get(store, "s1")
    assert s1 is not None and (s1["connected"], s1["version"]) == (True, 3)
    assert await current_seq(store, A) == 0

    current = commit(A, "s1", 3, connected=False)
    current.guard = {"last_seen": 10.5}
    [result] = await store.commit([current])
    assert result.ok and result.events[0].seq == 1 and result.events[0].changes["version"] == 4
    s1 = await get(store, "s1")
    assert s1 is not None and (s1["connected"], s1["version"]) == (False, 4)


async def test_a_command_id_applies_once_per_session(store: StateStore) -> None:
    await store.add_sessions([session("s1"), session("s2")])
    first = [commit(A, sid, 0, status="paused") for sid in ("s1", "s2")]
    for c in first:
        c.command_id = "cmd-1"
    results = await store.commit(first[:1])
    assert results[0].ok and results[0].events[0].seq == 1

    retry = [commit(A, sid, v, status="paused") for sid, v in (("s1", 1), ("s2", 0))]
    for c in retry:
        c.command_id = "cmd-1"
    results = await store.commit(retry)
    assert (results[0].ok, results[0].duplicate_seq) == (False, 1)  # applied nothing twice
    assert results[1].ok and results[1].events[0].seq == 2  # the rest of the command
    other = commit(A, "s1", 1, status="active")
    other.command_id = "cmd-2"
    [again] = await store.commit([other])
    assert again.ok

    assert await store.command_applied(A, "cmd-1") == {"s1": 1, "s2": 2}
    assert await store.command_applied(A, "nope") == {}
    assert await store.command_result(A, "cmd-1") is None
    await store.save_command_result(A, "cmd-1", {"applied": [{"session_id": "s1"}]})
    assert await store.command_result(A, "cmd-1") == {"applied": [{"session_id": "s1"}]}
    assert await store.command_result(B, "cmd-1") is None
    result, applied, sessions = await store.read_for_command(A, "cmd-1", ["s2", "ghost"])
    assert result == {"applied": [{"session_id": "s1"}]}
    assert applied == {"s1": 1, "s2": 2}
    assert sessions == await store.get_sessions(A, ["s2", "ghost"])
    assert await store.read_for_command(A, "", ["s1"]) == (None, {}, await store.get_sessions(
        A, ["s1"]))
    # only some fields of the targeted sessions, as a snapshot with fields gives them
    fields = ("id", "status", "version", "deadline")
    _, _, sessions = await store.read_for_command(A, "cmd-1", ["s2", "ghost"], fields)
    assert sessions == [{"id": "s2", "status": "paused", "version": 1, "deadline": None}, None]
    assert await store.read_for_command(A, "", []) == (None, {}, [])


async def test_reads_for_commands_sent_together_each_get_their_own_answer(
    store: StateStore,
) -> None:
    """Reads (and kept answers) arriving in the same loop turn, of several exams, commands and
    field lists, answer as if each had gone alone; an answer kept before a read is seen by
    it."""
    await store.add_sessions([session("s1"), session("s2"), session("s1", exam_id=B)])
    paused = commit(A, "s1", 0, status="paused")
    paused.command_id = "cmd-1"
    assert (await store.commit([paused]))[0].ok
    fields = ("id", "status")
    calls = [
        (A, "cmd-1", ["s1", "s2"], None),
        (A, "cmd-1", ["s2"], fields),
        (A, "", ["ghost", "s1"], fields),
        (B, "cmd-1", ["s1"], fields),
        (B, "", [], None),
        (A, "cmd-2", [], fields),
    ]
    alone = [await store.read_for_command(*call) for call in calls]
    together = await asyncio.gather(*(store.read_for_command(*call) for call in calls))
    assert list(together) == alone
    assert alone[0][1] == {"s1": 1} and alone[3][1] == {}
    assert alone[2][2] == [None, {"id": "s1", "status": "paused"}]

    _, answer = await asyncio.gather(
        store.save_command_result(A, "cmd-2", {"applied": [], "actor": "a"}),
        store.read_for_command(A, "cmd-2", ["s2"], fields),
    )
    assert answer == ({"applied": [], "actor": "a"}, {}, [{"id": "s2", "status": "ready"}])
    assert await store.command_result(B, "cmd-2") is None


async def test_a_command_id_applies_once_even_twice_in_one_call(store: StateStore) -> None:
    """Two retries of one command that meet in the same batch: the second sees the first."""
    await store.add_sessions([session("s1")])
    twice = [commit(A, "s1", 0, status="paused"), commit(A, "s1", 0, status="paused")]
    for c in twice:
        c.command_id = "cmd-1"
    first, second = await store.commit(twice)
    assert first.ok and first.events[0].seq == 1
    assert (second.ok, second.duplicate_seq) == (False, 1)


async def test_commits_of_one_session_in_one_call_see_each_other(store: StateStore) -> None:
    """Within one call, a compare-and-set or check decided on a version an earlier commit of
    the same call moved on loses; one decided on the new version applies."""
    await store.add_sessions([session("s1"), session("s2")])
    results = await store.commit([
        commit(A, "s1", 0, status="paused"),
        commit(A, "s1", 0, status="active"),  # the version is 1 by now: loses
        commit(A, "s1", 1, extra_minutes=5),  # decided on that: applies
        Commit(A, "s1", 1, check_only=True),  # not any more
        Commit(A, "s1", 2, check_only=True),
        commit(A, "s2", 0, status="paused"),
    ])
    assert [r.ok for r in results] == [True, False, True, False, True, True]
    s1 = await get(store, "s1")
    assert s1 is not None and (s1["status"], s1["extra_minutes"], s1["version"]) == (
        "paused", 5, 2)


async def test_guards_of_one_session_in_one_call_see_each_other(store: StateStore) -> None:
    """Within one call, a guard or a live-only check after an earlier commit of the same
    session is compared with what that commit wrote, not with the session as the call found
    it: an ack that cleared the notice makes a second ack of it fail; a commit that made the
    session final makes a live-only one fail; a guarded write leaves the version, so a check
    of it still holds."""
    await store.add_sessions([session("s1", conn_id="c1", notice_id="n1", status="active"),
                              session("s2", conn_id="c1", status="active")])

    def guarded(sid: str, guard: dict[str, Any], live_only: bool = False,
                **changes: Any) -> Commit:
        c = commit(A, sid, None, **changes)
        c.guard, c.live_only = guard, live_only
        return c

    results = await store.commit([
        guarded("s1", {"conn_id": "c1", "notice_id": "n1"}, notice_id=""),  # the first ack
        guarded("s1", {"conn_id": "c1", "notice_id": "n1"}, notice_id=""),  # no longer n1
        Commit(A, "s1", 0, check_only=True),  # a guarded write keeps the version
        guarded("s1", {"notice_id": ""}, position=3),  # decided on the cleared notice
        commit(A, "s2", 0, status="completed"),
        guarded("s2", {"conn_id": "c1"}, live_only=True, position=4),  # final by now
        guarded("s2", {"conn_id": "c1"}, position=5),  # not live-only: applies
    ])
    assert [(r.ok, r.guard_failed) for r in results] == [
        (True, False), (False, True), (True, False), (True, False), (True, False),
        (False, True), (True, False)]
    assert [e.seq for r in results for e in r.events] == [1, 2, 3, 4]
    s1, s2 = await store.get_sessions(A, ["s1", "s2"])
    assert s1 is not None and (s1["notice_id"], s1["position"], s1["version"]) == ("", 3, 0)
    assert s2 is not None and (s2["status"], s2["position"], s2["version"]) == (
        "completed", 5, 1)


async def test_one_call_of_every_kind_of_commit_answers_each_as_alone(
    store: StateStore,
) -> None:
    """Compare-and-set with and without a guard, guarded, record-only, checks and the member
    count, with and without command ids, for known and unknown sessions, in one call: each
    answers as it would alone, in the order given."""
    await store.add_sessions([session("s1", conn_id="c1", version=2), session("s2"),
                              session("s3", status="terminated", conn_id="c1")])
    before = commit(A, "s2", 0, status="paused")
    before.command_id = "cmd-1"
    [applied] = await store.commit([before])
    assert applied.ok and applied.events[0].seq == 1

    def with_id(c: Commit, command_id: str) -> Commit:
        c.command_id = command_id
        return c

    guarded_cas = commit(A, "s1", 2, status="paused")
    guarded_cas.guard = {"conn_id": "c1"}
    wrong_guard = commit(A, "s1", 3, status="active")
    wrong_guard.guard = {"conn_id": "c2"}
    progress = commit(A, "s3", None, position=1)
    progress.guard, progress.live_only = {"conn_id": "c1"}, True
    ghost = commit(A, "ghost", None, position=1)
    ghost.guard = {"conn_id": "c1"}
    results = await store.commit([
        with_id(commit(A, "s2", 1, status="active"), "cmd-1"),  # applied before: duplicate
        with_id(commit(A, "s1", 1, status="paused"), "cmd-1"),  # not applied, wrong version
        guarded_cas,  # applies: version 3
        wrong_guard,  # right version, guard fails
        progress,  # s3 is final
        ghost,
        commit(A, "s2", None),  # record only
        commit(A, "ghost", None),
        Commit(A, "s1", 3, check_only=True),
        Commit(A, "ghost", 0, check_only=True),
        Commit(A, "", None, members=3),
        with_id(commit(A, "s3", 0, extra_minutes=5), "cmd-1"),  # the rest of cmd-1: applies
    ])
    assert [(r.ok, r.found, r.guard_failed, r.duplicate_seq) for r in results] == [
        (False, True, False, 1), (False, True, False, None), (True, True, False, None),
        (False, True, True, None), (False, True, True, None), (False, False, False, None),
        (True, True, False, None), (False, False, False, None), (True, True, False, None),
        (False, False, False, None), (True, True, False, None), (True, True, False, None)]
    assert [e.seq for r in results for e in r.events] == [2, 3, 4]
    assert await store.command_applied(A, "cmd-1") == {"s2": 1, "s3": 4}
    s1 = await get(store, "s1")
    assert s1 is not None and (s1["status"], s1["version"]) == ("paused", 3)


async def test_only_the_events_of_commits_that_apply_are_recorded(store: StateStore) -> None:
    """The events of commits that fail, first, last or between those that apply, are left
    out of the outbox entry and the log; those that apply keep their order and consecutive
    seqs."""
    await store.add_sessions([session(f"s{i}") for i in range(4)])
    [done] = await store.commit([commit(A, "s3", 0, status="paused")])
    failing = commit(A, "s2", None, events=2, position=1)
    failing.guard = {"conn_id": "nobody"}
    results = await store.commit([
        commit(A, "s0", 5, events=2),  # wrong version
        commit(A, "s1", 0, events=2),
        commit(A, "ghost", None, events=1),
        commit(A, "s2", 0, events=1),
        commit(A, "s2", None, events=2),
        commit(A, "s3", 0, events=3),  # wrong version
        failing,
        commit(A, "s0", 0, events=1),
        commit(A, "s1", 0, events=2),  # the version is 1 by now
    ])
    assert [r.ok for r in results] == [False, True, False, True, True, False, False, True, False]
    applied = [e for r in results for e in r.events]
    assert [(e.session_id, e.seq) for e in applied] == [
        ("s1", 2), ("s1", 3), ("s2", 4), ("s2", 5), ("s2", 6), ("s0", 7)]
    assert summary(await store.events_since(A, 1) or []) == summary(applied)
    assert summary(await drain(store, A)) == summary(done.events + applied)


async def test_a_command_over_thousands_of_sessions_is_remembered_for_each(
    store: StateStore,
) -> None:
    """More sessions than one script call can list at once (Lua's unpack limit)."""
    ids = [f"s{i}" for i in range(6000)]
    await store.add_sessions([session(sid) for sid in ids])
    bulk = [commit(A, sid, 0, status="paused") for sid in ids]
    for c in bulk:
        c.command_id = "cmd-big"
    results = await store.commit(bulk)
    assert all(r.ok for r in results)
    retry = [commit(A, sid, 1, status="paused") for sid in ids]
    for c in retry:
        c.command_id = "cmd-big"
    again = await store.commit(retry)
    assert [r.duplicate_seq for r in again] == [r.events[0].seq for r in results]


async def test_check_only_and_member_commits_write_nothing(store: StateStore) -> None:
    """What a decision on a copy took for granted is checked in the same atomic step as the
    commits beside it: a session still at a version, an exam still with that many sessions.
    They write nothing, record nothing and take no seq."""
    await store.add_sessions([session("s1"), session("s2")])
    [moved] = await store.commit([commit(A, "s2", 0, status="paused")])
    assert moved.ok
    checks = [
        Commit(A, "s1", 0, check_only=True),  # as it was: holds
        Commit(A, "s2", 0, check_only=True),  # moved on since: fails
        Commit(A, "ghost", 0, check_only=True),
        Commit(A, "", None, members=2),
        Commit(A, "", None, members=1),
        commit(A, "s1", 0, status="paused"),  # beside them: applies
    ]
    results = await store.commit(checks)
    assert [(r.ok, r.found) for r in results] == [
        (True, True), (False, True), (False, False), (True, True), (False, True), (True, True)]
    assert [r.events for r in results[:5]] == [[]] * 5
    assert results[5].events[0].seq == 2  # the checks took no seq
    s1, s2 = await store.get_sessions(A, ["s1", "s2"])
    assert s1 is not None and (s1["status"], s1["version"]) == ("paused", 1)
    assert s2 is not None and s2["version"] == 1
    await store.add_sessions([session("s3")])
    [grown] = await store.commit([Commit(A, "", None, members=2)])
    assert not grown.ok


async def test_a_fresh_commit_of_a_known_command_id_is_refused(store: StateStore) -> None:
    """A commit decided without reading the command's kept answer (`fresh`) applies only for a
    command id never seen: once some session applied it, or its answer is kept, every commit
    of it in the call is refused (`known`) before any applies, checks included."""
    await store.add_sessions([session(f"s{i}") for i in range(4)])

    def fresh(sid: str, command_id: str, check: bool = False) -> Commit:
        c = (Commit(A, sid, 0, check_only=True) if check
             else commit(A, sid, 0, extra_minutes=5))
        c.command_id, c.fresh = command_id, True
        return c

    first = await store.commit([fresh("s0", "cmd-1"), fresh("s1", "cmd-1", check=True)])
    assert [r.ok for r in first] == [True, True]
    assert await store.command_applied(A, "cmd-1") == {"s0": first[0].events[0].seq}
    # the retry: refused whole, even the session it did not apply before, and the check
    retry = await store.commit([fresh("s1", "cmd-1"), fresh("s2", "cmd-1", check=True),
                                fresh("s3", "cmd-2")])  # another command beside it: applies
    assert [(r.ok, r.known) for r in retry] == [(False, True), (False, True), (True, False)]
    s1 = await get(store, "s1")
    assert s1 is not None and (s1["extra_minutes"], s1["version"]) == (0, 0)
    # nothing applied, but its answer is kept: known too
    await store.save_command_result(A, "cmd-3", {"applied": []})
    [kept] = await store.commit([fresh("s2", "cmd-3")])
    assert (kept.ok, kept.known) == (False, True)
    # not fresh: the per-session rule, as before (the rest of a command cut off half-way)
    rest = commit(A, "s1", 0, extra_minutes=5)
    rest.command_id = "cmd-1"
    [applied] = await store.commit([rest])
    assert applied.ok and await store.command_applied(A, "cmd-1") == {
        "s0": first[0].events[0].seq, "s1": applied.events[0].seq}


async def test_session_by_candidate(store: StateStore) -> None:
    await store.add_sessions([session("s1"), session("s2", exam_id=B)])
    assert await store.session_by_candidate(A, "cand-s1") == "s1"
    assert await store.session_by_candidate(B, "cand-s1") is None
    assert await store.session_by_candidate(B, "cand-s2") == "s2"


# -- the outbox ----------------------------------------------------------------------------------


async def test_outbox_holds_every_event_and_audit_row_until_acknowledged(
    store: StateStore,
) -> None:
    await store.put_exam(Exam(id=A, title="A"))
    await store.put_exam(Exam(id=B, title="B"))
    await store.add_sessions([session("s1"), session("s2"), session("s1", exam_id=B)])
    first = await store.commit(
        [commit(A, "s1", 0, events=2), commit(B, "s1", 0), commit(A, "s2", None)]
    )
    await store.append_audit(A, [{"action": "session_command", "actor": "staff:1"}])
    await store.commit([commit(A, "s2", 0)])
    assert set(await store.outbox_exams()) >= {A, B}

    backlog = await store.outbox_backlog(now=1e12)
    assert backlog.events >= 5 and backlog.exams == 2 and backlog.oldest_at is not None

    entries = await store.outbox_claim(A, "one", 100, lease=5.0)
    assert entries is not None
    # One entry per commit call and exam, in commit order; audit rows in between.
    assert [[e.seq for e in entry.events] for entry in entries] == [[1, 2, 3], [], [4]]
    assert entries[1].audit == [{"action": "session_command", "actor": "staff:1"}]
    assert summary(entries[0].events) == summary(
        [e for r in first for e in r.events if e.exam_id == A]
    )
    # Another consumer may not drain the exam while the first one holds its lease.
    assert await store.outbox_claim(A, "two", 100, lease=5.0) is None

    await store.outbox_ack(A, "one", entries)
    assert await store.outbox_claim(A, "one", 100, lease=5.0) == []
    rest = await store.outbox_backlog(now=1e12)
    assert rest.exams == 1 and rest.events == 1  # exam B still waits
    assert [e.seq for e in await drain(store, B)] == [1]
    assert (await store.outbox_backlog(now=1e12)).events == 0


async def test_outbox_entries_not_acknowledged_are_claimed_again(store: StateStore) -> None:
    """A drainer whose SQL write failed (or that died) leaves its entries to the next claim."""
    await store.put_exam(Exam(id=A, title="A"))
    await store.add_sessions([session("s1")])
    await store.commit([commit(A, "s1", None, events=2)])
    entries = await store.outbox_claim(A, "one", 100, lease=5.0)
    assert entries is not None and len(entries) == 1
    await store.commit([commit(A, "s1", None)])

    again = await store.outbox_claim(A, "one", 100, lease=5.0)
    assert again is not None
    assert [e.seq for entry in again for e in entry.events][:2] == [1, 2]


async def test_the_store_says_whether_its_outbox_outlives_the_process(
    make_store: StoreFactory,
) -> None:
    """`outbox_survives_process`, which the drainer's longer gather relies on: where it is
    True, what one process's store appended is claimed through another process's store (a
    second store on the same Redis); the memory store says False, and another one has none
    of it."""
    first, second = await make_store(), await make_store()
    await first.put_exam(Exam(id=A, title="A"))
    await first.add_sessions([session("s1")])
    await first.commit([commit(A, "s1", None)])
    await first.append_audit(A, [{"action": "session_command", "uid": "u1"}])
    entries = await second.outbox_claim(A, "other", 100, lease=5.0)
    assert first.outbox_survives_process is second.outbox_survives_process
    if first.outbox_survives_process:
        assert entries is not None
        assert [len(e.events) for e in entries] == [1, 0]
        assert entries[1].audit == [{"action": "session_command", "uid": "u1"}]
    else:
        assert not entries


async def test_stale_holders_of_a_large_exam(store: StateStore) -> None:
    """Every stale holder of an exam larger than one of the Redis store's slices, each once;
    on Redis the question is asked slice by slice, never over the whole exam in one script
    call (that held Redis, and every command waiting on it, for tens of ms at 5,000)."""
    now = 1_700_000_000.0
    rows = []
    for i in range(1200):
        kind = i % 4  # fresh, old, disconnected, held on a dead node
        rows.append(session(
            f"s{i}", connected=kind != 2, conn_id=f"{'nDead' if kind == 3 else 'nLive'}-{i}",
            last_seen=now - 100 if kind == 1 else now,
        ))
    await store.add_sessions(rows)
    calls = 0
    if isinstance(store, RedisStore):
        script = store._stale_script

        async def counted(**kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return await script(**kwargs)

        store._stale_script = counted  # type: ignore[assignment]
    found = await store.stale_holders(A, now - 15, {"nDead"})
    assert sorted(found) == sorted(f"s{i}" for i in range(1200) if i % 4 in (1, 3))
    assert len(found) == len(set(found))
    if isinstance(store, RedisStore):
        assert calls > 1


# -- node presence -------------------------------------------------------------------------------


async def test_stale_holders_include_sessions_held_on_dead_nodes(store: StateStore) -> None:
    now = 1_700_000_000.0
    await store.add_sessions([
        session("s1", connected=True, conn_id="nA-1", last_seen=now),
        session("s2", connected=True, conn_id="nB-2", last_seen=now),
        session("s3", connected=True, conn_id="legacy", last_seen=now - 100),
        session("s4", connected=False, conn_id="nA-4", last_seen=now),
    ])
    assert sorted(await store.stale_holders(A, now - 15)) == ["s3"]
    assert sorted(await store.stale_holders(A, now - 15, {"nA"})) == ["s1", "s3"]


async def test_node_heartbeats_report_nodes_that_stopped(store: StateStore) -> None:
    t = 1_700_000_000.0
    assert await store.node_heartbeat("n1", {"pid": 1}, t, 6.0) == []
    assert await store.node_heartbeat("n2", {"pid": 2}, t + 3, 6.0) == []
    assert await store.node_heartbeat("n2", {"pid": 2}, t + 10, 6.0) == ["n1"]
    assert await store.node_heartbeat("n1", {"pid": 1}, t + 11, 6.0) == []  # back
    nodes = {n["id"]: n for n in await store.list_nodes()}
    assert nodes["n1"]["last_beat"] == t + 11 and nodes["n2"]["info"] == {"pid": 2}


# -- listeners -----------------------------------------------------------------------------------


async def test_listeners_receive_every_event_in_order(store: StateStore) -> None:
    plain, coroutine = Collector(), Collector()
    store.add_listener(plain)
    store.add_listener(coroutine.listen)
    for exam_id in (A, B):
        await store.serve(exam_id)
    await store.add_sessions([session("s1"), session("s2"), session("s1", exam_id=B)])

    committed: list[Event] = []
    for batch in (
        [commit(A, "s1", 0, events=2), commit(B, "s1", 0), commit(A, "s2", None)],
        [commit(A, "s1", 0)],  # conflict: publishes nothing
        [commit(A, "s2", 0, events=3), commit(B, "s1", 1)],
    ):
        committed += [e for r in await store.commit(batch) for e in r.events]

    assert len(committed) == 8
    for collector in (plain, coroutine):
        received = await collector.wait_for(len(committed))
        for exam_id in (A, B):  # each exam's events in seq order (exams may interleave)
            assert summary([e for e in received if e.exam_id == exam_id]) == summary(
                [e for e in committed if e.exam_id == exam_id]
            )
    assert [e.seq for e in plain.events if e.exam_id == A] == [1, 2, 3, 4, 5, 6]
    assert plain.events[0].changes["version"] == 1


async def test_each_listener_takes_a_commits_events_whole_before_the_next(
    store: StateStore,
) -> None:
    """The first listener (the hub, which writes the frames) gets every event of a batch the
    store delivers (a hall-size commit; on the chunked backend each chunk of it) before the
    next one (the drainer's, the drop alerts') gets any: their notes come after the batch's
    last frame, not between the frames; each listener in seq order."""
    calls: list[tuple[str, int]] = []
    second = Collector()
    store.add_listener(lambda received: calls.append(("first", received.seq)))
    store.add_listener(lambda received: (calls.append(("second", received.seq)),
                                         second(received))[-1])
    await store.serve(A)
    await store.add_sessions([session(f"s{i}") for i in range(300)])
    results = await store.commit([commit(A, f"s{i}", 0) for i in range(300)])
    seqs = [e.seq for r in results for e in r.events]
    assert len(seqs) == 300
    await second.wait_for(300)
    runs: list[tuple[str, list[int]]] = []  # the calls, as runs of one listener
    for name, seq in calls:
        if runs and runs[-1][0] == name:
            runs[-1][1].append(seq)
        else:
            runs.append((name, [seq]))
    # one pair of runs per batch: the first listener's, then the same events to the second
    assert [name for name, _ in runs] == ["first", "second"] * (len(runs) // 2)
    assert all(runs[i][1] == runs[i + 1][1] for i in range(0, len(runs), 2))
    assert all(len(run) >= 2 for _, run in runs)  # batches of 300, or chunks of 2: not 1
    assert [seq for name, run in runs if name == "first" for seq in run] == seqs
    if not isinstance(store, RedisStore) or not store._commit_chunk:
        assert len(runs) == 2  # one call, one batch


# -- Redis only: several processes, outages, key layout ------------------------------------------


def redis_store(url: str, prefix: str) -> RedisStore:
    return RedisStore(url, prefix=prefix)


async def test_redis_stores_fan_out_to_each_other(redis_url: str) -> None:
    """Two processes on one Redis: each one's listeners see what the other committed."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    one, two = redis_store(redis_url, prefix), redis_store(redis_url, prefix)
    elsewhere = redis_store(redis_url, prefix + "x:")
    seen_one, seen_two, seen_elsewhere = Collector(), Collector(), Collector()
    for store, collector in ((one, seen_one), (two, seen_two), (elsewhere, seen_elsewhere)):
        store.add_listener(collector)
        await store.start()
        await store.serve(A)
    try:
        await one.add_sessions([session("s1"), session("s2")])
        await elsewhere.add_sessions([session("s1")])
        [first] = await one.commit([commit(A, "s1", 0)])
        [second] = await two.commit([commit(A, "s2", 0)])
        assert first.ok and second.ok

        for collector in (seen_one, seen_two):
            received = await collector.wait_for(2)
            assert [(e.session_id, e.seq) for e in received] == [("s1", 1), ("s2", 2)]

        # Another prefix is another deployment: its own event arrives, ours never do.
        await elsewhere.commit([commit(A, "s1", 0)])
        assert [(e.session_id, e.seq) for e in await seen_elsewhere.wait_for(1)] == [("s1", 1)]
    finally:
        for store in (one, two, elsewhere):
            await store.close()


async def test_redis_own_commits_reach_commit_listeners_when_redis_answers(
    redis_url: str,
) -> None:
    """A process hands its own commits' events to commit listeners as soon as Redis answers,
    without waiting for them to come back through its subscription (here: none at all)."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    deaf, other = redis_store(redis_url, prefix), redis_store(redis_url, prefix)
    early: list[list[Event]] = []
    deaf.add_commit_listener(early.append)
    await other.start()  # `deaf` never subscribes: no echo can reach it
    try:
        await deaf.add_sessions([session(f"s{i}") for i in range(20)] + [session("s0", B)])
        committed: list[Event] = []
        for batch in (
            [commit(A, f"s{i}", 0, events=2) for i in range(10)] + [commit(B, "s0", 0)],
            [commit(A, "s0", 0)],  # conflict: nothing to hand out
            [commit(A, f"s{i}", None) for i in range(10, 20)],
        ):
            committed += [e for r in await deaf.commit(batch) for e in r.events]
            assert [e for events in early for e in events] == committed
        assert [len(events) for events in early] == [20, 1, 10]
        await other.commit([commit(A, "s19", None)])  # another process's: not handed out
        assert len(early) == 3
    finally:
        for store in (deaf, other):
            await store.close()


async def test_redis_listeners_see_own_commits_once_whichever_comes_first(
    redis_url: str,
) -> None:
    """Whether Redis's answer or the echo of a commit reaches the process first, its listeners
    see every event exactly once, in seq order, equal to what another process decodes."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    one, two = redis_store(redis_url, prefix), redis_store(redis_url, prefix)
    early: list[Event] = []
    seen_one, seen_two = Collector(), Collector()
    one.add_commit_listener(early.extend)
    one.add_listener(seen_one)
    two.add_listener(seen_two)
    for store in (one, two):
        await store.start()
        await store.serve(A)
    try:
        await one.add_sessions([session(f"s{i}") for i in range(1000)])
        committed: list[Event] = []
        for round_ in range(12):  # small calls' echoes tend to win, large calls' answers
            size = 1 if round_ % 2 else 1000
            results = await one.commit([commit(A, f"s{i}", None) for i in range(size)])
            committed += [e for r in results for e in r.events]
        results = await two.commit([commit(A, "s0", None)])
        committed += [e for r in results for e in r.events]

        for collector in (seen_one, seen_two):
            received = await collector.wait_for(len(committed))
            assert summary(received) == summary(committed)
        assert {e.seq for e in early} <= {e.seq for e in committed[:-1]}
    finally:
        for store in (one, two):
            await store.close()


async def test_redis_a_hall_size_commit_answers_its_caller_before_its_fan_out(
    redis_url: str,
) -> None:
    """Answer first, then the hall (state/handoff.py): the events of a 300-session commit reach
    the commit listeners (the hub) after the caller has its results, every one and in order;
    a handful still goes at once. (Here the process does not serve the exam, as when a REST
    command lands on another node than the exam's candidates: no echo can race the reply.)"""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    store = redis_store(redis_url, prefix)
    order: list[str] = []
    handed: list[Event] = []
    all_handed = asyncio.Event()

    def fan_out(events: list[Event]) -> None:
        order.append(f"fan-out {len(events)}")
        handed.extend(events)
        all_handed.set()

    store.add_commit_listener(fan_out)
    await store.start()
    try:
        await store.add_sessions([session(f"s{i}") for i in range(300)])
        few = await store.commit([commit(A, f"s{i}", 0) for i in range(3)])
        order.append("answered 3")
        all_handed.clear()
        hall = await store.commit([commit(A, f"s{i}", 0) for i in range(3, 300)])
        order.append("answered 297")
        await asyncio.wait_for(all_handed.wait(), timeout=10)
        assert order == ["fan-out 3", "answered 3", "answered 297", "fan-out 297"]
        committed = [e for r in few + hall for e in r.events]
        assert [e.seq for e in handed] == [e.seq for e in committed] == list(range(1, 301))
    finally:
        await store.close()


class EchoFirst:
    """Makes the echo of a store's commit reach it before Redis's answer does: the answer is
    held until the subscription has the message in hand (or, with `fail`, the call then
    fails, as when the connection drops after the script ran)."""

    def __init__(self, store: RedisStore, monkeypatch: pytest.MonkeyPatch,
                 fail: bool = False) -> None:
        self.echoed = asyncio.Event()
        self.decoded = 0
        deliver, run, decode = store._deliver, redis_module._run_batches, redis_module.decode_events

        async def first_the_echo(message: bytes) -> None:
            self.echoed.set()
            await deliver(message)

        async def answer_late(client: Any, script: Any, calls: Any) -> list[Any]:
            replies = await run(client, script, calls)
            if script is store._commit_script:
                await self.echoed.wait()
                if fail:
                    raise ConnectionError("lost after the script ran")
            return replies

        def counted(first: int, blobs: bytes) -> list[Event]:
            self.decoded += 1
            return decode(first, blobs)

        monkeypatch.setattr(store, "_deliver", first_the_echo)
        monkeypatch.setattr(redis_module, "_run_batches", answer_late)
        monkeypatch.setattr(redis_module, "decode_events", counted)


class EchoHeld:
    """Makes the echo of a store's commit reach it after Redis's answer but before the
    hand-off's turn: the answer is held until the subscription has the message in hand, and
    the message until `go_on` is set."""

    def __init__(self, store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.in_hand, self.go_on = asyncio.Event(), asyncio.Event()
        deliver, run = store._deliver, redis_module._run_batches

        async def held(message: bytes) -> None:
            self.in_hand.set()
            await self.go_on.wait()
            await deliver(message)

        async def answer_once_the_echo_is_in_hand(client: Any, script: Any,
                                                  calls: Any) -> list[Any]:
            replies = await run(client, script, calls)
            if script is store._commit_script:
                await self.in_hand.wait()
            return replies

        monkeypatch.setattr(store, "_deliver", held)
        monkeypatch.setattr(redis_module, "_run_batches", answer_once_the_echo_is_in_hand)


@pytest.mark.parametrize("echo", ["beats the answer", "just after the answer"])
async def test_redis_a_hall_size_echo_near_the_answer_waits_for_the_hand_off(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, echo: str
) -> None:
    """Answer first, then the hall, also where the process serves the exam and the echo of a
    600-session commit arrives before Redis's answer, or is read after the answer but before
    the hand-off's turn: the caller has its results first, then the commit listeners (the
    hub's frames), then the event listeners, which get the answer's own events (an echo that
    beat the answer is not decoded), every one once and in order."""
    store = redis_store(redis_url, f"t{uuid.uuid4().hex[:12]}:")
    order: list[str] = []
    heard = Collector()

    def listener(received: Event) -> None:
        if not heard.events:
            order.append("listeners")
        heard(received)

    store.add_listener(listener)
    store.add_commit_listener(lambda events: order.append(f"fan-out {len(events)}"))
    await store.start()
    await store.serve(A)
    try:
        await store.add_sessions([session(f"s{i}") for i in range(601)])
        await store.commit([commit(A, "s600", 0)])  # heard: the process follows the exam
        await heard.wait_for(1)
        heard.events.clear()
        order.clear()
        first = EchoFirst(store, monkeypatch) if echo == "beats the answer" else None
        held = EchoHeld(store, monkeypatch) if echo == "just after the answer" else None
        results = await store.commit([commit(A, f"s{i}", 0) for i in range(600)])
        order.append("answered")
        if held is not None:
            # the echo goes on in the next turn, the hand-off's fan-out in the one after
            held.go_on.set()
        received = await heard.wait_for(600)
        committed = [e for r in results for e in r.events]
        assert order == ["answered", "fan-out 600", "listeners"]
        assert [e.seq for e in received] == list(range(2, 602))
        assert all(got is sent for got, sent in zip(received, committed, strict=True))
        if first is not None:
            assert first.decoded == 0
    finally:
        await store.close()


async def test_redis_the_subscription_hands_messages_on_without_making_text_of_them(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's own handler of a pub/sub message (RESP3, its default protocol) builds
    `"Push response: " + str(message)` for a debug line, logged or not: for the ~1 MiB echo
    of a "pause all" of 5,000, a repr of every byte on the event loop. The store's
    subscription hands each message on as read: the echo of a hall-size commit is heard, and
    redis-py's handler never ran."""
    texts: list[int] = []

    async def as_text(self: Any, response: Any) -> Any:
        texts.append(len(str(response)))
        return response

    for parser in (hiredis_parsers._AsyncHiredisParser, resp3_parsers._AsyncRESP3Parser):
        monkeypatch.setattr(parser, "handle_pubsub_push_response", as_text)
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    other, store = redis_store(redis_url, prefix), redis_store(redis_url, prefix)
    heard = Collector()
    store.add_listener(heard)
    await store.start()
    await other.start()
    await store.serve(A)
    try:
        await other.add_sessions([session(f"s{i}") for i in range(600)])
        await other.commit([commit(A, f"s{i}", 0) for i in range(600)])  # not its own: decoded
        received = await heard.wait_for(600)
        assert [(e.session_id, e.seq) for e in received] == [
            (f"s{i}", i + 1) for i in range(600)]
        assert texts == []
    finally:
        await other.close()
        await store.close()


async def test_redis_an_echo_waiting_for_a_failed_answer_is_decoded(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the call whose echo waits for its answer fails after the script ran (outcome unknown
    to the caller), the echo is decoded and its listeners still get every event."""
    store = redis_store(redis_url, f"t{uuid.uuid4().hex[:12]}:")
    heard = Collector()
    store.add_listener(heard)
    await store.start()
    await store.serve(A)
    try:
        await store.add_sessions([session(f"s{i}") for i in range(600)])
        echo = EchoFirst(store, monkeypatch, fail=True)
        with pytest.raises(ConnectionError):
            await store.commit([commit(A, f"s{i}", 0) for i in range(600)])
        received = await heard.wait_for(600)
        assert [(e.session_id, e.seq) for e in received] == [
            (f"s{i}", i + 1) for i in range(600)]
        assert echo.decoded == 1
    finally:
        await store.close()


async def test_redis_a_claim_lets_the_loop_run_while_it_decodes(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drainer's claim decodes a large batch in slices with turns of the event loop between
    them, so work ready meanwhile (deliveries) does not wait for the whole batch."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    store = redis_store(redis_url, prefix)
    await store.start()
    try:
        await store.add_sessions([session(f"s{i}") for i in range(1000)])
        await store.commit([commit(A, f"s{i}", 0) for i in range(1000)])
        decoded = 0
        decoded_when_the_loop_ran: list[int] = []
        real = Event.from_dict

        def from_dict(data: dict[str, Any]) -> Event:
            nonlocal decoded
            if decoded == 0:  # ready to run from the first event decoded on
                asyncio.get_running_loop().call_soon(
                    lambda: decoded_when_the_loop_ran.append(decoded))
            decoded += 1
            return real(data)

        monkeypatch.setattr(Event, "from_dict", staticmethod(from_dict))
        entries = await store.outbox_claim(A, "drainer", 200, lease=5.0)
        assert entries is not None
        assert [e.seq for entry in entries for e in entry.events] == list(range(1, 1001))
        assert decoded == 1000
        assert decoded_when_the_loop_ran and decoded_when_the_loop_ran[0] < 1000
    finally:
        await store.close()


async def test_redis_a_process_hears_only_the_exams_it_serves(redis_url: str) -> None:
    """Fan-out by exam: a process subscribes to an exam's channel while it serves the exam
    (from the moment `serve` returns) and hears nothing of the others."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    listener, writer = redis_store(redis_url, prefix), redis_store(redis_url, prefix)
    seen = Collector()
    listener.add_listener(seen)
    for store in (listener, writer):
        await store.start()
    try:
        await writer.add_sessions([session("s1"), session("s1", B)])
        await writer.commit([commit(B, "s1", 0)])  # served by nobody: heard by nobody
        await listener.serve(A)
        await writer.commit([commit(A, "s1", 0), commit(B, "s1", 1)])
        [heard] = await seen.wait_for(1)
        assert (heard.exam_id, heard.seq) == (A, 1)
        health = listener.subscription_health()
        assert (health["exams_served"], health["events_received"]) == (1, 1)

        await listener.serve(B)
        await writer.commit([commit(B, "s1", 2)])
        assert [(e.exam_id, e.seq) for e in await seen.wait_for(2)] == [(A, 1), (B, 3)]

        listener.release(A, linger=0.0)  # the last holder of A left
        await eventually(lambda: listener.subscription_health()["exams_served"] == 1)
        await eventually(lambda: f"{prefix}{{{A}}}:events" not in listener._channels)
        await writer.commit([commit(A, "s1", 1), commit(B, "s1", 3)])
        assert [(e.exam_id, e.seq) for e in await seen.wait_for(3)][-1] == (B, 4)
        assert len(seen.events) == 3  # A's second commit was not heard
    finally:
        for store in (listener, writer):
            await store.close()


async def test_redis_failing_listener_does_not_stop_delivery(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One buggy listener must not cost the process its subscription or the other listeners."""

    def broken(received: Event) -> None:
        raise RuntimeError("boom")

    async def broken_later(received: Event) -> None:
        raise RuntimeError("boom, later")

    store = redis_store(redis_url, f"t{uuid.uuid4().hex[:12]}:")
    seen = Collector()
    for listener in (broken, broken_later, seen):
        store.add_listener(listener)
    await store.start()
    await store.serve(A)
    try:
        await store.add_sessions([session("s1")])
        await store.commit([commit(A, "s1", 0, events=2)])
        assert [e.seq for e in await seen.wait_for(2)] == [1, 2]
        assert store.subscriptions == 1
        assert sum("listener" in r.message for r in caplog.records) == 4
    finally:
        await store.close()


def crash_and_start(server: RedisServer) -> None:
    server.kill()
    server.start()


@pytest.mark.parametrize("outage", [RedisServer.restart, crash_and_start], ids=["restart", "crash"])
async def test_redis_listener_survives_an_outage(outage: Callable[[RedisServer], None]) -> None:
    with RedisServer() as server:
        store = redis_store(server.url, "t:")
        seen = Collector()
        store.add_listener(seen)
        await store.start()
        await store.serve(A)
        try:
            await store.add_sessions([session("s1")])
            await store.commit([commit(A, "s1", 0)])
            await seen.wait_for(1)
            subscriptions = store.subscriptions

            outage(server)  # all data is gone, and so is the script cache
            await asyncio.wait_for(store.wait_subscribed(subscriptions + 1), timeout=30)

            await store.add_sessions([session("s1")])
            [result] = await store.commit([commit(A, "s1", 0)])
            assert result.ok and result.events[0].seq == 1
            received = await seen.wait_for(2)
            assert [(e.session_id, e.seq) for e in received] == [("s1", 1), ("s1", 1)]
        finally:
            await store.close()


async def test_redis_another_process_hears_only_the_events_that_applied(redis_url: str) -> None:
    """The published message of a call whose commits partly fail carries the events of those
    that applied, as the outbox entry does."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    one, two = redis_store(redis_url, prefix), redis_store(redis_url, prefix)
    heard = Collector()
    two.add_listener(heard)
    for store in (one, two):
        await store.start()
    await two.serve(A)
    try:
        await one.add_sessions([session("s1"), session("s2")])
        results = await one.commit([commit(A, "s1", 3, events=2), commit(A, "s1", 0, events=1),
                                    commit(A, "s2", 4, events=1), commit(A, "s2", 0, events=2),
                                    commit(A, "ghost", None, events=1)])
        assert [r.ok for r in results] == [False, True, False, True, False]
        applied = [e for r in results for e in r.events]
        assert summary(await heard.wait_for(3)) == summary(applied)
        [third] = await one.commit([commit(A, "s1", 1)])  # nothing more came before it
        assert [e.seq for e in await heard.wait_for(4)] == [1, 2, 3, third.events[0].seq]
    finally:
        for store in (one, two):
            await store.close()


async def test_redis_a_session_hash_gone_or_without_the_fields_checked(redis_url: str) -> None:
    """A session whose hash was deleted after the decision (Redis lost the exam) is not found,
    whatever the kind of commit, and the others of the call apply. A hash that exists but has
    none of the fields a commit compares is found: its guard or version fails (the script
    reads the compared fields, and asks whether the hash exists only when none is there)."""
    store = redis_store(redis_url, f"t{uuid.uuid4().hex[:12]}:")
    await store.start()
    try:
        await store.add_sessions([session("s1", conn_id="c1"), session("s2", conn_id="c1")])
        client = store._client
        await client.delete(store.keys.session(A, "s1"))
        await client.hdel(store.keys.session(A, "s2"), "conn_id", "version")

        def guarded(sid: str, **changes: Any) -> Commit:
            c = commit(A, sid, None, **changes)
            c.guard = {"conn_id": "c1"}
            return c

        results = await store.commit([
            commit(A, "s1", 0, status="paused"), guarded("s1", position=1),
            commit(A, "s1", None), Commit(A, "s1", 0, check_only=True),
            commit(A, "s2", 0, status="paused"), guarded("s2", position=1),
            Commit(A, "s2", 0, check_only=True), commit(A, "s2", None),
        ])
        assert [(r.ok, r.found, r.guard_failed) for r in results] == [
            (False, False, False)] * 4 + [
            (False, True, False), (False, True, True), (False, True, False), (True, True, False)]
        assert await client.exists(store.keys.session(A, "s1")) == 0  # nothing re-created
        assert [e.seq for e in results[7].events] == [1]
    finally:
        await store.close()


def test_keys_of_one_exam_share_a_cluster_slot() -> None:
    keys = Keys("rt:")
    names = [keys.session(A, "s1"), keys.session(A, "s2"), keys.sessions(A), keys.seq(A),
             keys.outbox(A), keys.drain_state(A), keys.drain_lease(A),
             keys.candidates(A), keys.command(A, 'c'), keys.session_prefix(A) + "x"]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert keys.session(A, "s1") == "rt:{exam-a}:s:s1"
    assert keys.seq(B) != keys.seq(A)
