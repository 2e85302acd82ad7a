"""Roles: named sets of permissions, with a built-in default matrix.

The defaults can be changed without code: `REALTIME_ROLES_FILE` names a JSON file such as

    {"roles": {"proctor": {"permissions": ["sessions.view", "sessions.pause"]},
               "auditor": {"permissions": ["audit.view"], "unrestricted": true,
                           "description": "Reads the audit log"},
               "supervisor": {"permissions": "*", "unrestricted": true}}}

Each named role replaces the built-in role of that name (or adds a new one). `"*"` means every
permission. The `admin` role always exists, holds every permission and sees every group. The
organisation-wide permissions (users, user export, audit log, nodes) only count in unrestricted
roles (`realtime.identity.scope`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realtime.auth.permissions import ALL_PERMISSIONS, Permission

ADMIN = "admin"
CANDIDATE = "candidate"

P = Permission
SESSION_ACTIONS = frozenset(
    {P.AUTHORIZE, P.PAUSE, P.RESUME, P.LOCK, P.UNLOCK, P.TERMINATE, P.EXTEND, P.NOTICE,
     P.REDUCE, P.REOPEN}
)


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    description: str
    permissions: frozenset[Permission] = frozenset()
    unrestricted: bool = False  # sees every group
    staff: bool = True  # False: a candidate account, never a staff principal

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "permissions": sorted(p.value for p in self.permissions),
            "unrestricted": self.unrestricted,
            "staff": self.staff,
        }


DEFAULT_ROLES: tuple[Role, ...] = (
    Role(ADMIN, "Everything, in every group", ALL_PERMISSIONS, unrestricted=True),
    Role(
        "supervisor",
        "All session actions incl. unlock, terminate and reopen, guest reassignment",
        SESSION_ACTIONS
        | {P.VIEW_SESSIONS, P.VIEW_HISTORY, P.REPORT_IRREGULARITY, P.REASSIGN_GUESTS},
    ),
    Role(
        "proctor",
        "Watch and run sessions; no unlock, no terminate, no reopen",
        frozenset(
            {P.VIEW_SESSIONS, P.VIEW_HISTORY, P.AUTHORIZE, P.PAUSE, P.RESUME, P.LOCK, P.NOTICE,
             P.EXTEND, P.REDUCE, P.REPORT_IRREGULARITY}
        ),
    ),
    Role(
        "scheduler",
        "Exams and sessions",
        frozenset({P.VIEW_SESSIONS, P.MANAGE_EXAMS, P.CREATE_SESSIONS}),
    ),
    Role("viewer", "Read-only", frozenset({P.VIEW_SESSIONS, P.VIEW_HISTORY})),
    Role(CANDIDATE, "Takes exams; no staff rights", frozenset(), staff=False),
)


class RolesError(ValueError):
    pass


@dataclass(slots=True)
class RoleSet:
    roles: dict[str, Role] = field(default_factory=dict)

    @classmethod
    def default(cls) -> RoleSet:
        return cls({role.name: role for role in DEFAULT_ROLES})

    @classmethod
    def load(cls, path: str | Path | None) -> RoleSet:
        """The defaults, overridden by the roles file at `path` (if given)."""
        roles = cls.default()
        if not path:
            return roles
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RolesError(f"cannot read roles file {path}: {exc}") from exc
        roles.merge(raw.get("roles") if isinstance(raw, dict) else None)
        return roles

    def merge(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise RolesError("the roles file needs an object 'roles': {name: {permissions}}")
        for name, spec in raw.items():
            if not isinstance(name, str) or not name or not isinstance(spec, dict):
                raise RolesError(f"role {name!r}: expected an object")
            if name == ADMIN:
                raise RolesError("the admin role cannot be redefined")
            perms = spec.get("permissions", [])
            if perms == "*":
                permissions = ALL_PERMISSIONS
            elif isinstance(perms, list):
                try:
                    permissions = frozenset(Permission(p) for p in perms)
                except ValueError as exc:
                    raise RolesError(f"role {name!r}: {exc}") from exc
            else:
                raise RolesError(f"role {name!r}: 'permissions' must be a list or \"*\"")
            self.roles[name] = Role(
                name,
                str(spec.get("description", "")),
                permissions,
                unrestricted=bool(spec.get("unrestricted", False)),
                staff=bool(spec.get("staff", True)),
            )

    def __contains__(self, name: object) -> bool:
        return name in self.roles

    def names(self) -> list[str]:
        return list(self.roles)

    def unknown(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if n not in self.roles]

    def permissions_of(self, names: Iterable[str]) -> frozenset[Permission]:
        out: set[Permission] = set()
        for name in names:
            role = self.roles.get(name)
            if role is not None:
                out |= role.permissions
        return frozenset(out)

    def unrestricted(self, names: Iterable[str]) -> bool:
        return any(self.roles[n].unrestricted for n in names if n in self.roles)

    def is_staff(self, names: Iterable[str]) -> bool:
        return any(self.roles[n].staff for n in names if n in self.roles)

    def markdown(self) -> str:
        """The role-by-permission matrix as a Markdown table (what the docs embed)."""
        names = self.names()
        lines = [
            "| Permission | " + " | ".join(names) + " |",
            "|---|" + "|".join(":-:" for _ in names) + "|",
        ]
        for permission in Permission:
            marks = ["✓" if permission in self.roles[n].permissions else "" for n in names]
            lines.append(f"| `{permission.value}` | " + " | ".join(marks) + " |")
        marks = ["✓" if self.roles[n].unrestricted else "" for n in names]
        lines.append("| *all groups (no scope)* | " + " | ".join(marks) + " |")
        return "\n".join(lines) + "\n"
