"""Group scope: which exams and sessions a staff member may see and change. The one rule.

Every REST route, both sockets and the services ask here; nothing else compares groups.

* A principal of an *unrestricted* role (admin) is in scope everywhere.
* A restricted principal **manages** an exam that names one of its groups.
* It **sees a session** of an exam it manages, or whose candidate group is one of its groups.
* It **sees an exam** it manages or in which it sees at least one session (its candidates sit
  there: "candidates' group access"). Seeing covers reading the exam, its visible sessions,
  their history and irregularities, dashboard snapshots and deltas, and commands (with the
  action's permission) on visible sessions.
* Changing an exam (its fields, adding sessions) needs managing it. Creating an exam or changing
  its groups may only add or remove the principal's own groups, and a restricted principal's
  exam keeps at least one of them (else it would make something it can no longer see).
* Out of scope is indistinguishable from nonexistent: 404 with the very same body
  (`exam_not_found`, `session_not_found`), a `not_found` skip for a named session, and filters
  count only what is in scope. In scope but not allowed (no permission, or an exam seen only
  through its candidates) is 403: the caller already knows the object exists.
* Organisation-wide permissions (users, the user export, the audit log, the server nodes)
  count only for unrestricted roles: their data spans every group.
"""

from __future__ import annotations

from collections.abc import Iterable

from realtime.auth.permissions import Permission
from realtime.auth.principal import Principal
from realtime.errors import Forbidden, NotFound

ORGANISATION_WIDE = frozenset(
    {Permission.MANAGE_USERS, Permission.EXPORT_USERS, Permission.VIEW_AUDIT,
     Permission.VIEW_SYSTEM}
)


def grants(principal: Principal, permission: Permission) -> bool:
    """The principal holds `permission` and, if it is organisation-wide, sees every group."""
    if not principal.can(permission):
        return False
    return principal.unrestricted or permission not in ORGANISATION_WIDE


def refusal(principal: Principal, permission: Permission) -> str:
    """Why `grants` said no, for the 403 message."""
    if principal.can(permission):
        return f"{permission.value} spans every group: it needs a role that sees all groups"
    return f"missing permission {permission.value}"


def manages(principal: Principal, exam_groups: Iterable[str]) -> bool:
    """The exam names one of the principal's groups (or the principal sees every group)."""
    if principal.unrestricted:
        return True
    return not principal.groups.isdisjoint(exam_groups)


def sees_session(principal: Principal, exam_groups: Iterable[str], candidate_group: str) -> bool:
    """A session is seen in an exam the principal manages, or when its candidate is theirs."""
    return manages(principal, exam_groups) or (
        bool(candidate_group) and candidate_group in principal.groups
    )


def sees_exam(principal: Principal, exam_groups: Iterable[str], has_own_candidates: bool) -> bool:
    """An exam is seen when managed, or when some of its sessions are of the principal's
    candidate groups (`has_own_candidates`, see `own_candidates`)."""
    return manages(principal, exam_groups) or has_own_candidates


def own_candidates(principal: Principal, candidate_groups: Iterable[str]) -> bool:
    """Whether any of these candidate groups (an exam's sessions') is one of the principal's."""
    return any(group and group in principal.groups for group in candidate_groups)


def depends_on_sessions(principal: Principal, exam_groups: Iterable[str]) -> bool:
    """Whether seeing the exam hinges on its sessions' groups (the exam itself is not managed)."""
    return not manages(principal, exam_groups)


def check_exam_groups(
    principal: Principal, before: Iterable[str], after: Iterable[str]
) -> None:
    """Creating an exam (`before` empty) or changing its groups: only the principal's own groups
    may be added or removed, and a restricted principal's exam keeps one of them. 403 if not."""
    if principal.unrestricted:
        return
    old, new = set(before), set(after)
    foreign = sorted((old ^ new) - principal.groups)
    if foreign:
        raise Forbidden(f"you may only add or remove your own groups, not {foreign}")
    if principal.groups.isdisjoint(new):
        raise Forbidden("the exam must keep one of your groups: "
                        f"{sorted(principal.groups) or 'you have none'}")


def exam_not_found(exam_id: str) -> NotFound:
    """The one answer for an exam that does not exist or is out of scope."""
    return NotFound(f"no exam {exam_id!r}")


def session_not_found(exam_id: str, session_id: str) -> NotFound:
    """The one answer for a session that does not exist or is out of scope."""
    return NotFound(f"no session {session_id!r} in exam {exam_id!r}")
