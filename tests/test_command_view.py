"""Staff commands decided on a process's copy of the sessions it serves (`command_view`, Redis).

The copy may be behind Redis: another process's change may not have reached this one yet. A
decision on it must never stand on a stale session: a change is a compare-and-set on the
version it was decided on, a decision not to change a session (a rejection, a target left out)
is a `check_only` commit of that version, and a command over the whole exam checks the exam
still has the sessions the copy knew. Those that fail are read and decided again. A retried
command id applies nothing twice and answers what was kept. Here, two `RedisStore`s on one
Redis stand for two server processes, and one of them is held deaf to the other on purpose.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from clients import eventually
from redis_server import RedisServer

from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal
from realtime.sessions import COMMAND_FIELDS, BulkResult, SessionService, Target
from realtime.state import machine
from realtime.state.model import Action, Event, Exam, new_session
from realtime.state.redis import RedisStore
from realtime.state.store import Commit

EXAM = "exam-v"
STAFF = Principal(id="staff", name="staff", kind="staff", permissions=ALL_PERMISSIONS)
LIVENESS = machine.Liveness(stale_after=15, resume_grace=60)


def active(sid: str, **fields: Any) -> dict[str, Any]:
    return new_session(id=sid, exam_id=EXAM, candidate_id=f"c-{sid}", candidate_name=sid,
                       access_code=f"code-{uuid.uuid4().hex[:10]}", status="active",
                       authorized=True, **fields)


class Process:
    """A server process: its store and its session service."""

    def __init__(self, url: str, prefix: str, commit_chunk: int = 0) -> None:
        self.store = RedisStore(url, prefix=prefix, commit_chunk=commit_chunk)
        self.service = SessionService(self.store, db=None,  # type: ignore[arg-type]
                                      liveness=LIVENESS)
        self.gate: asyncio.Event | None = None  # set: hears again

        async def hold(event: Event) -> None:  # a "deaf" marker stops its subscription
            if event.kind == "deaf" and self.gate is not None:
                await self.gate.wait()

        self.store.add_listener(hold)

    async def start(self) -> None:
        await self.store.start()
        await self.store.serve(EXAM)

    async def command(self, action: Action, target: Target, **params: Any) -> BulkResult:
        result = await self.service.command(EXAM, action, target, STAFF, params)
        await asyncio.gather(*self.service._tasks)  # the answer kept for retries
        return result

    async def view(self) -> dict[str, dict[str, Any]]:
        view = await self.store.command_view(EXAM, COMMAND_FIELDS, whole=True)
        assert view is not None
        return view

    async def sessions(self) -> dict[str, dict[str, Any]]:
        rows, _ = await self.store.snapshot(EXAM)
        return {row["id"]: row for row in rows}


@pytest.fixture(params=[0, 2], ids=["one call", "chunks of 2"])
async def two(redis_url: str, request: pytest.FixtureRequest
              ) -> AsyncIterator[tuple[Process, Process]]:
    """Two processes; with "chunks of 2" each commits an exam's commits of a store call 2 by 2
    (a command over 4 sessions: 2 or 3 script calls)."""
    prefix = f"v{uuid.uuid4().hex[:10]}:"
    one, other = Process(redis_url, prefix, request.param), Process(redis_url, prefix,
                                                                     request.param)
    await one.start()
    await other.start()
    try:
        await one.store.put_exam(Exam(id=EXAM, title="view"))
        await one.store.add_sessions([active(f"s{i}") for i in range(4)])
        yield one, other
    finally:
        await one.store.close()
        await other.store.close()


async def deafen(deaf: Process, by: Process) -> None:
    """From now on `deaf` hears nothing more (its subscription waits on its gate)."""
    deaf.gate = asyncio.Event()
    marker = Event(exam_id=EXAM, session_id="s0", kind="deaf", actor="test", at=0.0)
    [result] = await by.store.commit([Commit(EXAM, "s0", None, {}, [marker])])
    heard = result.events[0].seq
    await eventually(lambda: deaf.store._heard_seq.get(EXAM, 0) >= heard)


def in_copy(process: Process, sid: str, name: str) -> Any:
    """A field of a session as the process's copy has it now (None: not in a copy)."""
    view = process.store._views.get(EXAM)
    session = None if view is None or view.events is not None else view.sessions.get(sid)
    return None if session is None else session[name]


def applied(result: BulkResult) -> list[str]:
    return sorted(a["session_id"] for a in result.applied)


async def test_a_decision_on_a_stale_copy_is_refused_and_decided_again(
    two: tuple[Process, Process],
) -> None:
    one, other = two
    await one.view()
    await deafen(one, by=other)
    # another process changes sessions; `one` does not hear of it
    await other.command(Action.EXTEND, Target(session_ids=["s1"]), minutes=5)
    await other.command(Action.PAUSE, Target(session_ids=["s2"]))
    assert (await one.view())["s1"]["extra_minutes"] == 0  # stale indeed
    trips = one.store.command_round_trips

    # on the copy s1 would get 0 + 10 (losing the other's 5): its compare-and-set fails
    extended = await one.command(Action.EXTEND, Target(all=True), minutes=10)
    assert applied(extended) == ["s0", "s1", "s2", "s3"]
    # on the copy s2 is active and "resume all" would skip it: its check fails
    resumed = await one.command(Action.RESUME, Target(all=True))
    assert applied(resumed) == ["s2"]
    assert {s["session_id"] for s in resumed.skipped} == {"s0", "s1", "s3"}
    assert one.store.command_round_trips == trips  # no command read: decided on the copy

    sessions = await one.sessions()
    assert {sid: s["extra_minutes"] for sid, s in sessions.items()} == {
        "s0": 10, "s1": 15, "s2": 10, "s3": 10}
    assert {s["status"] for s in sessions.values()} == {"active"}

    one.gate.set()  # type: ignore[union-attr]
    # heard again: the copy catches up with every change, in order
    await eventually(lambda: in_copy(one, "s1", "version") == sessions["s1"]["version"])
    view = await one.view()
    assert {sid: {name: view[sid][name] for name in COMMAND_FIELDS} for sid in sessions} == {
        sid: {name: s[name] for name in COMMAND_FIELDS} for sid, s in sessions.items()}


async def test_a_session_the_copy_does_not_know_is_not_left_out(
    two: tuple[Process, Process],
) -> None:
    one, other = two
    await one.view()
    await deafen(one, by=other)
    await other.store.add_sessions([active("s9")])  # created elsewhere, unheard here
    paused = await one.command(Action.PAUSE, Target(all=True))
    assert applied(paused) == ["s0", "s1", "s2", "s3", "s9"]
    assert EXAM not in one.store._views  # incomplete: made again from Redis next time
    one.gate.set()  # type: ignore[union-attr]
    assert "s9" in await one.view()


async def test_a_change_from_another_process_is_respected(
    two: tuple[Process, Process],
) -> None:
    one, other = two
    await one.view()
    await other.command(Action.PAUSE, Target(session_ids=["s3"]))
    await eventually(lambda: in_copy(one, "s3", "status") == "paused")
    result = await one.command(Action.PAUSE, Target(session_ids=["s0", "s3"]))
    assert applied(result) == ["s0"]
    assert [s["reason"] for s in result.skipped] == ["invalid_status"]


async def test_a_retried_command_id_applies_once_and_answers_the_first_answer(
    two: tuple[Process, Process],
) -> None:
    one, other = two
    await one.view()
    target = Target(session_ids=["s1", "s2"])
    first = await one.command(Action.PAUSE, target, command_id="p-1")
    assert applied(first) == ["s1", "s2"]
    await eventually(lambda: in_copy(one, "s2", "status") == "paused")
    # on the copy both are paused now: a new command would be skipped; the retry is refused
    # by the store (the id is known) and answered from what was kept
    assert await one.command(Action.PAUSE, target, command_id="p-1") == first
    assert await other.command(Action.PAUSE, target, command_id="p-1") == first
    again = await one.command(Action.PAUSE, Target(all=True), command_id="p-1")
    assert again == first

    # cut off half-way: applied, but its answer never kept; the retry applies nothing twice
    extend = await one.command(Action.EXTEND, target, minutes=5, command_id="x-1")
    await one.store._client.delete(one.store.keys.command_result(EXAM, "x-1"))
    retry = await one.command(Action.EXTEND, target, minutes=5, command_id="x-1")
    assert retry.applied == extend.applied  # the same sessions, the same first seqs
    sessions = await one.sessions()
    assert [sessions[sid]["extra_minutes"] for sid in ("s0", "s1", "s2")] == [0, 5, 5]
    events = await one.store.events_since(EXAM, 0)
    assert events is not None
    assert sorted(e.session_id for e in events if e.kind == "pause") == ["s1", "s2"]
    assert sorted(e.session_id for e in events if e.kind == "extend") == ["s1", "s2"]


async def test_the_copy_is_dropped_when_the_subscription_is_made_again() -> None:
    """Redis restarted and came back with a session at the same version but other content (as
    an older copy of its data could): a copy kept across the outage would decide on what Redis
    no longer holds. It is dropped with the subscription and made again."""
    with RedisServer() as server:
        one = Process(server.url, "r:")
        await one.start()
        try:
            await one.store.put_exam(Exam(id=EXAM, title="view"))
            await one.store.add_sessions([active("s1")])
            await one.view()
            assert applied(await one.command(Action.PAUSE, Target(all=True))) == ["s1"]
            await eventually(lambda: in_copy(one, "s1", "version") == 1)
            subscriptions = one.store.subscriptions

            server.restart()  # every key gone
            await asyncio.wait_for(one.store.wait_subscribed(subscriptions + 1), timeout=30)
            assert EXAM not in one.store._views
            await one.store.put_exam(Exam(id=EXAM, title="view"))
            await one.store.add_sessions([active("s1", version=1)])
            await one.store.serve(EXAM)  # its channel confirmed again

            paused = await one.command(Action.PAUSE, Target(all=True))
            assert applied(paused) == ["s1"]  # a copy from before would say "paused"
            assert one.store.views_made == 2
        finally:
            await one.store.close()



async def test_commands_arriving_together_read_the_exam_once_for_the_copy(
    two: tuple[Process, Process],
) -> None:
    """Targeted commands arriving together, before the copy exists: the first starts making
    it, the others find it being made (and go the read way). One snapshot of the exam is
    taken, not one per command (each a whole-exam read that holds Redis, all but the last
    thrown away)."""
    one, _ = two
    snapshots = 0
    snapshot = one.store._view_slices

    async def counted(exam_id: str, fields: tuple[str, ...]) -> Any:
        nonlocal snapshots
        snapshots += 1
        return await snapshot(exam_id, fields)

    one.store._view_slices = counted  # type: ignore[method-assign]
    first = await asyncio.gather(*(
        one.store.command_view(EXAM, COMMAND_FIELDS, whole=False) for _ in range(4)
    ))
    assert first == [None] * 4  # being made
    await eventually(lambda: one.store.views_made >= 1)
    await asyncio.gather(*one.store._view_tasks)
    assert snapshots == 1
    assert one.store.views_made == 1
    view = await one.store.command_view(EXAM, COMMAND_FIELDS, whole=False)
    assert view is not None and sorted(view) == [f"s{i}" for i in range(4)]
    assert snapshots == 1

    results = await asyncio.gather(*(  # commands together on the copy: still that one
        one.command(Action.PAUSE, Target(session_ids=[f"s{i}"])) for i in range(4)
    ))
    assert [applied(result) for result in results] == [[f"s{i}"] for i in range(4)]
    await eventually(lambda: all(in_copy(one, f"s{i}", "status") == "paused" for i in range(4)))
    assert snapshots == 1


async def test_the_copy_of_a_large_exam_is_read_in_slices_while_it_changes(
    two: tuple[Process, Process],
) -> None:
    """An exam larger than a slice: the copy is read slice by slice (never the whole exam in
    one script call, which held Redis for every command waiting on it), while another process
    changes sessions between the slices, some read before their change and some after. The
    copy made is the exam as it is once those changes are heard, and decides on it."""
    one, other = two
    await one.store.add_sessions([active(f"x{i}") for i in range(1200)])
    slices: list[list[str]] = []
    script = one.store._view_script

    async def sliced(**kwargs: Any) -> Any:
        reply = await script(**kwargs)
        slices.append([row[0] for row in orjson.loads(reply[2])])
        if len(slices) == 1:  # changes once the first slice is read
            unread = next(f"x{i}" for i in range(1200) if f"x{i}" not in slices[0])
            read = next(sid for sid in slices[0] if sid.startswith("x"))
            for sid in (read, unread):
                assert applied(await other.command(Action.PAUSE, Target(session_ids=[sid]))) \
                    == [sid]
            assert applied(await other.command(Action.RESUME, Target(session_ids=[unread]))) \
                == [unread]
            changed.update({read: ("paused", 1), unread: ("active", 2)})
        return reply

    changed: dict[str, tuple[str, int]] = {}
    one.store._view_script = sliced  # type: ignore[assignment]
    view = await one.view()
    assert len(slices) > 1
    assert len(view) == 1204
    stored = await one.sessions()
    await eventually(lambda: all(
        in_copy(one, sid, "version") == version for sid, (_, version) in changed.items()))
    for sid, (status, version) in changed.items():
        assert (in_copy(one, sid, "status"), in_copy(one, sid, "version")) == (status, version)
        assert (stored[sid]["status"], stored[sid]["version"]) == (status, version)
    for sid, session in view.items():  # every field of every session as Redis has it
        assert session == {name: stored[sid][name] for name in COMMAND_FIELDS}, sid
    paused = await one.command(Action.PAUSE, Target(status=["active"]))
    assert len(paused.applied) == 1204 - 1
    assert one.store.views_made == 1


async def warm_process(url: str, sessions: int) -> Process:
    """A process made as the server makes it (`warm_views`), its store started, an exam of
    `sessions` sessions in Redis and none of them served here yet."""
    one = Process(url, f"w{uuid.uuid4().hex[:10]}:")
    one.store.warm_views(COMMAND_FIELDS)
    await one.store.start()
    await one.store.put_exam(Exam(id=EXAM, title="warm"))
    await one.store.add_sessions([active(f"s{i}") for i in range(sessions)])
    return one


def count_reads(process: Process) -> list[str]:
    """Whole-exam reads from now on: "slice" per view_slice.lua call, "snapshot" per
    snapshot.lua call."""
    reads: list[str] = []
    slice_script, snapshot_script = process.store._view_script, process.store._snapshot_script

    async def slice_counted(**kwargs: Any) -> Any:
        reads.append("slice")
        return await slice_script(**kwargs)

    async def snapshot_counted(**kwargs: Any) -> Any:
        reads.append("snapshot")
        return await snapshot_script(**kwargs)

    process.store._view_script = slice_counted  # type: ignore[assignment]
    process.store._snapshot_script = snapshot_counted  # type: ignore[assignment]
    return reads


async def test_the_copy_is_made_as_the_exam_starts_being_served(redis_url: str) -> None:
    """The first socket of an exam on a process (`serve`) starts its copy in the background,
    with no staff command; the first commands then decide on it and read no session. Once per
    start of serving: another holder or a drop does not make it again (the next command does)."""
    one = await warm_process(redis_url, 1200)
    try:
        reads = count_reads(one)
        await one.store.serve(EXAM)  # a candidate's socket: the exam is served here now
        assert EXAM in one.store._views  # registered at once: commands from now on share it
        await asyncio.gather(*one.store._view_tasks)
        assert one.store.command_copies() == {"made": 1, "reads": 1, "warmed": 1}
        assert len(reads) > 1 and set(reads) == {"slice"}  # 1,200 sessions, ~500 a slice
        reads.clear()

        trips = one.store.command_round_trips
        assert applied(await one.command(Action.PAUSE, Target(session_ids=["s1"]))) == ["s1"]
        assert one.store.command_round_trips == trips  # decided on the copy: no command read
        extended = await one.command(Action.EXTEND, Target(all=True), minutes=5)
        assert len(extended.applied) == 1200
        assert reads == []  # no whole-exam read for the first commands
        assert one.store.command_copies() == {"made": 1, "reads": 1, "warmed": 1}

        await one.store.serve(EXAM)  # a second holder: not a start of serving
        one.store.forget_view(EXAM)  # dropped: not warmed again, made by the next command
        await one.store.serve(EXAM)
        assert EXAM not in one.store._views
        assert one.store.views_warmed == 1
        resumed = await one.command(Action.RESUME, Target(all=True))
        assert applied(resumed) == ["s1"]
        assert one.store.command_copies() == {"made": 2, "reads": 2, "warmed": 1}
    finally:
        await one.store.close()


async def test_commands_arriving_while_the_copy_is_warmed_share_it(redis_url: str) -> None:
    """Commands arriving while the copy started by `serve` is being made find it being made:
    they are decided on a read (as before), none makes a copy of its own, and the copy made
    brings in what they changed meanwhile."""
    one = await warm_process(redis_url, 1200)
    try:
        reads = count_reads(one)
        first_slice, go_on = asyncio.Event(), asyncio.Event()
        counted = one.store._view_script

        async def held(**kwargs: Any) -> Any:
            reply = await counted(**kwargs)
            if not first_slice.is_set():  # the warm-up waits after its first slice
                first_slice.set()
                await go_on.wait()
            return reply

        one.store._view_script = held  # type: ignore[assignment]
        await one.store.serve(EXAM)
        await asyncio.wait_for(first_slice.wait(), timeout=10)

        assert await one.store.command_view(EXAM, COMMAND_FIELDS, whole=True) is None
        assert await one.store.command_view(EXAM, COMMAND_FIELDS, whole=False) is None
        trips = one.store.command_round_trips
        assert applied(await one.command(Action.PAUSE, Target(session_ids=["s1"]))) == ["s1"]
        assert one.store.command_round_trips > trips  # decided on a read
        extended = await one.command(Action.EXTEND, Target(all=True), minutes=5)
        assert len(extended.applied) == 1200
        assert reads == ["slice", "snapshot"]  # the warm-up's first slice; the bulk's read

        go_on.set()
        await asyncio.gather(*one.store._view_tasks)
        assert one.store.command_copies() == {"made": 1, "reads": 1, "warmed": 1}
        assert reads.count("slice") > 1 and reads.count("snapshot") == 1
        view = await one.view()
        stored = await one.sessions()
        await eventually(lambda: all(
            in_copy(one, sid, "version") == s["version"] for sid, s in stored.items()))
        for sid, session in view.items():
            assert session == {name: stored[sid][name] for name in COMMAND_FIELDS}, sid
        assert view["s1"]["status"] == "paused"
        assert {s["extra_minutes"] for s in view.values()} == {5}
    finally:
        await one.store.close()


class _Presence:
    """Holders on the node "gone" stopped beating."""

    def holder_alive(self, conn_id: str) -> bool:
        return not conn_id.startswith("gone-")


@pytest.mark.parametrize("action", [Action.TERMINATE, Action.PAUSE, Action.RESUME])
async def test_a_command_answered_from_the_copy_answers_as_one_decided_on_a_read(
    redis_url: str, action: Action
) -> None:
    """A command decided on the copy and committed as decided is answered straight from its
    decisions (`SessionService._answer`, no per-session outcomes), the same answer entry for
    entry as the same command decided on a read: applied in order with its seq and its
    delivery as decided on (a terminate disconnects the sessions: a holder connected then was
    sent it; one on a node that stopped beating was not), the others skipped in order."""
    store = RedisStore(redis_url, prefix=f"v{uuid.uuid4().hex[:10]}:")
    service = SessionService(store, db=None, liveness=LIVENESS)  # type: ignore[arg-type]
    service.presence = _Presence()  # type: ignore[assignment]
    on_copy, on_read = "exam-copy", "exam-read"  # alike; only the first is served here
    await store.start()
    try:
        for exam_id in (on_copy, on_read):
            await store.put_exam(Exam(id=exam_id, title=exam_id))
            await store.add_sessions([
                new_session(id=sid, exam_id=exam_id, candidate_id=f"c-{sid}",
                            candidate_name=sid, access_code=f"code-{uuid.uuid4().hex[:10]}",
                            status=status, authorized=True, connected=connected,
                            conn_id=conn_id)
                for sid, status, connected, conn_id in [
                    ("s0", "active", True, "here-0"), ("s1", "active", False, ""),
                    ("s2", "paused", True, "here-2"), ("s3", "completed", False, ""),
                    ("s4", "active", True, "gone-4"), ("s5", "paused", False, "here-5"),
                    ("s6", "active", True, "here-6")]])
        await store.serve(on_copy)
        assert await store.command_view(on_copy, COMMAND_FIELDS, whole=True)
        read = service._decide_on_read
        reads: list[str] = []

        async def counted(exam: Exam, *args: Any) -> Any:
            reads.append(exam.id)
            return await read(exam, *args)

        service._decide_on_read = counted  # type: ignore[method-assign]
        answers = []
        for target in (Target(session_ids=["s6", "s3", "s0", "s2"]), Target(all=True)):
            both = []
            for exam_id in (on_copy, on_read):
                result = await service.command(exam_id, action, target, STAFF,
                                               {"command_id": f"cmd-{len(answers)}"})
                both.append((result.applied, result.skipped))
            assert reads == [on_read] * (len(answers) + 1)
            if target.all:  # each in the order it has them (the copy's, the snapshot's)
                order = list(await store.command_view(on_copy, COMMAND_FIELDS, whole=True)
                             or ())
                for entries in both[0]:
                    ids = [entry["session_id"] for entry in entries]
                    assert ids == [sid for sid in order if sid in ids]
                for applied_, _ in both:  # seqs in that order, then alike but for it
                    seqs = [entry.pop("seq") for entry in applied_]
                    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
                both = [tuple(sorted(entries, key=lambda e: e["session_id"])
                              for entries in answer) for answer in both]
            assert both[0] == both[1]
            answers.append(both[0])
        assert answers[0][0] and answers[0][1]  # some applied, some skipped
        if action is Action.TERMINATE:
            assert [(a["session_id"], a["delivery"]) for a in answers[0][0]] == [
                ("s6", "sent"), ("s0", "sent"), ("s2", "sent")]
    finally:
        await store.close()
