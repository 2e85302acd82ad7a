"""The group-scope rule itself (`realtime/identity/scope.py`), as a table. The same rule is
tested end to end, endpoint by endpoint, in test_scope_matrix.py."""

from __future__ import annotations

import pytest

from realtime.auth.permissions import ALL_PERMISSIONS, Permission
from realtime.auth.principal import Principal
from realtime.errors import Forbidden
from realtime.identity import scope


def staff(*groups: str, unrestricted: bool = False) -> Principal:
    return Principal(id="u", name="u", kind="staff", permissions=ALL_PERMISSIONS,
                     groups=frozenset(groups), unrestricted=unrestricted)


ADMIN = staff(unrestricted=True)
OF_A = staff("A")
OF_C = staff("C")
NOBODY = staff()


@pytest.mark.parametrize(
    ("principal", "exam_groups", "candidate_group", "manages", "sees"),
    [
        (ADMIN, ["B"], "B", True, True),
        (ADMIN, [], "", True, True),
        (OF_A, ["A"], "X", True, True),  # a visitor in A's exam: A's exam, A sees it
        (OF_A, ["A", "B"], "B", True, True),
        (OF_A, ["B"], "B", False, False),
        (OF_C, ["B"], "C", False, True),  # candidates' group access
        (OF_C, ["B"], "B", False, False),
        (OF_A, [], "", False, False),  # an exam of no group is nobody's but admin's
        (NOBODY, ["A"], "A", False, False),
        (NOBODY, [], "", False, False),
    ],
)
def test_manages_and_sees(
    principal: Principal, exam_groups: list[str], candidate_group: str, manages: bool,
    sees: bool,
) -> None:
    assert scope.manages(principal, exam_groups) is manages
    assert scope.sees_session(principal, exam_groups, candidate_group) is sees
    own = scope.own_candidates(principal, [candidate_group])
    assert scope.sees_exam(principal, exam_groups, own) is (manages or own)


@pytest.mark.parametrize(
    ("principal", "before", "after", "allowed"),
    [
        (ADMIN, [], ["Z"], True),
        (ADMIN, ["A"], [], True),
        (OF_A, [], ["A"], True),
        (OF_A, [], ["B"], False),  # an exam for another group
        (OF_A, [], [], False),  # an exam its creator could not see
        (OF_A, ["A"], ["A", "B"], False),  # adding a foreign group
        (OF_A, ["A", "B"], ["A"], False),  # removing one
        (OF_A, ["A", "B"], ["A", "B"], True),  # unchanged foreign groups are fine
        (staff("A", "D"), ["A"], ["D"], True),  # moving between its own groups
        (OF_A, ["A"], [], False),  # dropping the last of its groups
    ],
)
def test_exam_group_changes(
    principal: Principal, before: list[str], after: list[str], allowed: bool
) -> None:
    if allowed:
        scope.check_exam_groups(principal, before, after)
    else:
        with pytest.raises(Forbidden):
            scope.check_exam_groups(principal, before, after)


def test_organisation_wide_permissions_need_every_group() -> None:
    for permission in Permission:
        organisation_wide = permission in scope.ORGANISATION_WIDE
        assert scope.grants(ADMIN, permission)
        assert scope.grants(OF_A, permission) is not organisation_wide
    viewer = Principal(id="v", name="v", kind="staff", permissions=frozenset(
        {Permission.VIEW_SESSIONS}), unrestricted=True)
    assert not scope.grants(viewer, Permission.VIEW_AUDIT)
    assert scope.refusal(viewer, Permission.VIEW_AUDIT) == "missing permission audit.view"
    assert "every group" in scope.refusal(OF_A, Permission.VIEW_AUDIT)


def test_out_of_scope_and_unknown_answer_alike() -> None:
    assert scope.exam_not_found("e").message == "no exam 'e'"
    assert scope.session_not_found("e", "s").message == "no session 's' in exam 'e'"
