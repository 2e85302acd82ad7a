"""The guest pool: accounts, reservation, release and reassignment of guest sessions.

A guest account is an identity user with the candidate role and login `guestK`. While free it is
deactivated and has no password, so it cannot log in. Reserving one (from a lab computer while an
exam that allows guests is live) claims the lowest free account in one SQL statement
(`FOR UPDATE SKIP LOCKED` on PostgreSQL, a conditional UPDATE under SQLite's single writer), so
two candidates never get the same account however many processes serve them; then the account
gets a fresh one-time password and is activated. After the exam, staff reassign each guest
session to the real candidate in one SQL transaction, which also releases the account.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from realtime.auth.principal import Principal
from realtime.db.database import Database
from realtime.db.models import EventRow, IrregularityRow, SessionRow
from realtime.errors import BadRequest, ErrorCode, Forbidden, NotFound, RealtimeError
from realtime.guests import passwords
from realtime.guests.models import (
    FREE,
    RESERVED,
    RETIRED,
    GuestAccountRow,
    GuestPasswordRow,
    GuestUseRow,
)
from realtime.identity import scope
from realtime.identity.audit import Ctx
from realtime.identity.models import AuditRow, AuthTokenRow, LoginFailureRow, UserRow
from realtime.identity.roles import CANDIDATE
from realtime.identity.service import ACTIVE, DEACTIVATED, EMAIL, IdentityService
from realtime.sessions import SessionService
from realtime.state.model import Event, Exam, Status
from realtime.state.store import StateStore

log = logging.getLogger(__name__)

GUEST_EMAIL_DOMAIN = "guests.invalid"
MAX_POOL = 10_000
REASSIGNED = "reassigned"
BUSY = frozenset({Status.ACTIVE.value, Status.PAUSED.value, Status.AWAITING.value})
TITLE_MAX, NAME_MAX, NUMBER_MAX = 32, 100, 64
CANDIDATE_ID = re.compile(r"^[^\s]{1,128}$")
# Reservations in progress at once in one process; the others wait their turn. A lab's burst
# (every computer at once) would otherwise queue each of its SQL steps behind the whole burst on
# the connection pool (15 connections by default), past its 30 s timeout on a busy machine,
# and starve the rest of the server (drainer, webhooks, logins) of connections meanwhile.
RESERVE_CONCURRENCY = 8


class GuestError(RealtimeError):
    """A refusal with its own error code (e.g. `no_guest_free`), shown as `error.code`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, {409: ErrorCode.CONFLICT, 403: ErrorCode.FORBIDDEN}.get(
            status, ErrorCode.INVALID))
        self.status = status
        self.guest_code = code


def no_guest_free() -> GuestError:
    return GuestError(409, "no_guest_free", "no guest account is free; ask a supervisor")


@dataclass(frozen=True, slots=True)
class GuestDetails:
    """What the candidate types when reserving."""

    title: str
    first_name: str
    surname: str
    student_number: str = ""
    email: str = ""

    @classmethod
    def parse(cls, body: dict[str, Any]) -> GuestDetails:
        def text(key: str, limit: int, required: bool) -> str:
            value = body.get(key)
            if value is None and not required:
                return ""
            if not isinstance(value, str) or len(value.strip()) > limit or (
                required and not value.strip()
            ):
                need = "is required" if required else "must be a string"
                raise BadRequest(f"'{key}' {need} (at most {limit} characters)")
            return value.strip()

        email = text("email", 320, False)
        if email and not EMAIL.match(email):
            raise BadRequest("'email' must be a valid e-mail address")
        return cls(
            title=text("title", TITLE_MAX, True),
            first_name=text("first_name", NAME_MAX, True),
            surname=text("surname", NAME_MAX, True),
            student_number=text("student_number", NUMBER_MAX, False),
            email=email.lower(),
        )

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.surname}"

    def to_dict(self) -> dict[str, str]:
        return {
            "title": self.title,
            "first_name": self.first_name,
            "surname": self.surname,
            "student_number": self.student_number,
            "email": self.email,
        }


@dataclass(frozen=True, slots=True)
class Reservation:
    number: int
    login: str
    password: str
    user_id: str
    use_id: str
    exam_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "login": self.login,
            "password": self.password,
            "account": self.number,
            "exam_id": self.exam_id,
        }


def _guest_details_dict(row: GuestAccountRow | GuestUseRow) -> dict[str, Any]:
    """The details the guest gave (GuestDetails' fields), as an account or a use shows them;
    an account's are None while it is free."""
    return {
        "title": row.title,
        "first_name": row.first_name,
        "surname": row.surname,
        "student_number": row.student_number,
        "email": row.email,
    }


def _account_dict(row: GuestAccountRow) -> dict[str, Any]:
    return {
        "number": row.number,
        "login": row.login,
        "user_id": row.user_id,
        "status": row.status,
        "exam_id": row.exam_id,
        **_guest_details_dict(row),
        "reserved_at": row.reserved_at,
        "released_at": row.released_at,
    }


def _use_dict(row: GuestUseRow) -> dict[str, Any]:
    return {
        "use_id": row.id,
        "account": row.number,
        "login": row.login,
        "exam_id": row.exam_id,
        **_guest_details_dict(row),
        "ip": row.ip,
        "reserved_at": row.reserved_at,
        "released_at": row.released_at,
    }


def _clear(row: GuestAccountRow, now: float) -> None:
    row.status = FREE
    row.use_id = row.exam_id = row.title = row.first_name = row.surname = None
    row.student_number = row.email = row.reserved_at = None
    row.released_at = now


async def _no_checkpoint(stage: str) -> None:
    return None


class GuestService:
    def __init__(
        self,
        db: Database,
        identity: IdentityService,
        sessions: SessionService,
        store: StateStore,
        secret: str,
        clock: Callable[[], float] = time.time,
        forget_tokens: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.identity = identity
        self.sessions = sessions
        self.store = store
        self.secret = secret
        self.clock = clock
        self.forget_tokens = forget_tokens or (lambda: None)  # drop cached token lookups
        # Called between the steps of a reassignment, inside its transaction; tests raise here
        # to prove that nothing is half-moved.
        self.checkpoint: Callable[[str], Awaitable[None]] = _no_checkpoint
        self._reserving = asyncio.Semaphore(RESERVE_CONCURRENCY)

    # -- the pool ----------------------------------------------------------------------------

    async def resize(self, ctx: Ctx, size: int, shrink: bool = True) -> dict[str, Any]:
        """Make `guest1..guest{size}` usable: create missing accounts, bring retired ones
        back; with `shrink`, retire free accounts above `size` (refused while one is reserved).
        """
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_POOL:
            raise BadRequest(f"the pool size must be an integer 0..{MAX_POOL}")
        now = self.clock()
        created = retired = revived = 0
        try:
            async with self.db._write() as session:
                rows = {
                    r.number: r
                    for r in await session.scalars(
                        select(GuestAccountRow).order_by(GuestAccountRow.number).with_for_update()
                    )
                }
                if shrink:
                    busy = [r.login for n, r in rows.items() if n > size and r.status == RESERVED]
                    if busy:
                        raise GuestError(409, "guest_reserved",
                                         f"reserved accounts above {size}: {', '.join(busy[:10])}")
                missing = [k for k in range(1, size + 1) if k not in rows]
                if missing:
                    await self._check_free_names(session, missing)
                    users = [self._guest_user(k, now) for k in missing]
                    await session.execute(insert(UserRow), users)
                    await session.execute(
                        insert(GuestAccountRow),
                        [{"number": k, "user_id": u["id"], "login": u["login"], "status": FREE}
                         for k, u in zip(missing, users, strict=True)],
                    )
                    created = len(missing)
                for number, row in rows.items():
                    if number <= size and row.status == RETIRED:
                        row.status, revived = FREE, revived + 1
                    elif shrink and number > size and row.status == FREE:
                        row.status, retired = RETIRED, retired + 1
        except IntegrityError as exc:
            raise GuestError(409, "conflict", "the pool changed meanwhile; try again") from exc
        await self.identity.audit.record(
            ctx, "guest_pool_resized", "guests", size=size, created=created, retired=retired,
            revived=revived,
        )
        return {**await self.status(), "created": created, "retired": retired,
                "revived": revived}

    async def _check_free_names(self, session: AsyncSession, numbers: list[int]) -> None:
        logins = [f"guest{k}" for k in numbers]
        emails = [f"guest{k}@{GUEST_EMAIL_DOMAIN}" for k in numbers]
        clash = await session.scalar(
            select(UserRow.login).where(UserRow.login.in_(logins) | UserRow.email.in_(emails))
        )
        if clash is not None:
            raise GuestError(409, "conflict", f"a non-guest user already has the login {clash!r}")

    @staticmethod
    def _guest_user(number: int, now: float) -> dict[str, Any]:
        return {
            "id": uuid.uuid4().hex[:16],
            "full_name": f"Guest {number}",
            "email": f"guest{number}@{GUEST_EMAIL_DOMAIN}",
            "login": f"guest{number}",
            "job_title": "",
            "phone": "",
            "roles": [CANDIDATE],
            "groups": [],
            "status": DEACTIVATED,
            "password_hash": None,
            "activation_hash": None,
            "activation_expires_at": None,
            "created_at": now,
            "activated_at": None,
            "deactivated_at": now,
            "last_login_at": None,
            "last_logout_at": None,
        }

    async def list_accounts(self, status: str | None = None) -> list[dict[str, Any]]:
        stmt = select(GuestAccountRow).order_by(GuestAccountRow.number)
        if status:
            stmt = stmt.where(GuestAccountRow.status == status)
        async with self.db._read() as session:
            return [_account_dict(r) for r in await session.scalars(stmt)]

    async def status(self) -> dict[str, Any]:
        async with self.db._read() as session:
            rows = await session.execute(
                select(GuestAccountRow.status, func.count()).group_by(GuestAccountRow.status)
            )
            counts: dict[str, int] = {status: count for status, count in rows}
        size = counts.get(FREE, 0) + counts.get(RESERVED, 0)
        return {"size": size, "free": counts.get(FREE, 0), "reserved": counts.get(RESERVED, 0),
                "retired": counts.get(RETIRED, 0)}

    async def guest_user_ids(self) -> dict[str, str]:
        """user id -> login of every guest account."""
        async with self.db._read() as session:
            rows = await session.execute(select(GuestAccountRow.user_id, GuestAccountRow.login))
            return {user_id: login for user_id, login in rows}

    # -- reserving ---------------------------------------------------------------------------

    async def reserve(self, exam: Exam, details: GuestDetails, ip: str = "") -> Reservation:
        """Claim the lowest free account for `exam` and give it a fresh password.

        The exam and address checks are the caller's (they need the request). Raises
        `no_guest_free` (409) when every account is taken. At most `RESERVE_CONCURRENCY`
        run at once in a process; the others wait for their turn, not for a connection.
        """
        async with self._reserving:
            return await self._reserve(exam, details, ip)

    async def _reserve(self, exam: Exam, details: GuestDetails, ip: str) -> Reservation:
        now = self.clock()
        claimed = await self._claim(exam, details, ip, now)
        if claimed is None:
            raise no_guest_free()
        number, user_id, login, use_id = claimed
        try:
            password = await self._fresh_password(number)
            hashed = await asyncio.to_thread(self.identity.hasher.hash, password)
            async with self.db._write() as session:
                await session.execute(
                    update(UserRow)
                    .where(UserRow.id == user_id)
                    .values(password_hash=hashed, status=ACTIVE, activated_at=now,
                            deactivated_at=None, full_name=details.full_name[:200],
                            groups=list(exam.groups))
                )
                await session.execute(delete(LoginFailureRow).where(LoginFailureRow.key == user_id))
                fingerprint = passwords.digest(self.secret, number, password)
                session.add(GuestPasswordRow(number=number, at=now, digest=fingerprint))
        except BaseException:
            log.exception("guest %s: could not set the password; releasing it", login)
            await asyncio.shield(self._release_claim(number, use_id))
            raise
        await self.identity.audit.record(
            Ctx("anonymous", ip), "guest_reserved", f"user:{user_id}", account=login,
            exam_id=exam.id, **details.to_dict(),
        )
        return Reservation(number, login, password, user_id, use_id, exam.id)

    async def _claim(
        self, exam: Exam, details: GuestDetails, ip: str, now: float
    ) -> tuple[int, str, str, str] | None:
        """Mark the lowest free account reserved (the first thing done); None if none is free."""
        for attempt in range(100):
            use_id = uuid.uuid4().hex
            lowest = (
                select(GuestAccountRow.number)
                .where(GuestAccountRow.status == FREE)
                .order_by(GuestAccountRow.number)
                .limit(1)
                .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer anyway
                .scalar_subquery()
            )
            claim = (
                update(GuestAccountRow)
                .where(GuestAccountRow.number == lowest, GuestAccountRow.status == FREE)
                .values(status=RESERVED, use_id=use_id, exam_id=exam.id, reserved_at=now,
                        released_at=None, **details.to_dict())
                .returning(GuestAccountRow.number, GuestAccountRow.user_id, GuestAccountRow.login)
                .execution_options(synchronize_session=False)
            )
            async with self.db._write() as session:
                found = (await session.execute(claim)).first()
                if found is not None:
                    number, user_id, login = found
                    session.add(GuestUseRow(id=use_id, number=number, user_id=user_id,
                                            login=login, exam_id=exam.id, ip=ip[:64],
                                            reserved_at=now, **details.to_dict()))
                    return number, user_id, login, use_id
                free = await session.scalar(
                    select(func.count()).where(GuestAccountRow.status == FREE)
                )
            if not free:
                return None
            # Free rows exist but were all locked by other claims: they may roll back.
            await asyncio.sleep(min(0.005 * (attempt + 1), 0.05))
        return None

    async def _fresh_password(self, number: int) -> str:
        async with self.db._read() as session:
            used = set(
                await session.scalars(
                    select(GuestPasswordRow.digest).where(GuestPasswordRow.number == number)
                )
            )
        while True:
            password = passwords.new_password()
            if passwords.digest(self.secret, number, password) not in used:
                return password

    async def _release_claim(self, number: int, use_id: str) -> None:
        now = self.clock()
        async with self.db._write() as session:
            row = await session.get(GuestAccountRow, number, with_for_update=True)
            if row is not None and row.use_id == use_id:
                await self._disable_user(session, row.user_id, row.number, now)
                _clear(row, now)
            await session.execute(
                update(GuestUseRow).where(GuestUseRow.id == use_id).values(released_at=now)
            )

    async def _disable_user(
        self, session: AsyncSession, user_id: str, number: int, now: float
    ) -> None:
        """No password, deactivated, every login token revoked: it cannot log in."""
        await session.execute(
            update(UserRow)
            .where(UserRow.id == user_id)
            .values(password_hash=None, status=DEACTIVATED, deactivated_at=now,
                    full_name=f"Guest {number}", groups=[])
        )
        await session.execute(
            update(AuthTokenRow)
            .where(AuthTokenRow.user_id == user_id, AuthTokenRow.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await session.execute(delete(LoginFailureRow).where(LoginFailureRow.key == user_id))

    # -- releasing ---------------------------------------------------------------------------

    async def _account(self, session: AsyncSession, login: str, lock: bool) -> GuestAccountRow:
        stmt = select(GuestAccountRow).where(GuestAccountRow.login == login.strip().lower())
        if lock:
            stmt = stmt.with_for_update()
        row = await session.scalar(stmt)
        if row is None:
            raise NotFound(f"no guest account {login!r}")
        return row

    async def release(self, ctx: Ctx, login: str) -> dict[str, Any]:
        """Free a reserved account that holds no session (e.g. reserved but never used)."""
        now = self.clock()
        async with self.db._write() as session:
            row = await self._account(session, login, lock=True)
            if row.status != RESERVED:
                raise GuestError(409, "not_reserved", f"{row.login} is {row.status}")
            held = list(
                await session.scalars(
                    select(SessionRow.id).where(SessionRow.candidate_id == row.user_id)
                )
            )
            if held:
                raise GuestError(
                    409, "guest_session_pending",
                    f"{row.login} holds session(s) {', '.join(held[:5])}: reassign them first",
                )
            use_id = row.use_id
            await self._disable_user(session, row.user_id, row.number, now)
            _clear(row, now)
            if use_id:
                await session.execute(
                    update(GuestUseRow).where(GuestUseRow.id == use_id).values(released_at=now)
                )
            out = _account_dict(row)
        self.forget_tokens()
        await self.identity.audit.record(ctx, "guest_released", f"user:{out['user_id']}",
                                         account=out["login"])
        return out

    # -- after the exam ----------------------------------------------------------------------

    async def guest_sessions(self, exam_id: str, principal: Principal) -> list[dict[str, Any]]:
        """The exam's sessions still held by guest accounts, with what the guests typed."""
        exam = await self.sessions.exam_in_scope(exam_id, principal)
        guests = await self.guest_user_ids()
        live = await self.sessions.list_sessions(exam.id)
        held = [
            s for s in live
            if s["candidate_id"] in guests
            and scope.sees_session(principal, exam.groups, s["group"])
        ]
        if not held:
            return []
        async with self.db._read() as session:
            uses = list(
                await session.scalars(
                    select(GuestUseRow)
                    .where(GuestUseRow.exam_id == exam.id,
                           GuestUseRow.user_id.in_([s["candidate_id"] for s in held]))
                    .order_by(GuestUseRow.reserved_at)
                )
            )
        latest = {u.user_id: u for u in uses}  # the newest use per account
        out = []
        for s in held:
            use = latest.get(s["candidate_id"])
            out.append({
                "session_id": s["id"],
                "status": s["status"],
                "candidate_id": s["candidate_id"],
                "candidate_name": s["candidate_name"],
                "group": s["group"],
                "account": guests[s["candidate_id"]],
                "guest": _use_dict(use) if use is not None else None,
            })
        return out

    async def reassign(
        self,
        exam_id: str,
        session_id: str,
        principal: Principal,
        candidate_id: str,
        candidate_name: str | None = None,
        group: str | None = None,
    ) -> dict[str, Any]:
        """Give a guest session to the real candidate, all in one SQL transaction.

        The session row, its history rows and its irregularities move to the candidate, a
        `reassigned` event is appended, the audit says who did it and the guest account is
        released (unless it still holds sessions of other exams). Then the live copy in the
        state store is updated. Raises 409 (`guest_session_active`, `candidate_has_session`,
        `not_a_guest_session`) with nothing changed.
        """
        if not isinstance(candidate_id, str) or not CANDIDATE_ID.match(candidate_id):
            raise BadRequest("'candidate_id' is required (1..128 characters, no spaces)")
        for key, value in (("candidate_name", candidate_name), ("group", group)):
            if value is not None and (not isinstance(value, str) or len(value) > 200):
                raise BadRequest(f"'{key}' must be a string of at most 200 characters")
        exam, live = await self.sessions.session_in_scope(exam_id, session_id, principal)
        if live["status"] in BUSY:
            raise GuestError(409, "guest_session_active",
                             f"the session is still {live['status']}: end it first")
        guests = await self.guest_user_ids()
        if live["candidate_id"] not in guests:
            raise GuestError(409, "not_a_guest_session", "this session was not taken by a guest")
        if candidate_id in guests:
            raise GuestError(409, "invalid", "a guest account cannot be the real candidate")
        taken = await self.db.find_session(exam.id, candidate_id)
        if taken is not None:  # checked again in the transaction; this spares a sequence number
            raise GuestError(409, "candidate_has_session",
                             f"{candidate_id!r} already has session {taken.get('id')!r} here")
        name, new_group = await self._candidate_defaults(exam, candidate_id, candidate_name,
                                                         group, live["group"])
        if not scope.sees_session(principal, exam.groups, new_group):
            raise Forbidden(f"group {new_group!r} would take the session out of your scope")
        if self.sessions.catch_up is not None:
            # The history rows move in SQL: every event of the session must be there first.
            await self.sessions.catch_up(exam.id)
        now = self.clock()
        ctx = Ctx(principal.actor, principal.extra.get("ip", ""))
        moved = await self._move(exam, session_id, candidate_id, name, new_group, ctx, now)
        self.forget_tokens()
        # The live copy and the `reassigned` history event go through the ordinary commit
        # path (next exam seq, published to dashboards, held by the exam's outbox; the
        # drainer writes it to SQL right after).
        event: Event = moved["event"]
        await self.sessions.record_change(
            exam.id, session_id, REASSIGNED, event.actor, moved["changes"], event.details
        )
        return moved["result"]  # type: ignore[no-any-return]

    async def is_guest(self, user_id: str) -> bool:
        """Whether a user is a guest account: those are exempt from the login lockout (a
        hall of candidates must never lock each other out); the per-address login limit
        protects them instead."""
        async with self.db._read() as session:
            found = await session.scalar(
                select(GuestAccountRow.number).where(GuestAccountRow.user_id == user_id)
            )
        return found is not None

    async def may_open(self, user_id: str, exam_id: str) -> bool:
        """A guest account opens only the exam it was reserved for; other users anything."""
        async with self.db._read() as session:
            account = await session.scalar(
                select(GuestAccountRow).where(GuestAccountRow.user_id == user_id)
            )
        return account is None or account.exam_id == exam_id

    async def _candidate_defaults(
        self, exam: Exam, candidate_id: str, name: str | None, group: str | None, current: str
    ) -> tuple[str, str]:
        if name and group is not None:
            return name.strip(), group
        async with self.db._read() as session:
            user = await session.scalar(
                select(UserRow).where((UserRow.id == candidate_id)
                                      | (UserRow.login == candidate_id.lower()))
            )
        if not name:
            name = user.full_name if user is not None else candidate_id
        if group is None:
            groups = list(user.groups or []) if user is not None else []
            shared = [g for g in groups if g in exam.groups]
            group = shared[0] if shared else current
        return name.strip(), group

    async def _move(
        self, exam: Exam, session_id: str, candidate_id: str, name: str, group: str,
        ctx: Ctx, now: float,
    ) -> dict[str, Any]:
        try:
            async with self.db._write() as session:
                return await self._move_in(session, exam, session_id, candidate_id, name, group,
                                           ctx, now)
        except IntegrityError as exc:
            raise GuestError(409, "candidate_has_session",
                             f"{candidate_id!r} already has a session in this exam") from exc

    async def _move_in(
        self, session: AsyncSession, exam: Exam, session_id: str, candidate_id: str, name: str,
        group: str, ctx: Ctx, now: float,
    ) -> dict[str, Any]:
        row = await session.scalar(
            select(SessionRow).where(SessionRow.id == session_id, SessionRow.exam_id == exam.id)
            .with_for_update()
        )
        if row is None:
            raise NotFound(f"no session {session_id!r} in exam {exam.id!r}")
        account = await session.scalar(
            select(GuestAccountRow).where(GuestAccountRow.user_id == row.candidate_id)
            .with_for_update()
        )
        if account is None:
            raise GuestError(409, "not_a_guest_session", "this session was not taken by a guest")
        if (row.state or {}).get("status") in BUSY:
            raise GuestError(409, "guest_session_active", "the session is still running")
        taken = await session.scalar(
            select(SessionRow.id).where(SessionRow.exam_id == exam.id,
                                        SessionRow.candidate_id == candidate_id)
        )
        if taken is not None:
            raise GuestError(409, "candidate_has_session",
                             f"{candidate_id!r} already has session {taken!r} in this exam")
        guest_id, guest_actor = row.candidate_id, f"candidate:{row.candidate_id}"
        before = {"candidate_id": guest_id, "candidate_name": row.candidate_name,
                  "group": row.group}
        changes = {"candidate_id": candidate_id, "candidate_name": name, "group": group}
        # 1. the session row (and the public state copied in it: progress, status, times)
        row.candidate_id, row.candidate_name, row.group = candidate_id, name, group
        row.state = {**(row.state or {}), **changes}
        row.updated_at = now
        await session.flush()
        await self.checkpoint("session_moved")
        # 2. every history row of the session
        events = list(await session.scalars(
            select(EventRow).where(EventRow.session_id == session_id).order_by(EventRow.seq)
        ))
        for ev in events:
            ev.changes = {k: changes.get(k, v) for k, v in (ev.changes or {}).items()}
            ev.details = {**(ev.details or {}), "guest_account": account.login}
            if ev.actor == guest_actor:
                ev.actor = f"candidate:{candidate_id}"
        await session.flush()
        await self.checkpoint("history_moved")
        # 3. irregularities hang off the session id; they move with it. Count them for the audit.
        irregularities = list(await session.scalars(
            select(IrregularityRow.id).where(IrregularityRow.session_id == session_id)
        ))
        # 4. the guest's record of this use
        use = await session.scalar(
            select(GuestUseRow)
            .where(GuestUseRow.user_id == guest_id, GuestUseRow.exam_id == exam.id)
            .order_by(GuestUseRow.reserved_at.desc())
            .limit(1)
        )
        typed: dict[str, Any] = {}
        if use is not None:
            use.session_id, use.reassigned_to = session_id, candidate_id
            use.reassigned_by, use.reassigned_at = ctx.actor, now
            typed = _guest_details_dict(use)
        # 5. the `reassigned` event: recorded through the live commit path right after
        event = Event(
            exam_id=exam.id, session_id=session_id, kind=REASSIGNED, actor=ctx.actor, at=now,
            details={"from_candidate_id": guest_id, "guest_account": account.login,
                     "to_candidate_id": candidate_id, "guest": typed},
            changes=changes,
        )
        # 6. release the account unless it still holds sessions of other exams
        others = await session.scalar(
            select(func.count()).where(SessionRow.candidate_id == guest_id,
                                       SessionRow.id != session_id)
        )
        released = not others
        if released:
            if use is not None:
                use.released_at = now
            await self._disable_user(session, account.user_id, account.number, now)
            _clear(account, now)
        await session.flush()
        await self.checkpoint("account_released")
        # 7. the audit record, in the same transaction
        await session.execute(insert(AuditRow), [{
            "at": now, "actor": ctx.actor, "ip": ctx.ip, "action": "guest_reassigned",
            "subject": f"session:{session_id}",
            "details": {"exam_id": exam.id, "session_id": session_id,
                        "guest_account": account.login, "guest_user_id": guest_id,
                        "from": before, "to": changes, "guest": typed,
                        "events_moved": len(events), "irregularities": len(irregularities),
                        "account_released": released},
        }])
        await self.checkpoint("audited")
        result = {
            "session_id": session_id, "exam_id": exam.id, "candidate_id": candidate_id,
            "candidate_name": name, "group": group, "guest_account": account.login,
            "from_candidate_id": guest_id, "events_moved": len(events),
            "irregularities": len(irregularities), "account_released": released,
            "reassigned_at": now, "guest": typed,
        }
        return {"result": result, "changes": changes, "event": event}
