"""Password reset by e-mail: a time-limited, single-use token for an active account.

Asking never reveals whether an account exists (the caller gets the same answer either way;
the audit records both). Using a token sets the password, uses up every other reset token of
the account, lifts a login block and ends the account's logins everywhere.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import delete, select, update

from realtime.errors import Conflict, NotFound
from realtime.identity.audit import Ctx
from realtime.identity.models import AuthTokenRow, LoginFailureRow, UserRow
from realtime.identity.service import ACTIVE, IdentityService, check_password, token_id
from realtime.mail.models import PasswordResetRow


class PasswordResets:
    def __init__(self, service: IdentityService, ttl: float) -> None:
        self.service = service
        self.ttl = ttl

    async def request(
        self, ctx: Ctx, email: str
    ) -> tuple[dict[str, Any], str, float] | None:
        """(user, token, expires_at) for an active account with this e-mail, else None."""
        service = self.service
        address = email.strip().lower()
        async with service.db._read() as session:
            row = await session.scalar(select(UserRow).where(UserRow.email == address))
            user = None if row is None else {"id": row.id, "full_name": row.full_name,
                                             "email": row.email, "status": row.status}
        if user is None or user["status"] != ACTIVE:
            await service.audit.record(ctx, "password_reset_requested", "",
                                       email=address, outcome="no active account")
            return None
        token = secrets.token_urlsafe(32)
        now = service.clock()
        expires = now + self.ttl
        async with service.db._write() as session:
            session.add(PasswordResetRow(id=token_id(token), user_id=user["id"], created_at=now,
                                         expires_at=expires, used_at=None))
        await service.audit.record(ctx, "password_reset_requested", f"user:{user['id']}")
        return user, token, expires

    async def confirm(self, ctx: Ctx, token: str, password: str) -> dict[str, Any]:
        """Set the password with a reset token. NotFound for an unknown or used token (or an
        account no longer active), Conflict for an expired one."""
        service = self.service
        hashed = await service._hash(check_password(password))
        now = service.clock()
        async with service.db._write() as session:
            reset = await session.get(PasswordResetRow, token_id(token))
            if reset is None or reset.used_at is not None:
                raise NotFound("unknown or already used reset link")
            if reset.expires_at < now:
                raise Conflict("the reset link has expired; ask for a new one")
            row = await session.get(UserRow, reset.user_id)
            if row is None or row.status != ACTIVE:
                raise NotFound("unknown or already used reset link")
            row.password_hash = hashed
            await session.execute(
                update(PasswordResetRow)
                .where(PasswordResetRow.user_id == row.id, PasswordResetRow.used_at.is_(None))
                .values(used_at=now)
            )
            await session.execute(
                update(AuthTokenRow)
                .where(AuthTokenRow.user_id == row.id, AuthTokenRow.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await session.execute(delete(LoginFailureRow).where(LoginFailureRow.key == row.id))
            user_id = row.id
        await service.audit.record(Ctx(f"staff:{user_id}", ctx.ip), "password_reset",
                                   f"user:{user_id}")
        return await service.get_user(user_id)
