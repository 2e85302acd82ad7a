"""No ghosts: a session marked disconnected while its socket still holds it comes back."""

from __future__ import annotations

import asyncio

from realtime.db.database import Database
from realtime.sessions import SessionService
from realtime.state import machine
from realtime.state.model import Event, Exam
from realtime.state.store import StateStore


async def test_the_heartbeat_marks_a_still_held_session_connected_again(
    store: StateStore, db: Database
) -> None:
    """A sweeper (of another process, during an outage) marked these sessions disconnected;
    their sockets are still here, so the next heartbeat gives them back, with an event."""
    seen: list[Event] = []
    arrived = asyncio.Event()

    def listen(event: Event) -> None:
        seen.append(event)
        if event.kind == "reconnected" and event.details.get("reason"):
            arrived.set()

    store.add_listener(listen)
    await store.serve("e1")
    service = SessionService(store, db, machine.Liveness(stale_after=0.5))
    exam = await service.create_exam(Exam(id="e1", title="Exam"))
    sessions = await service.create_sessions(
        exam.id, [{"candidate_id": f"c{i}"} for i in range(3)], "staff:t"
    )
    ids = [s["id"] for s in sessions]
    for i, sid in enumerate(ids):
        await service.open(exam.id, sid, f"conn-{i}", "")
    lost_at = service.clock() + 60  # long after: every holder looks stale
    outcomes = await service._mutate(
        exam.id, ids[:2], lambda s: machine.expire_holder(s, lost_at, service.liveness)
    )
    assert all(isinstance(o, machine.Transition) for o, _ in outcomes.values())

    # Session 0 is still held by conn-0; session 1's socket went elsewhere (conn-x).
    await service.touch([(exam.id, ids[0], "conn-0"), (exam.id, ids[1], "conn-x"),
                         (exam.id, ids[2], "conn-2")])

    first, second, third = await store.get_sessions(exam.id, ids)
    assert first is not None and first["connected"] is True
    assert second is not None and second["connected"] is False
    assert third is not None and third["connected"] is True
    await asyncio.wait_for(arrived.wait(), 10)  # Redis delivers through its subscription
    back = [e for e in seen if e.kind == "reconnected" and e.details.get("reason")]
    assert [(e.session_id, e.details["reason"]) for e in back] == [(ids[0], "still connected")]


async def test_a_late_refresh_never_gets_a_session_held_here_swept(
    store: StateStore, db: Database
) -> None:
    """A process starved of CPU refreshes `last_seen` late: its own sweeper must not report
    the candidates it still holds open as dropped. A stale holder held elsewhere is swept."""
    now = [1_000.0]
    service = SessionService(store, db, machine.Liveness(stale_after=1.0), clock=lambda: now[0])
    exam = await service.create_exam(Exam(id="e-late", title="Exam"))
    sessions = await service.create_sessions(
        exam.id, [{"candidate_id": f"c{i}"} for i in range(2)], "staff:t"
    )
    ids = [s["id"] for s in sessions]
    for i, sid in enumerate(ids):
        await service.open(exam.id, sid, f"conn-{i}", "")
    now[0] += 30  # no refresh for far longer than stale_after: both holders look stale

    def held_here(session_id: str, conn_id: str) -> bool:
        return (session_id, conn_id) == (ids[0], "conn-0")

    sweeps: list[dict[str, int]] = []
    service.on_sweep = sweeps.append  # realtime_stale_holders_total{outcome}
    assert await service.sweep_stale(exam.id, held_here) == 1
    assert sweeps == [{"disconnected": 1, "held_here": 1, "changed": 0}]
    held, elsewhere = await store.get_sessions(exam.id, ids)
    assert held is not None and held["connected"] is True and held["incidents"] == 0
    assert elsewhere is not None and elsewhere["connected"] is False
    history = await store.events_since(exam.id, 0)
    assert history is not None
    assert [e.session_id for e in history if e.kind == "disconnected"] == [ids[1]]
    assert await service.sweep_stale(exam.id, held_here) == 0  # still held, still stale
    assert sweeps[1:] == [{"disconnected": 0, "held_here": 1, "changed": 0}]
