"""Guest accounts in-process (SQLite and PostgreSQL): reservation, one-time passwords, and
reassignment moving every row in one transaction, or nothing when it fails midway."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal
from realtime.db.database import Database
from realtime.db.models import Base, EventRow, IrregularityRow, SessionRow
from realtime.drainer import Drainer
from realtime.errors import Unauthorized
from realtime.guests import models as guest_models
from realtime.guests.models import GuestAccountRow, GuestUseRow
from realtime.guests.service import GuestDetails, GuestError, GuestService
from realtime.identity import models as identity_models
from realtime.identity.audit import AuditLog, Ctx
from realtime.identity.models import AuditRow, UserRow
from realtime.identity.roles import RoleSet
from realtime.identity.service import IdentityService
from realtime.sessions import SessionService, Target
from realtime.state import machine
from realtime.state.memory import MemoryStore
from realtime.state.model import Action, Exam, ExamSettings

assert guest_models and identity_models  # tables for create_all

SECRET = "guest-test-secret"
ADMIN = Principal(id="boss", name="Boss", kind="staff", permissions=ALL_PERMISSIONS)
DETAILS = GuestDetails(title="Ms", first_name="Ada", surname="Lovelace",
                       student_number="S-1815", email="ada@example.org")


@dataclass
class Parts:
    db: Database
    store: MemoryStore
    drainer: Drainer
    sessions: SessionService
    identity: IdentityService
    guests: GuestService


@pytest.fixture
async def parts(sql_url: str) -> AsyncIterator[Parts]:
    db = await Database.connect(sql_url)
    async with db.engine.begin() as conn:  # PostgreSQL is shared by the module: start empty
        await conn.run_sync(Base.metadata.drop_all)
    await db.create_all()
    store = MemoryStore()
    sessions = SessionService(store, db, machine.Liveness())
    drainer = Drainer(store, db)
    store.add_listener(drainer.on_event)
    sessions.catch_up = drainer.catch_up
    drainer.start()
    identity = IdentityService(
        db, RoleSet.default(), AuditLog(db),
        hasher=PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1),
    )
    guests = GuestService(db, identity, sessions, store, SECRET)
    yield Parts(db, store, drainer, sessions, identity, guests)
    await drainer.close()
    await db.close()


async def _exam(parts: Parts, exam_id: str = "e1") -> Exam:
    exam = Exam(id=exam_id, title="Exam", groups=["A"],
                settings=ExamSettings(allow_guests=True, lab_networks=["127.0.0.0/8"]))
    await parts.sessions.create_exam(exam)
    return exam


async def _sit(parts: Parts, exam: Exam) -> tuple[Any, str, str]:
    """Reserve, log in, open, answer, report an irregularity, terminate: a finished guest."""
    reservation = await parts.guests.reserve(exam, DETAILS, "127.0.0.1")
    login = await parts.identity.login(reservation.login, reservation.password)
    principal = await parts.identity.principal(login.token)
    assert principal is not None and principal.kind == "candidate"
    sid = await parts.sessions.session_for_candidate(exam.id, principal)
    actor = f"candidate:{principal.id}"
    await parts.sessions.open(exam.id, sid, "conn-1", actor)
    now = time.time()
    await parts.sessions.candidate_update(
        exam.id, sid, lambda s: machine.report_progress(s, "conn-1", actor, 4, 3, now)
    )
    await parts.sessions.report_irregularity(exam.id, sid, ADMIN, "phone", "seen with a phone")
    await parts.sessions.report_irregularity(exam.id, sid, ADMIN, "talking", "")
    return reservation, sid, login.token


async def _end(parts: Parts, exam_id: str, sid: str) -> None:
    result = await parts.sessions.command(exam_id, Action.TERMINATE, Target(session_ids=[sid]),
                                          ADMIN)
    assert result.applied, result.skipped


async def _rows(parts: Parts) -> dict[str, Any]:
    """Every row the reassignment may touch, as plain data (once SQL has caught up)."""
    await parts.drainer.drain_all()
    out: dict[str, Any] = {}
    async with parts.db._read() as s:
        for name, table in (("sessions", SessionRow), ("events", EventRow),
                            ("irregularities", IrregularityRow), ("users", UserRow),
                            ("accounts", GuestAccountRow), ("uses", GuestUseRow),
                            ("audit", AuditRow)):
            rows = (await s.execute(select(table.__table__))).mappings().all()  # type: ignore[attr-defined]
            out[name] = sorted((dict(r) for r in rows), key=repr)
    return out


async def test_reserve_takes_the_lowest_free_and_never_repeats_a_password(parts: Parts) -> None:
    await parts.guests.resize(Ctx("test"), 3)
    exam = await _exam(parts)
    first = await parts.guests.reserve(exam, DETAILS)
    second = await parts.guests.reserve(exam, DETAILS)
    assert (first.login, second.login) == ("guest1", "guest2")
    # A free account cannot log in at all.
    with pytest.raises(Unauthorized):
        await parts.identity.login("guest3", "mud-art-list-pace")
    seen = {first.password}
    for _ in range(3):  # release and reserve guest1 again: a new password each time
        await parts.guests.release(Ctx("test"), "guest1")
        with pytest.raises(Unauthorized):
            await parts.identity.login("guest1", first.password)
        again = await parts.guests.reserve(exam, DETAILS)
        assert again.login == "guest1"
        assert again.password not in seen
        seen.add(again.password)
        with pytest.raises(Unauthorized):
            await parts.identity.login("guest1", first.password)
        assert (await parts.identity.login("guest1", again.password)).token
        first = again
    await parts.guests.reserve(exam, DETAILS)
    with pytest.raises(GuestError) as refused:
        await parts.guests.reserve(exam, DETAILS)
    assert refused.value.guest_code == "no_guest_free"


async def test_reassignment_moves_every_row(parts: Parts) -> None:
    await parts.guests.resize(Ctx("test"), 2)
    exam = await _exam(parts)
    reservation, sid, token = await _sit(parts, exam)
    with pytest.raises(GuestError) as busy:
        await parts.guests.reassign(exam.id, sid, ADMIN, "real-7", "Ada Real")
    assert busy.value.guest_code == "guest_session_active"
    await _end(parts, exam.id, sid)
    [listed] = await parts.guests.guest_sessions(exam.id, ADMIN)
    assert listed["account"] == "guest1" and listed["guest"]["surname"] == "Lovelace"
    before = await _rows(parts)
    guest_id = reservation.user_id
    history_before = [e for e in before["events"] if e["session_id"] == sid]
    assert any(e["actor"] == f"candidate:{guest_id}" for e in history_before)

    result = await parts.guests.reassign(exam.id, sid, ADMIN, "real-7", "Ada Real")
    assert result["account_released"] and result["events_moved"] == len(history_before)
    after = await _rows(parts)
    [row] = [r for r in after["sessions"] if r["id"] == sid]
    assert (row["candidate_id"], row["candidate_name"], row["group"]) == ("real-7", "Ada Real",
                                                                         "A")
    assert row["state"]["candidate_id"] == "real-7" and row["state"]["answered"] == 3
    history = sorted((e for e in after["events"] if e["session_id"] == sid),
                     key=lambda e: e["seq"])
    assert len(history) == len(history_before) + 1
    for ev in history[:-1]:  # every old row moved
        assert ev["details"]["guest_account"] == "guest1"
        assert ev["actor"] != f"candidate:{guest_id}"
        assert guest_id not in repr(ev["changes"])
        if "candidate_id" in ev["changes"]:
            assert ev["changes"]["candidate_id"] == "real-7"
    last = history[-1]
    assert last["kind"] == "reassigned" and last["actor"] == "staff:boss"
    assert last["details"]["from_candidate_id"] == guest_id
    assert last["details"]["guest"]["student_number"] == "S-1815"
    assert last["seq"] > history[-2]["seq"]
    irregularities = [i for i in after["irregularities"] if i["session_id"] == sid]
    assert len(irregularities) == 2 and irregularities == [
        i for i in before["irregularities"] if i["session_id"] == sid
    ]
    assert [i["id"] for i in await parts.sessions.irregularities(exam.id)] != []
    # the audit record, and the account released
    [audit] = [a for a in after["audit"] if a["action"] == "guest_reassigned"]
    assert audit["actor"] == "staff:boss" and audit["subject"] == f"session:{sid}"
    assert audit["details"]["guest_account"] == "guest1"
    assert audit["details"]["to"]["candidate_id"] == "real-7"
    [account] = [a for a in after["accounts"] if a["login"] == "guest1"]
    assert account["status"] == "free" and account["surname"] is None
    [user] = [u for u in after["users"] if u["id"] == guest_id]
    assert user["password_hash"] is None and user["status"] == "deactivated"
    with pytest.raises(Unauthorized):
        await parts.identity.login("guest1", reservation.password)
    assert await parts.identity.principal(token) is None
    # the live copy
    live = await parts.sessions.get_session(exam.id, sid)
    assert (live["candidate_id"], live["candidate_name"]) == ("real-7", "Ada Real")
    assert await parts.guests.guest_sessions(exam.id, ADMIN) == []
    # the durable copy is the one a rebuilt store would read
    assert (await parts.db.find_session(exam.id, "real-7") or {})["id"] == sid


@pytest.mark.parametrize("stage", ["session_moved", "history_moved", "account_released",
                                   "audited"])
async def test_reassignment_failing_midway_changes_nothing(parts: Parts, stage: str) -> None:
    await parts.guests.resize(Ctx("test"), 1)
    exam = await _exam(parts)
    reservation, sid, token = await _sit(parts, exam)
    await _end(parts, exam.id, sid)
    before = await _rows(parts)

    async def boom(at: str) -> None:
        if at == stage:
            raise RuntimeError(f"injected failure after {at}")

    parts.guests.checkpoint = boom
    with pytest.raises(RuntimeError, match="injected"):
        await parts.guests.reassign(exam.id, sid, ADMIN, "real-7", "Ada Real")
    assert await _rows(parts) == before
    live = await parts.sessions.get_session(exam.id, sid)
    assert live["candidate_id"] == reservation.user_id
    assert await parts.identity.principal(token) is not None  # the guest was not released
    parts.guests.checkpoint = lambda at: _noop()
    await parts.guests.reassign(exam.id, sid, ADMIN, "real-7", "Ada Real")


async def _noop() -> None:
    return None


async def test_reassignment_refused_when_the_candidate_has_a_session(parts: Parts) -> None:
    await parts.guests.resize(Ctx("test"), 1)
    exam = await _exam(parts)
    _, sid, _ = await _sit(parts, exam)
    await _end(parts, exam.id, sid)
    await parts.sessions.create_sessions(exam.id, [{"candidate_id": "real-7"}], "test")
    before = await _rows(parts)
    with pytest.raises(GuestError) as refused:
        await parts.guests.reassign(exam.id, sid, ADMIN, "real-7")
    assert (refused.value.status, refused.value.guest_code) == (409, "candidate_has_session")
    assert await _rows(parts) == before
