"""Users, passwords, login sessions and lockout, on the durable SQL database.

Everything that must hold across server processes (failed-login counts, blocks, revoked
tokens, the last-admin rule) is decided inside one SQL write transaction, so it holds with
any number of processes sharing the database (SQLite: BEGIN IMMEDIATE; PostgreSQL: row locks).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Table, case, delete, null, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from realtime.auth.principal import Principal
from realtime.db.database import Database
from realtime.errors import (
    BadRequest,
    Conflict,
    ErrorCode,
    Forbidden,
    NotFound,
    RealtimeError,
    Unauthorized,
)
from realtime.identity.audit import AuditLog, Ctx
from realtime.identity.csvutil import iso, to_csv
from realtime.identity.models import AuthTokenRow, LoginFailureRow, UserRow
from realtime.identity.roles import ADMIN, RoleSet

INVITED, ACTIVE, DEACTIVATED = "invited", "active", "deactivated"
STATUSES = (INVITED, ACTIVE, DEACTIVATED)
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
LOGIN = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
USERS_CSV_HEADER = ("name", "login", "email", "roles", "last_login", "last_sign_out", "status")
_TEXT_FIELDS = {"full_name": 200, "job_title": 200, "phone": 64}
_EDITABLE = {"full_name", "email", "login", "job_title", "phone", "roles", "groups"}


class LoginBlocked(RealtimeError):
    """Too many failed logins: refused until `blocked_until` (epoch seconds)."""

    status = 429
    code = ErrorCode.FORBIDDEN

    def __init__(self, blocked_until: float) -> None:
        super().__init__(f"too many failed logins: blocked until {iso(blocked_until)}")
        self.blocked_until = blocked_until


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    token_ttl: float = 12 * 3600
    activation_ttl: float = 168 * 3600
    max_failures: int = 5
    block_seconds: float = 3600.0
    require_group: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    """A login attempt as admitted by `_admit`: its number in the current window of failures
    (0: refused, the login is blocked) and the block's end if it set one or met one."""

    number: int
    blocked_until: float | None

    @property
    def refused(self) -> bool:
        return self.number == 0 and self.blocked_until is not None


async def _never_exempt(user_id: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Login:
    token: str
    expires_at: float
    user: dict[str, Any]


def _user_dict(row: UserRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "full_name": row.full_name,
        "email": row.email,
        "login": row.login,
        "job_title": row.job_title,
        "phone": row.phone,
        "roles": list(row.roles or []),
        "groups": list(row.groups or []),
        "status": row.status,
        "created_at": row.created_at,
        "activated_at": row.activated_at,
        "deactivated_at": row.deactivated_at,
        "last_login_at": row.last_login_at,
        "last_logout_at": row.last_logout_at,
    }


def _str_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and 0 < len(v) <= 128 for v in value
    ):
        raise BadRequest(f"'{name}' must be a list of strings (1..128 characters)")
    return list(dict.fromkeys(value))


def check_password(password: Any) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise BadRequest(f"the password must have {MIN_PASSWORD}..{MAX_PASSWORD} characters")
    return password


class IdentityService:
    def __init__(
        self,
        db: Database,
        roles: RoleSet,
        audit: AuditLog,
        policy: IdentityPolicy | None = None,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.db = db
        self.roles = roles
        self.audit = audit
        self.policy = policy or IdentityPolicy()
        self.clock = clock
        self.hasher = hasher or PasswordHasher()
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        # Accounts never blocked by failed logins (the app points this at the guest pool).
        self.lockout_exempt: Callable[[str], Awaitable[bool]] = _never_exempt

    # -- passwords ---------------------------------------------------------------------------

    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, hashed: str | None, password: str) -> bool:
        def run() -> bool:
            try:
                return self.hasher.verify(hashed or self._dummy_hash, password) and bool(hashed)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(run)

    # -- validation --------------------------------------------------------------------------

    def _clean(self, fields: dict[str, Any], creating: bool) -> dict[str, Any]:
        unknown = set(fields) - _EDITABLE
        if unknown:
            raise BadRequest(f"unknown or read-only fields: {sorted(unknown)}")
        out: dict[str, Any] = {}
        if creating or "full_name" in fields:
            name = fields.get("full_name")
            if not isinstance(name, str) or not name.strip() or len(name) > 200:
                raise BadRequest("'full_name' is required (1..200 characters)")
            out["full_name"] = name.strip()
        if creating or "email" in fields:
            email = fields.get("email")
            if not isinstance(email, str) or not EMAIL.match(email.strip()):
                raise BadRequest("'email' must be a valid e-mail address")
            out["email"] = email.strip().lower()
        if "login" in fields:
            login = fields["login"]
            if login in (None, ""):
                out["login"] = None
            elif not isinstance(login, str) or not LOGIN.match(login):
                raise BadRequest("'login' must be 2..64 letters, digits or _ . @ -")
            else:
                out["login"] = login.lower()
        for key in ("job_title", "phone"):
            if key in fields:
                value = fields[key] if fields[key] is not None else ""
                if not isinstance(value, str) or len(value) > _TEXT_FIELDS[key]:
                    raise BadRequest(f"'{key}' must be a string of at most "
                                     f"{_TEXT_FIELDS[key]} characters")
                out[key] = value.strip()
        if creating or "roles" in fields:
            roles = _str_list(fields.get("roles"), "roles")
            if not roles:
                raise BadRequest("a user needs at least one role")
            if bad := self.roles.unknown(roles):
                raise BadRequest(f"unknown roles {bad}; known: {self.roles.names()}")
            out["roles"] = roles
        if creating or "groups" in fields:
            out["groups"] = _str_list(fields.get("groups", []), "groups")
        return out

    # -- users -------------------------------------------------------------------------------

    async def create_user(
        self, ctx: Ctx, fields: dict[str, Any], password: str | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """A new user: invited (returns the activation token) or, given a password, active."""
        values = self._clean(fields, creating=True)
        if (
            self.policy.require_group
            and not values["groups"]
            and not self.roles.unrestricted(values["roles"])
        ):
            raise BadRequest("new users must belong to at least one group")
        now = self.clock()
        activation: str | None = None
        row = UserRow(id=new_id(), created_at=now, status=INVITED, login=None, job_title="",
                      phone="")
        for key, value in values.items():
            setattr(row, key, value)
        if password is not None:
            row.password_hash = await self._hash(check_password(password))
            row.status, row.activated_at = ACTIVE, now
        else:
            activation = secrets.token_urlsafe(32)
            row.activation_hash = token_id(activation)
            row.activation_expires_at = now + self.policy.activation_ttl
        try:
            async with self.db._write() as session:
                await self._check_unique(session, row.email, row.login)
                session.add(row)
        except IntegrityError as exc:
            raise Conflict("a user with this e-mail or login already exists") from exc
        user = _user_dict(row)
        await self.audit.record(ctx, "user_created", f"user:{row.id}", user=_audit_view(user))
        return user, activation

    async def _check_unique(
        self, session: AsyncSession, email: str, login: str | None, exclude: str = ""
    ) -> None:
        keys = [email] + ([login] if login else [])
        clash = await session.scalar(
            select(UserRow.id).where(
                UserRow.id != exclude,
                UserRow.email.in_(keys) | UserRow.login.in_(keys),
            )
        )
        if clash is not None:
            raise Conflict("a user with this e-mail or login already exists")

    async def get_user(self, user_id: str) -> dict[str, Any]:
        async with self.db._read() as session:
            row = await session.get(UserRow, user_id)
            if row is None:
                raise NotFound(f"no user {user_id!r}")
            user = _user_dict(row)
        return (await self._decorate([user]))[0]

    async def reissue_activation(self, ctx: Ctx, user_id: str) -> tuple[str, float]:
        token = secrets.token_urlsafe(32)
        expires = self.clock() + self.policy.activation_ttl
        async with self.db._write() as session:
            row = await self._row(session, user_id)
            if row.status != INVITED:
                raise Conflict("only invited users get an activation token")
            row.activation_hash, row.activation_expires_at = token_id(token), expires
        await self.audit.record(ctx, "activation_reissued", f"user:{user_id}")
        return token, expires

    async def activate(self, ctx: Ctx, token: str, password: str) -> dict[str, Any]:
        """Set the password with a one-time activation token: invited → active."""
        check_password(password)
        hashed = await self._hash(password)
        now = self.clock()
        async with self.db._write() as session:
            row = await session.scalar(
                select(UserRow).where(UserRow.activation_hash == token_id(token))
            )
            if row is None or row.status != INVITED:
                raise NotFound("unknown or already used activation token")
            if row.activation_expires_at is None or row.activation_expires_at < now:
                raise Conflict("the activation token has expired; ask for a new one")
            row.password_hash, row.status, row.activated_at = hashed, ACTIVE, now
            row.activation_hash = row.activation_expires_at = None
            user = _user_dict(row)
        await self.audit.record(
            Ctx(f"staff:{user['id']}", ctx.ip), "user_activated", f"user:{user['id']}"
        )
        return user

    async def _row(self, session: AsyncSession, user_id: str, lock: bool = False) -> UserRow:
        stmt = select(UserRow).where(UserRow.id == user_id)
        if lock:
            stmt = stmt.with_for_update()
        row = await session.scalar(stmt)
        if row is None:
            raise NotFound(f"no user {user_id!r}")
        return row

    async def _other_active_admins(self, session: AsyncSession, user_id: str) -> int:
        """Active admins other than `user_id`, with their rows locked (PostgreSQL)."""
        rows = await session.scalars(
            select(UserRow).where(UserRow.status == ACTIVE).with_for_update()
        )
        return sum(1 for r in rows if r.id != user_id and ADMIN in (r.roles or []))

    async def update_user(self, ctx: Ctx, user_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        values = self._clean(fields, creating=False)
        async with self.db._write() as session:
            row = await self._row(session, user_id, lock=True)
            before = _user_dict(row)
            if (
                "roles" in values
                and row.status == ACTIVE
                and ADMIN in (row.roles or [])
                and ADMIN not in values["roles"]
                and await self._other_active_admins(session, user_id) == 0
            ):
                raise Conflict("this is the last active admin: the admin role cannot be removed")
            if "email" in values or "login" in values:
                await self._check_unique(
                    session, values.get("email", row.email), values.get("login", row.login),
                    exclude=user_id,
                )
            for key, value in values.items():
                setattr(row, key, value)
            after = _user_dict(row)
        changed = {k: after[k] for k in values if before[k] != after[k]}
        if "roles" in changed:
            await self.audit.record(
                ctx, "roles_changed", f"user:{user_id}", before=before["roles"],
                after=after["roles"],
            )
        if changed:
            await self.audit.record(ctx, "user_updated", f"user:{user_id}", changes=changed)
        return (await self._decorate([after]))[0]

    async def deactivate(self, ctx: Ctx, user_id: str) -> dict[str, Any]:
        now = self.clock()
        async with self.db._write() as session:
            row = await self._row(session, user_id, lock=True)
            if row.status == DEACTIVATED:
                return _user_dict(row)
            if (
                row.status == ACTIVE
                and ADMIN in (row.roles or [])
                and await self._other_active_admins(session, user_id) == 0
            ):
                raise Conflict("this is the last active admin: it cannot be deactivated")
            row.status, row.deactivated_at = DEACTIVATED, now
            row.activation_hash = row.activation_expires_at = None
            await session.execute(
                update(AuthTokenRow)
                .where(AuthTokenRow.user_id == user_id, AuthTokenRow.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            user = _user_dict(row)
        await self.audit.record(ctx, "user_deactivated", f"user:{user_id}")
        return user

    async def reactivate(self, ctx: Ctx, user_id: str) -> tuple[dict[str, Any], str | None]:
        """Deactivated → active (or invited again, with a new token, if it never had a password)."""
        now = self.clock()
        activation: str | None = None
        async with self.db._write() as session:
            row = await self._row(session, user_id)
            if row.status != DEACTIVATED:
                raise Conflict(f"the user is {row.status}, not deactivated")
            row.deactivated_at = None
            if row.password_hash:
                row.status = ACTIVE
            else:
                activation = secrets.token_urlsafe(32)
                row.status, row.activation_hash = INVITED, token_id(activation)
                row.activation_expires_at = now + self.policy.activation_ttl
            user = _user_dict(row)
        await self.audit.record(ctx, "user_reactivated", f"user:{user_id}")
        return user, activation

    async def set_password(self, ctx: Ctx, user_id: str, password: str) -> None:
        hashed = await self._hash(check_password(password))
        async with self.db._write() as session:
            row = await self._row(session, user_id)
            row.password_hash = hashed
            if row.status == INVITED:
                row.status, row.activated_at = ACTIVE, self.clock()
                row.activation_hash = row.activation_expires_at = None
        await self.audit.record(ctx, "password_set", f"user:{user_id}")

    async def count_active_admins(self) -> int:
        async with self.db._read() as session:
            rows = await session.scalars(select(UserRow).where(UserRow.status == ACTIVE))
            return sum(1 for r in rows if ADMIN in (r.roles or []))

    # -- listing -----------------------------------------------------------------------------

    async def _decorate(self, users: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add `blocked_until` (None unless blocked now) and `logged_in`."""
        now = self.clock()
        ids = [u["id"] for u in users]
        async with self.db._read() as session:
            blocks = {
                key: until
                for key, until in await session.execute(
                    select(LoginFailureRow.key, LoginFailureRow.blocked_until).where(
                        LoginFailureRow.key.in_(ids), LoginFailureRow.blocked_until > now
                    )
                )
            }
            online = set(
                await session.scalars(
                    select(AuthTokenRow.user_id).where(
                        AuthTokenRow.user_id.in_(ids),
                        AuthTokenRow.revoked_at.is_(None),
                        AuthTokenRow.expires_at > now,
                    )
                )
            )
        for user in users:
            user["blocked_until"] = blocks.get(user["id"])
            user["logged_in"] = user["id"] in online
        return users

    async def list_users(
        self,
        search: str | None = None,
        role: str | None = None,
        group: str | None = None,
        status: str | None = None,
        activated: tuple[float | None, float | None] = (None, None),
        deactivated: tuple[float | None, float | None] = (None, None),
    ) -> list[dict[str, Any]]:
        async with self.db._read() as session:
            rows = list(await session.scalars(select(UserRow).order_by(UserRow.full_name)))
            users = [_user_dict(r) for r in rows]
        needle = (search or "").casefold()

        def within(at: float | None, window: tuple[float | None, float | None]) -> bool:
            start, end = window
            if start is None and end is None:
                return True
            if at is None:
                return False
            return (start is None or at >= start) and (end is None or at < end)

        out = [
            u
            for u in users
            if (not needle or needle in f"{u['full_name']} {u['email']} {u['login'] or ''}"
                .casefold())
            and (not role or role in u["roles"])
            and (not group or group in u["groups"])
            and (not status or u["status"] == status)
            and within(u["activated_at"], activated)
            and within(u["deactivated_at"], deactivated)
        ]
        return await self._decorate(out)

    # -- login -------------------------------------------------------------------------------

    async def _find_login(self, login: str) -> UserRow | None:
        key = login.strip().lower()
        async with self.db._read() as session:
            row: UserRow | None = await session.scalar(
                select(UserRow).where((UserRow.login == key) | (UserRow.email == key))
            )
            return row

    async def _admit(self, key: str, now: float) -> Attempt:
        """Check the block and count this attempt as a failure, in one SQL statement.

        Every attempt is counted before its password is checked, so of any number of
        concurrent attempts at most `max_failures` are ever checked per window: the one that
        reaches the limit sets the block in the same statement, and every later one finds it
        set. A right password gives its count back afterwards (`_settle`).
        """
        table: Table = LoginFailureRow.__table__  # type: ignore[assignment]
        c = table.c
        limit, block = self.policy.max_failures, self.policy.block_seconds
        expired = c.blocked_until.is_not(None) | (now - c.last_failure_at > block)
        count = case((expired, 1), else_=c.failures + 1)
        first_block = now + block if limit <= 1 else None
        stmt = (
            self.db._insert(table)
            .values(key=key, failures=1, last_failure_at=now, blocked_until=first_block)
            .on_conflict_do_update(
                index_elements=[c.key],
                set_={
                    "failures": count,
                    "last_failure_at": now,
                    "blocked_until": case((count >= limit, now + block), else_=null()),
                },
                where=c.blocked_until.is_(None) | (c.blocked_until <= now),
            )
            .returning(c.failures, c.blocked_until)
        )
        async with self.db._write() as session:
            admitted = (await session.execute(stmt)).first()
            if admitted is None:  # blocked: the conditional update changed nothing
                until = await session.scalar(select(c.blocked_until).where(c.key == key))
                return Attempt(0, until if until is not None else now + block)
        return Attempt(int(admitted[0]), admitted[1])

    async def _settle(self, key: str, attempt: Attempt) -> None:
        """A right password: take back this attempt's count and the ones admitted before it
        (a success ends the window), keep those admitted after it; lift a block they did not
        reach on their own."""
        table: Table = LoginFailureRow.__table__  # type: ignore[assignment]
        c = table.c
        left = c.failures - attempt.number
        async with self.db._write() as session:
            await session.execute(
                update(table)
                .where(c.key == key)
                .values(
                    failures=case((left > 0, left), else_=0),
                    blocked_until=case((left >= self.policy.max_failures, c.blocked_until),
                                       else_=null()),
                )
            )

    async def login(self, login: str, password: str, ip: str = "") -> Login:
        """Check the password; a bearer token on success.

        Raises LoginBlocked while the login is blocked (also for the right password),
        Unauthorized for a wrong login or password, Forbidden for an account that is not
        active (only once the password was right). Accounts for which `lockout_exempt` says
        so (guest accounts) are never blocked: the per-address limit protects them.
        """
        now = self.clock()
        if not isinstance(login, str) or not login.strip() or not isinstance(password, str):
            raise BadRequest("'login' and 'password' are required")
        row = await self._find_login(login[:320])
        key = row.id if row is not None else "login:" + login.strip().lower()[:320]
        subject = f"user:{row.id}" if row is not None else f"login:{login.strip().lower()[:64]}"
        anonymous = Ctx("anonymous", ip)
        exempt = row is not None and await self.lockout_exempt(row.id)
        attempt = Attempt(0, None) if exempt else await self._admit(key, now)
        if attempt.refused:
            await self.audit.record(anonymous, "login_blocked", subject,
                                    blocked_until=attempt.blocked_until)
            raise LoginBlocked(attempt.blocked_until)  # type: ignore[arg-type]
        ok = await self._verify(row.password_hash if row else None, password[:MAX_PASSWORD])
        if not ok or row is None:
            await self.audit.record(anonymous, "login_failed", subject)
            if attempt.blocked_until is not None:  # this failure reached the limit
                await self.audit.record(anonymous, "lockout", subject,
                                        blocked_until=attempt.blocked_until)
                raise LoginBlocked(attempt.blocked_until)
            raise Unauthorized("wrong login or password")
        if not exempt:
            await self._settle(key, attempt)
        if row.status != ACTIVE:
            await self.audit.record(anonymous, "login_refused", subject, status=row.status)
            raise Forbidden(f"the account is {row.status}")
        token = "rt_" + secrets.token_urlsafe(32)
        expires = now + self.policy.token_ttl
        async with self.db._write() as session:
            session.add(
                AuthTokenRow(id=token_id(token), user_id=row.id, created_at=now, expires_at=expires,
                             ip=ip[:64])
            )
            await session.execute(
                update(UserRow).where(UserRow.id == row.id).values(last_login_at=now)
            )
        await self.audit.record(Ctx(f"staff:{row.id}", ip), "login", f"user:{row.id}")
        row.last_login_at = now
        return Login(token, expires, _user_dict(row))

    async def logout(self, token: str, ip: str = "") -> bool:
        now = self.clock()
        async with self.db._write() as session:
            row = await session.get(AuthTokenRow, token_id(token))
            if row is None or row.revoked_at is not None:
                return False
            row.revoked_at = now
            user_id = row.user_id
            await session.execute(
                update(UserRow).where(UserRow.id == user_id).values(last_logout_at=now)
            )
        await self.audit.record(Ctx(f"staff:{user_id}", ip), "logout", f"user:{user_id}")
        return True

    async def unlock(self, ctx: Ctx, user_id: str) -> None:
        async with self.db._write() as session:
            await self._row(session, user_id)
            await session.execute(delete(LoginFailureRow).where(LoginFailureRow.key == user_id))
        await self.audit.record(ctx, "unlock", f"user:{user_id}")

    async def principal(self, token: str) -> Principal | None:
        """The principal of a live login token, or None (unknown, expired, revoked, inactive)."""
        now = self.clock()
        async with self.db._read() as session:
            found = (
                await session.execute(
                    select(AuthTokenRow, UserRow)
                    .join(UserRow, UserRow.id == AuthTokenRow.user_id)
                    .where(AuthTokenRow.id == token_id(token))
                )
            ).first()
        if found is None:
            return None
        tok, user = found
        if tok.revoked_at is not None or tok.expires_at <= now or user.status != ACTIVE:
            return None
        roles = list(user.roles or [])
        return Principal(
            id=user.id,
            name=user.full_name,
            kind="staff" if self.roles.is_staff(roles) else "candidate",
            permissions=self.roles.permissions_of(roles),
            groups=frozenset(user.groups or []),
            unrestricted=self.roles.unrestricted(roles),
            token_id=tok.id,
            extra={"roles": ",".join(roles), "expires_at": str(tok.expires_at)},
        )


def users_csv(users: list[dict[str, Any]]) -> str:
    return to_csv(
        USERS_CSV_HEADER,
        (
            [u["full_name"], u["login"] or "", u["email"], " ".join(u["roles"]),
             iso(u["last_login_at"]), iso(u["last_logout_at"]), u["status"]]
            for u in users
        ),
    )


def _audit_view(user: dict[str, Any]) -> dict[str, Any]:
    return {k: user[k] for k in ("full_name", "email", "login", "roles", "groups", "status")}
