"""The identity layer on its own: users, activation, lockout (with a fake clock), last-admin
rule, listing, CSV exports, audit, roles. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from realtime.auth.permissions import Permission
from realtime.db.database import Database
from realtime.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from realtime.identity import models as _tables  # noqa: F401
from realtime.identity.audit import AuditLog, Ctx, audit_csv
from realtime.identity.roles import RolesError, RoleSet
from realtime.identity.service import (
    IdentityPolicy,
    IdentityService,
    LoginBlocked,
    users_csv,
)

ROOT = Path(__file__).resolve().parent.parent
ADMIN = Ctx("staff:root", "10.0.0.1")
PASSWORD = "correct horse battery"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_service(db: Database, clock: Clock, **policy: Any) -> IdentityService:
    fast = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    return IdentityService(db, RoleSet.default(), AuditLog(db, clock), IdentityPolicy(**policy),
                           clock, hasher=fast)


@pytest.fixture
def service(db: Database, clock: Clock) -> IdentityService:
    return make_service(db, clock)


async def active_user(
    service: IdentityService, email: str, roles: list[str], groups: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    user, token = await service.create_user(
        ADMIN, {"full_name": email.split("@")[0].title(), "email": email, "roles": roles,
                "groups": groups or [], **extra}
    )
    assert token is not None and user["status"] == "invited"
    return await service.activate(Ctx("anonymous"), token, PASSWORD)


async def test_invite_activate_and_login(service: IdentityService, clock: Clock) -> None:
    user, token = await service.create_user(
        ADMIN, {"full_name": "Ada Lovelace", "email": "Ada@Example.org", "login": "ada",
                "job_title": "Proctor", "phone": "+33 1", "roles": ["proctor"],
                "groups": ["A"]},
    )
    assert user["email"] == "ada@example.org" and user["status"] == "invited"
    assert token
    with pytest.raises(Unauthorized):  # no password yet
        await service.login("ada", PASSWORD)
    with pytest.raises(BadRequest):
        await service.activate(Ctx("anonymous"), token, "short")
    active = await service.activate(Ctx("anonymous"), token, PASSWORD)
    assert active["status"] == "active" and active["activated_at"] == clock.now
    with pytest.raises(NotFound):  # one-time
        await service.activate(Ctx("anonymous"), token, PASSWORD)
    for name in ("ada", "ADA@example.org"):
        done = await service.login(name, PASSWORD, "1.2.3.4")
        principal = await service.principal(done.token)
        assert principal is not None
        assert principal.kind == "staff" and principal.id == user["id"]
        assert principal.groups == {"A"} and not principal.unrestricted
        assert principal.can(Permission.LOCK) and not principal.can(Permission.UNLOCK)
    assert await service.logout(done.token)
    assert await service.principal(done.token) is None
    listed = await service.get_user(user["id"])
    assert listed["last_login_at"] == clock.now and listed["last_logout_at"] == clock.now


async def test_activation_token_expires(db: Database, clock: Clock) -> None:
    service = make_service(db, clock, activation_ttl=3600)
    user, token = await service.create_user(
        ADMIN, {"full_name": "Late", "email": "late@x.org", "roles": ["viewer"]}
    )
    assert token
    clock.now += 3601
    with pytest.raises(Conflict, match="expired"):
        await service.activate(Ctx("anonymous"), token, PASSWORD)
    fresh, _ = await service.reissue_activation(ADMIN, user["id"])
    assert (await service.activate(Ctx("anonymous"), fresh, PASSWORD))["status"] == "active"


async def test_default_activation_ttl_is_a_week(service: IdentityService) -> None:
    assert service.policy.activation_ttl == 168 * 3600


async def test_validation_and_uniqueness(db: Database, clock: Clock) -> None:
    service = make_service(db, clock, require_group=True)
    with pytest.raises(BadRequest, match="group"):
        await service.create_user(ADMIN, {"full_name": "X", "email": "x@x.org",
                                          "roles": ["proctor"]})
    # admins see every group, so they need none
    await service.create_user(ADMIN, {"full_name": "Root", "email": "root@x.org",
                                      "roles": ["admin"]})
    with pytest.raises(BadRequest, match="role"):
        await service.create_user(ADMIN, {"full_name": "X", "email": "y@x.org", "roles": [],
                                          "groups": ["A"]})
    with pytest.raises(BadRequest, match="unknown roles"):
        await service.create_user(ADMIN, {"full_name": "X", "email": "y@x.org",
                                          "roles": ["wizard"], "groups": ["A"]})
    with pytest.raises(BadRequest):
        await service.create_user(ADMIN, {"email": "y@x.org", "roles": ["viewer"],
                                          "groups": ["A"]})
    with pytest.raises(BadRequest, match="e-mail"):
        await service.create_user(ADMIN, {"full_name": "X", "email": "nope", "roles": ["viewer"],
                                          "groups": ["A"]})
    with pytest.raises(Conflict):
        await service.create_user(ADMIN, {"full_name": "Again", "email": "ROOT@x.org",
                                          "roles": ["viewer"], "groups": ["A"]})


async def test_lockout_with_a_fake_clock(service: IdentityService, clock: Clock) -> None:
    user = await active_user(service, "bob@x.org", ["proctor"], ["A"])
    for _ in range(4):
        with pytest.raises(Unauthorized):
            await service.login("bob@x.org", "wrong password")
    with pytest.raises(LoginBlocked) as blocked:
        await service.login("bob@x.org", "wrong password")  # the 5th failure blocks
    assert blocked.value.blocked_until == clock.now + 3600
    assert "blocked until" in blocked.value.message
    with pytest.raises(LoginBlocked):  # even with the right password
        await service.login("bob@x.org", PASSWORD)
    [listed] = await service.list_users(search="bob")
    assert listed["blocked_until"] == clock.now + 3600
    clock.now += 3599
    with pytest.raises(LoginBlocked):
        await service.login("bob@x.org", PASSWORD)
    clock.now += 1  # an hour later it lifts
    done = await service.login("bob@x.org", PASSWORD)
    [listed] = await service.list_users(search="bob")
    assert listed["blocked_until"] is None and listed["logged_in"] is True
    assert listed["last_login_at"] == clock.now
    # a success resets the count
    for _ in range(4):
        with pytest.raises(Unauthorized):
            await service.login("bob@x.org", "wrong password")
    await service.login("bob@x.org", PASSWORD)
    for _ in range(4):
        with pytest.raises(Unauthorized):
            await service.login("bob@x.org", "wrong password")
    with pytest.raises(LoginBlocked):
        await service.login("bob@x.org", "wrong password")
    await service.unlock(ADMIN, user["id"])  # admin unlock lifts at once
    assert (await service.login("bob@x.org", PASSWORD)).token != done.token
    actions = [e["action"] for e in await service.audit.query(user=user["id"])]
    assert actions.count("lockout") == 2 and "unlock" in actions
    assert actions.count("login_failed") == 14 and "login_blocked" in actions


async def test_lockout_is_configurable(db: Database, clock: Clock) -> None:
    service = make_service(db, clock, max_failures=2, block_seconds=60)
    await active_user(service, "c@x.org", ["viewer"])
    with pytest.raises(Unauthorized):
        await service.login("c@x.org", "bad password")
    with pytest.raises(LoginBlocked) as blocked:
        await service.login("c@x.org", "bad password")
    assert blocked.value.blocked_until == clock.now + 60


async def test_unknown_logins_are_blocked_too(service: IdentityService) -> None:
    for _ in range(4):
        with pytest.raises(Unauthorized):
            await service.login("ghost", "whatever!")
    with pytest.raises(LoginBlocked):
        await service.login("ghost", "whatever!")


async def test_concurrent_failures_count_exactly(service: IdentityService) -> None:
    await active_user(service, "d@x.org", ["viewer"])
    results = await asyncio.gather(
        *(service.login("d@x.org", "bad password") for _ in range(7)), return_exceptions=True
    )
    assert sum(isinstance(r, LoginBlocked) for r in results) >= 3
    assert sum(isinstance(r, Unauthorized) for r in results) == 4


async def test_last_admin_rule(service: IdentityService) -> None:
    first = await active_user(service, "root1@x.org", ["admin"])
    with pytest.raises(Conflict, match="last active admin"):
        await service.deactivate(ADMIN, first["id"])
    with pytest.raises(Conflict, match="last active admin"):
        await service.update_user(ADMIN, first["id"], {"roles": ["proctor"]})
    # an invited admin does not count
    invited, _ = await service.create_user(
        ADMIN, {"full_name": "Root Two", "email": "root2@x.org", "roles": ["admin"]}
    )
    with pytest.raises(Conflict):
        await service.deactivate(ADMIN, first["id"])
    await service.set_password(ADMIN, invited["id"], PASSWORD)
    changed = await service.update_user(ADMIN, first["id"], {"roles": ["proctor", "viewer"]})
    assert changed["roles"] == ["proctor", "viewer"]
    with pytest.raises(Conflict):
        await service.deactivate(ADMIN, invited["id"])
    assert await service.count_active_admins() == 1
    entries = await service.audit.query(user=first["id"], action="roles_changed")
    assert entries[0]["details"] == {"before": ["admin"], "after": ["proctor", "viewer"]}


async def test_deactivate_and_reactivate(service: IdentityService) -> None:
    await active_user(service, "root@x.org", ["admin"])
    user = await active_user(service, "e@x.org", ["proctor"], ["A"])
    done = await service.login("e@x.org", PASSWORD)
    gone = await service.deactivate(ADMIN, user["id"])
    assert gone["status"] == "deactivated" and gone["deactivated_at"] is not None
    assert await service.principal(done.token) is None  # logged out everywhere
    with pytest.raises(Forbidden, match="deactivated"):
        await service.login("e@x.org", PASSWORD)
    with pytest.raises(Unauthorized):  # a wrong password tells nothing about the account
        await service.login("e@x.org", "bad password")
    back, token = await service.reactivate(ADMIN, user["id"])
    assert back["status"] == "active" and token is None
    assert await service.principal((await service.login("e@x.org", PASSWORD)).token)


async def test_candidate_users_are_not_staff(service: IdentityService) -> None:
    await active_user(service, "kid@x.org", ["candidate"])
    principal = await service.principal((await service.login("kid@x.org", PASSWORD)).token)
    assert principal is not None and principal.kind == "candidate"
    assert not any(principal.can(p) for p in Permission)


async def test_list_filters_and_csv(service: IdentityService, clock: Clock) -> None:
    admin = await active_user(service, "root@x.org", ["admin"])
    clock.now += 100
    alice = await active_user(service, "alice.smith@x.org", ["proctor"], ["A"], login="alice")
    clock.now += 100
    bob = await active_user(service, "bob.smith@x.org", ["viewer", "scheduler"], ["B"])
    await service.create_user(ADMIN, {"full_name": "=cmd|' /C calc'!A0", "email": "evil@x.org",
                                      "roles": ["viewer"], "groups": ["A"]})
    clock.now += 100
    await service.deactivate(ADMIN, bob["id"])
    await service.login("alice", PASSWORD)
    clock.now += 10
    await service.logout((await service.login("alice", PASSWORD)).token)

    def ids(users: list[dict[str, Any]]) -> set[str]:
        return {u["id"] for u in users}

    assert ids(await service.list_users(search="SMITH")) == {alice["id"], bob["id"]}
    assert ids(await service.list_users(role="proctor")) == {alice["id"]}
    assert ids(await service.list_users(group="B")) == {bob["id"]}
    assert ids(await service.list_users(status="deactivated")) == {bob["id"]}
    assert len(await service.list_users(status="invited")) == 1
    start = admin["activated_at"]
    assert ids(await service.list_users(activated=(start + 50, start + 150))) == {alice["id"]}
    assert ids(await service.list_users(activated=(start + 50, None))) == {alice["id"], bob["id"]}
    assert ids(await service.list_users(deactivated=(start, None))) == {bob["id"]}
    [row] = await service.list_users(search="alice")
    assert row["logged_in"] is True  # the first login is still open

    text = users_csv(await service.list_users())
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == ["name", "login", "email", "roles", "last_login",
                               "last_sign_out", "status"]
    by_email = {r["email"]: r for r in parsed}
    assert by_email["alice.smith@x.org"]["login"] == "alice"
    assert by_email["alice.smith@x.org"]["last_login"].startswith("20")
    assert by_email["alice.smith@x.org"]["last_sign_out"] == by_email["alice.smith@x.org"][
        "last_login"]
    assert by_email["bob.smith@x.org"]["status"] == "deactivated"
    assert by_email["bob.smith@x.org"]["roles"] == "viewer scheduler"
    assert by_email["evil@x.org"]["name"].startswith("'=")  # no formula injection
    assert by_email["evil@x.org"]["last_login"] == ""


async def test_audit_query_and_csv(service: IdentityService, clock: Clock) -> None:
    user = await active_user(service, "f@x.org", ["viewer"])
    t0 = clock.now
    clock.now += 60
    await service.login("f@x.org", PASSWORD, "192.0.2.7")
    clock.now += 60
    with pytest.raises(Unauthorized):
        await service.login("f@x.org", "bad password", "192.0.2.8")
    every = await service.audit.query(user=user["id"])
    assert [e["action"] for e in every] == ["user_created", "user_activated", "login",
                                             "login_failed"]
    window = await service.audit.query(user=user["id"], since=t0 + 30, until=t0 + 90)
    assert [(e["action"], e["ip"], e["actor"]) for e in window] == [
        ("login", "192.0.2.7", f"staff:{user['id']}")
    ]
    assert [e["action"] for e in await service.audit.query(action="login_failed")] == [
        "login_failed"]
    parsed = list(csv.DictReader(io.StringIO(audit_csv(every))))
    assert [r["action"] for r in parsed] == [e["action"] for e in every]
    assert parsed[2]["ip"] == "192.0.2.7" and json.loads(parsed[0]["details"])["user"]


def test_roles_file_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "roles.json"
    path.write_text(json.dumps({"roles": {
        "proctor": {"permissions": ["sessions.view", "sessions.unlock"]},
        "auditor": {"permissions": ["audit.view"], "description": "reads the audit log"},
        "chief": {"permissions": "*", "unrestricted": True},
    }}))
    roles = RoleSet.load(path)
    assert roles.permissions_of(["proctor"]) == {Permission.VIEW_SESSIONS, Permission.UNLOCK}
    assert roles.permissions_of(["auditor"]) == {Permission.VIEW_AUDIT}
    assert roles.unrestricted(["chief"]) and not roles.unrestricted(["auditor"])
    assert "supervisor" in roles
    for bad in ({"roles": {"admin": {"permissions": []}}},
                {"roles": {"x": {"permissions": ["nope"]}}}, {"roles": []}):
        path.write_text(json.dumps(bad))
        with pytest.raises(RolesError):
            RoleSet.load(path)


def test_default_matrix() -> None:
    roles = RoleSet.default()
    session_actions = {Permission.AUTHORIZE, Permission.PAUSE, Permission.RESUME, Permission.LOCK,
                       Permission.UNLOCK, Permission.TERMINATE, Permission.EXTEND,
                       Permission.NOTICE}
    assert roles.permissions_of(["admin"]) == set(Permission)
    assert session_actions | {Permission.REASSIGN_GUESTS} <= roles.permissions_of(["supervisor"])
    proctor = roles.permissions_of(["proctor"])
    assert session_actions - proctor == {Permission.UNLOCK, Permission.TERMINATE}
    assert {Permission.MANAGE_EXAMS, Permission.CREATE_SESSIONS} <= roles.permissions_of(
        ["scheduler"])
    assert roles.permissions_of(["viewer"]) == {Permission.VIEW_SESSIONS,
                                                Permission.VIEW_HISTORY}
    assert roles.permissions_of(["candidate"]) == set()
    assert [r for r in roles.names() if roles.unrestricted([r])] == ["admin"]


def test_readme_roles_table_matches_the_code() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "roles", "--markdown"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout
    assert out == RoleSet.default().markdown()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- roles:start -->\n", "<!-- roles:end -->"
    section = readme[readme.index(start) + len(start): readme.index(end)]
    assert section == out, "README roles table is stale: run `realtime roles --markdown`"


def test_cli_creates_the_first_admin(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    env = {**os.environ, "REALTIME_DATABASE_URL": url}
    cmd = [sys.executable, "-m", "realtime.cli", "create-admin", "--email", "Root@Example.org",
           "--name", "Root Admin", "--login", "root", "--password", PASSWORD]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "created admin" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert again.returncode == 1 and "already exists" in again.stderr

    async def check() -> None:
        db = await Database.connect(url)
        try:
            service = make_service(db, Clock())
            service.clock = __import__("time").time
            done = await service.login("root", PASSWORD)
            principal = await service.principal(done.token)
            assert principal is not None and principal.unrestricted
            assert principal.permissions == set(Permission)
        finally:
            await db.close()

    asyncio.run(check())
