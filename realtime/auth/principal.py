"""Who is acting: a staff member or a candidate, with what rights and over which groups.

What the groups allow is decided in one place: `realtime.identity.scope`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from realtime.auth.permissions import Permission


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    name: str
    kind: str  # "staff" or "candidate"
    permissions: frozenset[Permission] = frozenset()
    groups: frozenset[str] = frozenset()
    unrestricted: bool = True
    exam_id: str = ""  # candidates only
    session_id: str = ""  # candidates only
    token_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def actor(self) -> str:
        """How history and audit name this principal."""
        return f"{self.kind}:{self.id}"

    def can(self, permission: Permission) -> bool:
        return self.kind == "staff" and permission in self.permissions


class Authenticator(Protocol):
    """Turns credentials into principals. The identity layer provides the real one."""

    async def staff(self, token: str) -> Principal | None: ...

    async def candidate(self, token: str) -> Principal | None: ...
