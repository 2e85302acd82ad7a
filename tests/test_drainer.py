"""The drainer writes each exam's outbox to SQL: in order, idempotently, only then acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from clients import eventually
from sqlalchemy import text

from realtime import bulk
from realtime.db.database import Database
from realtime.drainer import GATHER, GATHER_MAX, HOLD_MAX, SUSTAINED, Drainer
from realtime.state.memory import MemoryStore
from realtime.state.model import Event, Exam, new_session
from realtime.state.store import Commit, StateStore

EXAM = "e1"


async def _exam(db: Database, store: StateStore, count: int = 2) -> None:
    exam = Exam(id=EXAM, title="Exam")
    await db.save_exam(exam)
    sessions = [new_session(id=f"s{i}", exam_id=EXAM, candidate_id=f"c{i}") for i in range(count)]
    await db.add_sessions(sessions)
    await store.add_sessions(sessions)
    await store.put_exam(exam)


def _event(sid: str, kind: str = "progress", **details: Any) -> Event:
    return Event(exam_id=EXAM, session_id=sid, kind=kind, actor="candidate:c", at=1000.5,
                 details=details, changes={"position": details.get("n", 0)})


async def _commit(store: StateStore, *events: Event) -> list[Event]:
    results = await store.commit([Commit(EXAM, e.session_id, None, {}, [e]) for e in events])
    return [e for r in results for e in r.events]


async def test_drained_history_equals_the_event_log(db: Database, store: StateStore) -> None:
    await _exam(db, store)
    committed = await _commit(store, *(_event(f"s{i % 2}", n=i) for i in range(30)))
    await store.append_audit(EXAM, [{"at": 5.0, "actor": "staff:1", "ip": "", "subject": "x",
                                     "action": "session_command", "details": {"n": 1}}])
    drainer = Drainer(store, db)
    await drainer.drain_all()

    stored = await db.exam_events(EXAM)
    assert [(e.seq, e.session_id, e.kind) for e in stored] == [
        (e.seq, e.session_id, e.kind) for e in committed
    ]
    assert drainer.written == 30 and drainer.backlog.events == 0
    assert (await store.outbox_backlog(now=2000.0)).events == 0
    state = await db.get_session_row("s1")
    assert state is not None and state["position"] == 29


async def test_a_crash_between_sql_and_acknowledgement_writes_nothing_twice(
    db: Database, store: StateStore
) -> None:
    """The entries were written but never acknowledged: the next drainer claims them again;
    (exam, seq) keys make the second write a no-op."""
    await _exam(db, store)
    await _commit(store, _event("s0", n=1), _event("s1", n=2))
    dead = Drainer(store, db, consumer="dead")
    entries = await store.outbox_claim(EXAM, "dead", 100, lease=0.001)
    assert entries
    await dead.write(entries)  # ... and the process dies before acknowledging
    await _commit(store, _event("s0", n=3))

    survivor = Drainer(store, db, consumer="survivor")
    await survivor.drain_all()

    assert [e.seq for e in await db.exam_events(EXAM)] == [1, 2, 3]
    assert survivor.written == 1  # only the new one was new
    assert (await store.outbox_backlog(now=2000.0)).events == 0


async def test_a_commands_audit_row_kept_twice_is_stored_once(
    db: Database, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state store appended a command's audit row but its answer was lost, so the service
    also wrote the row to SQL directly (its fallback); the drainer then writes the outbox's
    copy, and a drainer that died before acknowledging leaves it to be written once more. The
    row carries its uid everywhere: one row in the audit log, as the command was."""
    from realtime.auth.permissions import ALL_PERMISSIONS
    from realtime.auth.principal import Principal
    from realtime.identity.audit import AuditLog
    from realtime.identity.audited import AuditedSessionService
    from realtime.sessions import Target
    from realtime.state import machine
    from realtime.state.model import Action

    await _exam(db, store)
    service = AuditedSessionService(store, db, machine.Liveness(15, 60))
    service.audit = AuditLog(db)
    append = store.append_audit

    async def appended_answer_lost(exam_id: str, rows: list[dict[str, Any]]) -> None:
        await append(exam_id, rows)
        raise ConnectionError("the answer of the append was lost")

    monkeypatch.setattr(store, "append_audit", appended_answer_lost)
    staff = Principal(id="p", name="p", kind="staff", permissions=ALL_PERMISSIONS)
    await service.command(EXAM, Action.NOTICE, Target(session_ids=["s1"]), staff,
                          {"command_id": "cmd-1", "text": "hello"})
    await service.settle()  # the append set off by the answer, and its fallback
    entries = await store.outbox_claim(EXAM, "dead", 100, lease=0.001)
    assert entries
    await Drainer(store, db, consumer="dead").write(entries)  # ... dies before acknowledging
    await Drainer(store, db, consumer="survivor").drain_all()
    rows = await service.audit.query(action="session_command")
    assert [r["details"]["command_id"] for r in rows] == ["cmd-1"]


@pytest.mark.parametrize("cut", ["before_the_append", "after_the_append"])
async def test_a_process_killed_around_a_commands_audit_row_loses_no_row_nor_doubles_it(
    db: Database, make_store: Any, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    """The process dies while a staff command's audit row is on its way to the outbox, the
    command applied: before the store appended the row, or after (its answer on its way
    back). The command must not have been answered then (an answer before the row is held
    lost the row of a command its issuer was told was applied); its retry with the same
    command_id through another process answers it, applies nothing twice, and holds the row:
    one row in the audit log either way, as the command was."""
    from realtime.auth.permissions import ALL_PERMISSIONS
    from realtime.auth.principal import Principal
    from realtime.identity.audit import AuditLog
    from realtime.identity.audited import AuditedSessionService
    from realtime.sessions import Target
    from realtime.state import machine
    from realtime.state.model import Action

    doomed_store: StateStore = await make_store()
    # the other process: its own store on the same Redis; the memory store is the process
    survivor_store = (await make_store() if doomed_store.outbox_survives_process
                      else doomed_store)
    await _exam(db, doomed_store)
    doomed = AuditedSessionService(doomed_store, db, machine.Liveness(15, 60))
    doomed.audit = AuditLog(db)
    append = doomed_store.append_audit
    reached, never = asyncio.Event(), asyncio.Event()

    async def killed_there(exam_id: str, rows: list[dict[str, Any]]) -> None:
        if cut == "after_the_append":
            await append(exam_id, rows)
        reached.set()
        await never.wait()  # the process is killed here: nothing of it runs on

    monkeypatch.setattr(doomed_store, "append_audit", killed_there)
    staff = Principal(id="p", name="p", kind="staff", permissions=ALL_PERMISSIONS)
    command = (EXAM, Action.NOTICE, Target(session_ids=["s1"]), staff,
               {"command_id": "cmd-1", "text": "hello"})
    call = asyncio.create_task(doomed.command(*command))
    await reached.wait()
    answered = call.done()
    doomed_tasks = [call, *doomed._tasks]
    for task in doomed_tasks:  # the kill
        task.cancel()
    await asyncio.gather(*doomed_tasks, return_exceptions=True)
    monkeypatch.undo()
    assert not answered, "answered before its audit row was held"

    survivor = AuditedSessionService(survivor_store, db, machine.Liveness(15, 60))
    survivor.audit = AuditLog(db)
    retry = await survivor.command(*command)
    assert [a["session_id"] for a in retry.applied] == ["s1"] and not retry.skipped
    await survivor.settle()
    await Drainer(survivor_store, db, consumer="survivor").drain_all()
    rows = await survivor.audit.query(action="session_command")
    assert [r["details"]["command_id"] for r in rows] == ["cmd-1"]
    assert rows[0]["details"]["applied"] == ["s1"]
    notices = [e for e in await db.exam_events(EXAM) if e.details.get("command_id") == "cmd-1"]
    assert [(e.session_id, e.seq) for e in notices] == [("s1", retry.applied[0]["seq"])]


async def test_irregularities_are_written_with_their_event(
    db: Database, store: StateStore
) -> None:
    await _exam(db, store)
    [event] = await _commit(store, _event("s0", "irregularity", category="phone", note="seen"))
    await Drainer(store, db).drain_all()
    await Drainer(store, db, consumer="again").drain_all()
    rows = await db.irregularities(EXAM)
    assert [(r["session_id"], r["category"], r["note"]) for r in rows] == [
        ("s0", "phone", "seen")
    ]
    assert rows[0]["id"] == f"{EXAM}:{event.seq}"


async def test_sql_down_keeps_everything_until_it_returns(
    db: Database, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _exam(db, store)
    await _commit(store, _event("s0", n=1))
    drainer = Drainer(store, db)
    original = db.write_outbox

    async def refused(*args: Any, **kwargs: Any) -> int:
        raise ConnectionRefusedError("SQL is down")

    monkeypatch.setattr(db, "write_outbox", refused)
    with pytest.raises(ConnectionRefusedError):
        await drainer.drain_exam(EXAM)
    await _commit(store, _event("s1", n=2))
    backlog = await drainer.refresh_backlog()
    assert backlog.events == 2 and backlog.oldest_at is not None

    monkeypatch.setattr(db, "write_outbox", original)
    await drainer.drain_all()
    assert [e.seq for e in await db.exam_events(EXAM)] == [1, 2]
    assert drainer.backlog.events == 0


async def test_what_arrives_during_a_round_waits_for_the_next_one(
    db: Database, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a steady flow each round used to claim again as soon as it had written, so a
    transaction carried the few events of a few milliseconds; now what arrived during a
    round is left for the next (after the drainer's pause), unless a claim came back full
    (a backlog: drained at once) or the caller drains until nothing is left."""
    await _exam(db, store)
    await _commit(store, _event("s0", n=1))
    drainer = Drainer(store, db)
    written: list[list[int]] = []
    arriving = [_event("s1", n=2)]  # arrives during the first write
    original = db.write_outbox

    async def write_while_more_arrive(events: Any, audit: Any, **kwargs: Any) -> int:
        written.append([e.seq for e in events])
        if arriving:
            await _commit(store, arriving.pop())
        return await original(events, audit, **kwargs)

    monkeypatch.setattr(db, "write_outbox", write_while_more_arrive)
    drainer.on_event(_event("s0"))
    assert await drainer.drain_dirty()
    assert written == [[1]]  # not claimed again in the same round
    assert await drainer.drain_dirty()  # the next round: the exam is still marked
    assert written == [[1], [2]]
    assert not await drainer.drain_dirty()  # nothing left: it rests until woken

    await _commit(store, _event("s0", n=3))
    written.clear()
    original_claim = store.outbox_claim
    claims: list[int] = []

    async def claim(*args: Any, **kwargs: Any) -> Any:
        entries = await original_claim(*args, **kwargs)
        claims.append(len(entries or []))
        if len(claims) == 1:
            await _commit(store, _event("s1", n=4))
        return entries

    monkeypatch.setattr(store, "outbox_claim", claim)
    await drainer.drain_all()  # shutdown and tests: until a claim finds nothing
    assert written == [[3], [4]] and claims == [1, 1, 0]
    assert [e.seq for e in await db.exam_events(EXAM)] == [1, 2, 3, 4]


@pytest.mark.parametrize("payload", ["events", "audit"])
async def test_a_read_catching_up_waits_for_the_drain_of_its_exam_in_flight(
    db: Database, store: StateStore, monkeypatch: pytest.MonkeyPatch, payload: str
) -> None:
    """The drainer's loop has claimed the exam's entries and its transaction is open (rows
    inserted, not committed) when a REST read catches the exam up. The read used to claim the
    same entries again (they are pending) and write them in a second transaction: events were
    safe (the second insert of (exam, seq) waits for the first), but audit rows, kept unique
    by a NOT EXISTS that cannot see the other uncommitted row, were stored twice on
    PostgreSQL. Now the read waits for the drain in flight, then drains what is left, and
    returns with everything in SQL."""
    await _exam(db, store)
    audit = {"at": 5.0, "actor": "staff:1", "ip": "", "subject": "x",
             "action": "session_command", "details": {"n": 1}}
    if payload == "events":
        await _commit(store, _event("s0", n=1), _event("s1", n=2))
    else:
        await store.append_audit(EXAM, [audit])
    drainer = Drainer(store, db)
    inserted, release = asyncio.Event(), asyncio.Event()
    in_flight: list[str] = []  # drains of the exam past their claim, not yet acknowledged
    overlaps: list[int] = []  # claims made while another drain of the exam was in flight
    claim, ack = store.outbox_claim, store.outbox_ack
    add = db._add_events_in if payload == "events" else db._add_audit_in

    async def claiming(exam_id: str, *args: Any) -> Any:
        if in_flight:
            overlaps.append(len(in_flight))
            release.set()  # nothing waits: let the first drain finish
        entries = await claim(exam_id, *args)
        if entries:
            in_flight.append(exam_id)
        return entries

    async def acknowledging(exam_id: str, *args: Any) -> None:
        await ack(exam_id, *args)
        in_flight.remove(exam_id)

    async def held(conn: Any, rows: Any, *rest: Any) -> Any:
        result = await add(conn, rows, *rest)
        if not inserted.is_set():  # the first drain's rows are in, its transaction open
            inserted.set()
            await release.wait()
        return result

    monkeypatch.setattr(store, "outbox_claim", claiming)
    monkeypatch.setattr(store, "outbox_ack", acknowledging)
    monkeypatch.setattr(db, "_add_events_in" if payload == "events" else "_add_audit_in", held)

    first = asyncio.create_task(drainer.drain_exam(EXAM))  # the loop's round
    await inserted.wait()
    await _commit(store, _event("s0", n=3))  # more arrives meanwhile
    read = asyncio.create_task(drainer.catch_up(EXAM, timeout=30.0))
    await eventually(lambda: drainer.waited or overlaps or read.done())
    release.set()
    await read
    assert overlaps == []
    assert first.done() and not in_flight  # nothing of the exam is left in flight
    seqs = [e.seq for e in await db.exam_events(EXAM)]
    assert seqs == ([1, 2, 3] if payload == "events" else [1])
    async with db.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT count(*) FROM audit_log"))).scalar_one()
    assert stored == (1 if payload == "audit" else 0)
    assert await first == 1  # one outbox entry


async def test_memory_store_claims_hand_the_drainer_bounded_transactions(db: Database) -> None:
    """A backlog of bulk commits (a "pause all" commits thousands of events at once) reaches
    SQL in transactions of at most `CLAIM_EVENTS` events each, in order: the drainer's write of
    a claim runs partly on the event loop in one stretch, however many events the claim holds.
    Nothing is lost or reordered by the split."""
    from realtime.state.memory import CLAIM_EVENTS, MemoryStore

    store = MemoryStore()
    await _exam(db, store, count=3)
    bulk = 2 * CLAIM_EVENTS + 7
    committed = await _commit(store, *(_event(f"s{i % 3}", n=i) for i in range(bulk)))
    committed += await _commit(store, _event("s0", n=bulk))  # a small entry behind them
    writes: list[int] = []
    original = db.write_outbox

    async def write_outbox(events: Any, audit: Any, **kwargs: Any) -> int:
        writes.append(len(events) + len(audit))
        return await original(events, audit, **kwargs)

    db.write_outbox = write_outbox  # type: ignore[method-assign]
    drainer = Drainer(store, db)
    await drainer.drain_all()

    assert writes and max(writes) <= CLAIM_EVENTS
    assert sum(writes) == bulk + 1
    stored = await db.exam_events(EXAM, limit=bulk + 10)
    assert [(e.seq, e.session_id) for e in stored] == [(e.seq, e.session_id) for e in committed]
    assert (await store.outbox_backlog(now=2000.0)).events == 0
    state = await db.get_session_row("s0")
    assert state is not None and state["position"] == bulk

async def test_a_sustained_flow_is_gathered_longer_where_the_outbox_outlives_the_process(
    db: Database, store: StateStore
) -> None:
    """The drainer paused 50 ms before every round, so under a steady flow it paid a round's
    fixed cost (an SQL transaction, a claim and an acknowledgement) ~20 times a second
    whatever the rate. Now each round that found SUSTAINED rows a second doubles the next
    pause, up to GATHER_MAX, on a store whose outbox outlives the process (Redis): the same
    events in a fraction of the rounds. A light flow is back to GATHER's lag at once, and the
    memory store, whose outbox (the undrained tail) dies with the process, keeps it. Time is
    the flow's: each pause of the loop commits what the flow's rate would have meanwhile."""
    await _exam(db, store)
    heavy, light = 600, 60  # events at 400/s (20 per GATHER), then at 60/s (below SUSTAINED)
    pauses: list[float] = []
    light_pauses: list[float] = []
    sent = 0
    heavy_rounds = 0
    flowed = asyncio.Event()

    async def flow(seconds: float) -> None:
        nonlocal sent
        if sent < heavy:
            count = min(heavy - sent, round(400 * seconds))
        else:
            count = min(heavy + light - sent, round(60 * seconds))
        if count:
            await _commit(store, *(_event(f"s{n % 2}", n=n) for n in range(sent, sent + count)))
            sent += count

    async def sleep(seconds: float) -> None:
        nonlocal heavy_rounds
        pauses.append(seconds)
        if sent == heavy and not heavy_rounds:
            heavy_rounds = drainer.rounds  # every heavy event is written
        elif sent > heavy:
            light_pauses.append(seconds)  # decided by a round of the light flow
        await flow(seconds)
        if sent == heavy + light:
            flowed.set()
        await asyncio.sleep(0)

    drainer = Drainer(store, db, sleep=sleep)
    await flow(GATHER)  # the first rows, found by the loop's first look at the outboxes
    drainer.start()
    await asyncio.wait_for(flowed.wait(), 60)
    await drainer.close()
    assert [e.seq for e in await db.exam_events(EXAM)] == list(range(1, heavy + light + 1))
    fixed_rounds = heavy // round(400 * GATHER)  # 30: a round every GATHER
    if store.outbox_survives_process:  # Redis
        assert drainer.max_gather == GATHER_MAX
        assert max(pauses) == GATHER_MAX
        assert 0 < heavy_rounds <= fixed_rounds // 3
    else:  # the memory store
        assert drainer.max_gather == GATHER
        assert set(pauses) == {GATHER}
        assert heavy_rounds >= fixed_rounds - 1
    assert light_pauses and set(light_pauses) == {GATHER}


async def test_the_gather_doubles_while_the_flow_is_sustained(db: Database) -> None:
    drainer = Drainer(MemoryStore(), db, max_gather=GATHER_MAX)
    per_second = int(SUSTAINED)
    gathers = []
    for rows_a_second in (per_second, per_second, 10 * per_second, 10 * per_second,
                          per_second - 1, 0, per_second):
        drainer.gather = drainer.next_gather(int(rows_a_second * drainer.gather))
        gathers.append(drainer.gather)
    assert gathers == [2 * GATHER, 4 * GATHER, GATHER_MAX, GATHER_MAX, GATHER, GATHER,
                       2 * GATHER]
    assert Drainer(MemoryStore(), db, max_gather=0.0).max_gather == GATHER  # never below it
    assert Drainer(MemoryStore(), db).max_gather == GATHER  # its outbox dies with the process


async def _first_of(task: asyncio.Task[Any], event: asyncio.Event) -> None:
    """Until `task` is done or `event` is set, whichever comes first."""
    waiting = asyncio.create_task(event.wait())
    try:
        await asyncio.wait({task, waiting}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()


def _note_waits(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once something waits for the bulk changes in flight (the drainer giving way)."""
    waits = asyncio.Event()
    real = bulk.after_bulk_changes

    async def after_bulk_changes(*args: Any, **kwargs: Any) -> None:
        waits.set()
        await real(*args, **kwargs)

    monkeypatch.setattr(bulk, "after_bulk_changes", after_bulk_changes)
    return waits


async def test_a_round_gives_way_to_a_bulk_command_in_flight(
    db: Database, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "pause all" of 10,000 was slowed by the SQL write of the previous command's history
    (a second and more of it, run meanwhile). Now the loop's round waits to claim until the
    bulk command in flight is done, then drains everything as before."""
    await _exam(db, store)
    committed = await _commit(store, *(_event(f"s{n % 2}", n=n) for n in range(5)))
    drainer = Drainer(store, db, hold_max=3600.0)
    drainer.hold_linger = 0.0
    claims: list[int] = []
    claim = store.outbox_claim

    async def claiming(*args: Any) -> Any:
        entries = await claim(*args)
        claims.append(len(entries))
        return entries

    monkeypatch.setattr(store, "outbox_claim", claiming)
    waits = _note_waits(monkeypatch)
    drainer.on_event(committed[0])
    with bulk.bulk_change():
        round_ = asyncio.create_task(drainer.drain_dirty(give_way=True))
        await _first_of(round_, waits)
        assert waits.is_set() and not round_.done() and claims == []
    assert await round_
    assert [e.seq for e in await db.exam_events(EXAM)] == [e.seq for e in committed]
    assert drainer.holds == 1 and drainer.held > 0


async def test_a_write_in_flight_gives_way_between_its_slices(
    db: Database, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk command that starts while a round writes (its transaction open, rows sent in
    slices) finds the write waiting at its next slice until the command is done; the write
    then completes, all of it in one transaction as before."""
    import realtime.db.database

    monkeypatch.setattr(realtime.db.database, "WRITE_SLICE", 1)
    await _exam(db, store)
    committed = await _commit(store, *(_event(f"s{n % 2}", n=n) for n in range(3)))
    drainer = Drainer(store, db, hold_max=3600.0)
    drainer.hold_linger = 0.0
    waits = _note_waits(monkeypatch)
    command = contextlib.ExitStack()
    slices: list[int] = []
    event_rows = db._event_rows

    def rows(events: Any) -> Any:
        slices.append(len(events))
        if len(slices) == 1:
            command.enter_context(bulk.bulk_change())  # a "pause all" arrives
        return event_rows(events)

    monkeypatch.setattr(db, "_event_rows", rows)
    drainer.on_event(committed[0])
    with command:
        round_ = asyncio.create_task(drainer.drain_dirty(give_way=True))
        await _first_of(round_, waits)
        assert waits.is_set() and not round_.done() and slices == [1]
    assert await round_
    assert slices == [1, 1, 1]
    assert [e.seq for e in await db.exam_events(EXAM)] == [e.seq for e in committed]


async def test_a_round_gives_way_for_at_most_its_budget(db: Database, store: StateStore) -> None:
    """Bulk commands one after another, or a linger that never ends, do not hold history back
    for longer than the round's budget (`hold_max`): the lag stays bounded. Where the outbox
    dies with the process (the memory store) rounds do not give way at all, as its gather
    stays short: what waits there is what a crash loses."""
    await _exam(db, store)
    committed = await _commit(store, *(_event(f"s{n % 2}", n=n) for n in range(3)))
    survives = getattr(store, "outbox_survives_process", False)
    assert Drainer(store, db).hold_max == (HOLD_MAX if survives else 0.0)
    drainer = Drainer(store, db, hold_max=0.05)
    drainer.hold_linger = 3600.0  # after a command, as if its acks never ended
    drainer.on_event(committed[0])
    with bulk.bulk_change():
        assert await drainer.drain_dirty(give_way=True)  # within the command still
    assert [e.seq for e in await db.exam_events(EXAM)] == [e.seq for e in committed]
    assert drainer.holds >= 1


async def test_reads_and_shutdown_do_not_give_way(db: Database, store: StateStore) -> None:
    """A REST read catching its exam up, and the drain at shutdown, write at once whatever
    bulk command is in flight: they are waited for."""
    await _exam(db, store)
    committed = await _commit(store, *(_event(f"s{n % 2}", n=n) for n in range(3)))
    drainer = Drainer(store, db, hold_max=3600.0)
    with bulk.bulk_change():
        await drainer.catch_up(EXAM, timeout=3600.0)
        assert [e.seq for e in await db.exam_events(EXAM)] == [e.seq for e in committed[:3]]
        more = await _commit(store, _event("s0", n=9))
        await drainer.drain_all()
        assert [e.seq for e in await db.exam_events(EXAM)][-1] == more[0].seq
    assert drainer.holds == 0
