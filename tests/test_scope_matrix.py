"""Group scope as a matrix, against one real server: every role × every relation between the
caller and an exam × every REST endpoint and dashboard-socket operation that reads or changes
an exam, a session, its history, irregularities, the audit log or an export.

The relations (the caller's groups → the exam it acts on):

* `own`: the exam names the caller's group (A → exam of A): it manages the exam.
* `other`: an exam of B with no candidate of the caller's group (A → exam of B).
* `candidates`: an exam of B where one candidate is of the caller's group (C → exam of B with a
  C candidate): the caller sees that exam and that session only.
* `no_group`: a restricted caller without groups (→ exam of A).
* `ungrouped`: an exam that names no group, without the caller's candidates (A → exam of -).

The rule under test is `realtime/identity/scope.py`; `oracle_sees` below restates it
independently. Expected answers: without the permission 403 (checked before anything is looked
up); out of scope exactly the 404 body of something that does not exist; seen but not managed
403 for changes. Every denied call must have changed nothing (`fingerprint`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from clients import JSON, WsClient
from redis_server import RedisServer
from server import STAFF_TOKEN, ServerProcess
from websockets.exceptions import ConnectionClosed

from realtime.identity.roles import RoleSet

PASSWORD = "a good long password"
ROLES_FILE = {
    "roles": {
        # a restricted role holding organisation-wide permissions: they must not count
        "auditor": {"permissions": ["sessions.view", "sessions.history", "audit.view",
                                    "users.export"],
                    "description": "Reads the audit log, but only sees group A"},
    }
}
ROLE_SET = RoleSet.default()
ROLE_SET.merge(ROLES_FILE["roles"])
ROLES = ["admin", "supervisor", "proctor", "scheduler", "viewer", "auditor"]

# exam key -> (exam id, groups); session key -> (exam key, candidate group, candidate name)
EXAMS = {"EA": ("scope-ea", ["A"]), "EB": ("scope-eb", ["B"]), "EN": ("scope-en", [])}
SESSIONS = {
    "a1": ("EA", "A", "Ada Alpha"),
    "ax": ("EA", "X", "Xavier Visitor"),
    "b1": ("EB", "B", "Bertha Secretname"),
    "c1": ("EB", "C", "Carl Ceeman"),
    "n1": ("EN", "", "Nora Nogroup"),
}


@dataclass(frozen=True)
class Relation:
    user_groups: tuple[str, ...]
    exam: str  # a key of EXAMS


RELATIONS = {
    "own": Relation(("A",), "EA"),
    "other": Relation(("A",), "EB"),
    "candidates": Relation(("C",), "EB"),
    "no_group": Relation((), "EA"),
    "ungrouped": Relation(("A",), "EN"),
}
MATRIX = [pytest.param(role, rel, id=f"{role}-{rel}") for role in ROLES for rel in RELATIONS]


# -- the oracle ------------------------------------------------------------------------------


def has(role: str, permission: str) -> bool:
    return permission in {p.value for p in ROLE_SET.roles[role].permissions}


def unrestricted(role: str) -> bool:
    return ROLE_SET.roles[role].unrestricted


def oracle_manages(role: str, groups: tuple[str, ...], exam_groups: list[str]) -> bool:
    return unrestricted(role) or bool(set(groups) & set(exam_groups))


def oracle_sees(role: str, groups: tuple[str, ...], exam_groups: list[str], group: str) -> bool:
    return oracle_manages(role, groups, exam_groups) or (bool(group) and group in groups)


# -- one server and one world per module -----------------------------------------------------


@dataclass
class World:
    server: ServerProcess
    admin: httpx.Client
    sessions: dict[str, str] = field(default_factory=dict)  # session key -> id
    tokens: dict[tuple[str, tuple[str, ...]], str] = field(default_factory=dict)

    def token(self, role: str, groups: tuple[str, ...]) -> str:
        """The login token of the module's user with `role` and `groups`."""
        return self.tokens[(role, groups)]

    def new_login(self, role: str, groups: tuple[str, ...]) -> str:
        """A new active user with `role` and `groups`, and a real login of it."""
        email = f"{role}-{uuid.uuid4().hex[:8]}@example.org"
        with httpx.Client(base_url=self.server.url, timeout=60,
                          headers={"Authorization": f"Bearer {STAFF_TOKEN}"}) as http:
            r = http.post("/api/v1/users", json={
                "full_name": f"{role} of {groups}", "email": email, "roles": [role],
                "groups": list(groups)})
            assert r.status_code == 201, r.text
            r2 = http.post("/api/v1/auth/activate", json={
                "token": r.json()["activation_token"], "password": PASSWORD})
            assert r2.status_code == 200, r2.text
            r3 = http.post("/api/v1/auth/login", json={"login": email, "password": PASSWORD},
                           headers={"Authorization": ""})
            assert r3.status_code == 200, r3.text
            token: str = r3.json()["token"]
            return token

    def client(self, role: str, relation: str) -> httpx.Client:
        token = self.token(role, RELATIONS[relation].user_groups)
        return httpx.Client(base_url=self.server.url, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})

    def exam_sessions(self, exam_key: str) -> list[dict[str, Any]]:
        r = self.admin.get(f"/api/v1/exams/{EXAMS[exam_key][0]}/sessions")
        assert r.status_code == 200, r.text
        sessions: list[dict[str, Any]] = r.json()["sessions"]
        return sessions

    def fingerprint(self, exam_key: str) -> dict[str, Any]:
        """What a denied call could have changed: every exam, and the sessions (versions) and
        irregularities of the exam it was aimed at."""
        exam_id = EXAMS[exam_key][0]
        exams = {e["id"]: (e["title"], e["groups"], e["settings"])
                 for e in self.admin.get("/api/v1/exams").json()["exams"]}
        sessions = {s["id"]: s["version"] for s in self.exam_sessions(exam_key)}
        irregularities = self.admin.get(f"/api/v1/exams/{exam_id}/irregularities").json()
        return {"exams": exams, "sessions": sessions,
                "irregularities": len(irregularities["irregularities"])}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("scope")
    roles_file = Path(workdir) / "roles.json"
    roles_file.write_text(json.dumps(ROLES_FILE))
    server = ServerProcess(workdir=workdir, roles_file=str(roles_file),
                           auth_recheck_interval=0.3).start()
    admin = httpx.Client(base_url=server.url, timeout=30,
                         headers={"Authorization": f"Bearer {STAFF_TOKEN}"})
    w = World(server, admin)
    try:
        for exam_id, groups in EXAMS.values():
            r = admin.post("/api/v1/exams", json={"id": exam_id, "title": exam_id,
                                                  "groups": groups})
            assert r.status_code == 201, r.text
        for key, (exam_key, group, name) in SESSIONS.items():
            r = admin.post(f"/api/v1/exams/{EXAMS[exam_key][0]}/sessions", json={
                "candidates": [{"candidate_id": f"cand-{key}", "name": name, "group": group}]})
            assert r.status_code == 201, r.text
            w.sessions[key] = WORLD_IDS[key] = r.json()["sessions"][0]["id"]
            r = admin.post(f"/api/v1/exams/{EXAMS[exam_key][0]}/sessions/{w.sessions[key]}"
                           "/irregularities",
                           json={"category": "technical/workstation", "note": key})
            assert r.status_code == 201, r.text
        # every user at once: their password hashing runs in the server's threads
        users = sorted({(role, rel.user_groups) for role in ROLES for rel in RELATIONS.values()})
        with ThreadPoolExecutor(max_workers=6) as pool:
            tokens = pool.map(lambda user: w.new_login(*user), users)
            w.tokens.update(zip(users, tokens, strict=True))
        yield w
    finally:
        admin.close()
        server.stop()


@dataclass
class Case:
    """One (role, relation): what the caller should see of its exam."""

    role: str
    relation: str
    exam_key: str
    exam_id: str
    exam_groups: list[str]
    visible: list[str]  # session ids of the exam's seed sessions it sees
    hidden: list[str]
    manages: bool

    @property
    def exam_visible(self) -> bool:
        return self.manages or bool(self.visible)

    def sees(self, session: dict[str, Any]) -> bool:
        return oracle_sees(self.role, RELATIONS[self.relation].user_groups, self.exam_groups,
                           session["group"])


def case_of(world: World, role: str, relation: str) -> Case:
    rel = RELATIONS[relation]
    exam_id, exam_groups = EXAMS[rel.exam]
    visible: list[str] = []
    hidden: list[str] = []
    for key, (exam_key, group, _) in SESSIONS.items():
        if exam_key != rel.exam:
            continue
        sees = oracle_sees(role, rel.user_groups, exam_groups, group)
        (visible if sees else hidden).append(world.sessions[key])
    return Case(role, relation, rel.exam, exam_id, exam_groups, visible, hidden,
                oracle_manages(role, rel.user_groups, exam_groups))


def no_exam(exam_id: str) -> dict[str, Any]:
    return {"error": {"code": "not_found", "message": f"no exam {exam_id!r}"}}


def no_session(case: Case, session_id: str) -> dict[str, Any]:
    """The 404 of a session that does not exist (or, if the exam is not seen, of the exam)."""
    if not case.exam_visible:
        return no_exam(case.exam_id)
    return {"error": {"code": "not_found",
                      "message": f"no session {session_id!r} in exam {case.exam_id!r}"}}


def assert_denied(r: httpx.Response, status: int, body: dict[str, Any] | None = None) -> None:
    assert r.status_code == status, r.text
    if body is not None:
        assert r.json() == body
    else:
        assert r.json()["error"]["code"] == ("forbidden" if status == 403 else "not_found")


def expect_exam_access(case: Case, permission: str, change: bool = False) -> int:
    """200 (allowed), 403 (permission, or a change of an exam seen only through candidates)
    or 404 (out of scope)."""
    if not has(case.role, permission):
        return 403
    if not case.exam_visible:
        return 404
    if change and not case.manages:
        return 403
    return 200


# -- exams -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_list_and_get_exam_agree(world: World, role: str, relation: str) -> None:
    case = case_of(world, role, relation)
    with world.client(role, relation) as http:
        listed = http.get("/api/v1/exams")
        got = http.get(f"/api/v1/exams/{case.exam_id}")
        unknown = http.get("/api/v1/exams/no-such-exam")
    expected = expect_exam_access(case, "sessions.view")
    if expected == 403:
        assert_denied(listed, 403)
        assert_denied(got, 403)
        assert_denied(unknown, 403)  # no permission: nothing is looked up
        return
    assert listed.status_code == 200
    assert (case.exam_id in {e["id"] for e in listed.json()["exams"]}) == case.exam_visible
    assert unknown.json() == no_exam("no-such-exam")
    if expected == 404:
        assert_denied(got, 404, no_exam(case.exam_id))
        return
    assert got.status_code == 200, got.text
    seen = [s for s in world.exam_sessions(case.exam_key) if case.sees(s)]
    assert sum(got.json()["counts"].values()) == len(seen)  # counts only what it sees


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_update_exam(world: World, role: str, relation: str) -> None:
    case = case_of(world, role, relation)
    before = world.fingerprint(case.exam_key)
    title = f"renamed {role} {relation}"
    with world.client(role, relation) as http:
        r = http.patch(f"/api/v1/exams/{case.exam_id}", json={"title": title})
    expected = expect_exam_access(case, "exams.manage", change=True)
    if expected != 200:
        assert_denied(r, expected, no_exam(case.exam_id) if expected == 404 else None)
        assert world.fingerprint(case.exam_key) == before
        return
    assert r.status_code == 200, r.text
    assert world.admin.get(f"/api/v1/exams/{case.exam_id}").json()["title"] == title


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_exam_management(world: World, role: str, relation: str) -> None:
    """Archive and restore (exams.manage), a roster import and the access-code exports
    (sessions.create) act only on an exam the caller manages; each denial changed nothing."""
    case = case_of(world, role, relation)
    base = f"/api/v1/exams/{case.exam_id}"
    # one row with a guessable code: reported as an error, so even an allowed import adds none
    roster = b"candidate_id,access_code\r\nscope-new,ABC\r\n"
    calls = [("DELETE", "", None, "exams.manage"), ("POST", "/restore", None, "exams.manage"),
             ("POST", "/roster", roster, "sessions.create"),
             ("GET", "/access-codes.csv", None, "sessions.create"),
             ("GET", "/access-codes.html", None, "sessions.create")]
    before = world.fingerprint(case.exam_key)
    with world.client(role, relation) as http:
        for method, suffix, body, permission in calls:
            r = http.request(method, base + suffix, content=body)
            expected = expect_exam_access(case, permission, change=True)
            if expected != 200:
                assert_denied(r, expected, no_exam(case.exam_id) if expected == 404 else None)
                continue
            assert r.status_code == 200, (suffix, r.text)
            if suffix == "/roster":
                assert r.json()["errors"] == 1 and r.json()["created"] == 0
            if suffix.startswith("/access-codes"):
                for leaked in case.hidden + hidden_names(case):
                    assert leaked not in r.text, (suffix, leaked)
    assert world.admin.get(base).json()["archived_at"] is None  # restored, or never archived
    assert world.fingerprint(case.exam_key) == before


@pytest.mark.parametrize("change", ["add_foreign_group", "drop_all_groups"])
@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_change_exam_groups(world: World, role: str, relation: str, change: str) -> None:
    """Only the caller's own groups may be added or removed, and its exam keeps one of them."""
    case = case_of(world, role, relation)
    groups = [*case.exam_groups, "Z"] if change == "add_foreign_group" else []
    before = world.fingerprint(case.exam_key)
    with world.client(role, relation) as http:
        r = http.patch(f"/api/v1/exams/{case.exam_id}", json={"groups": groups})
    expected = expect_exam_access(case, "exams.manage", change=True)
    if expected == 200 and not unrestricted(role):
        expected = 403  # "Z" is not theirs; no groups would leave the exam out of their scope
    if expected != 200:
        assert_denied(r, expected, no_exam(case.exam_id) if expected == 404 else None)
        assert world.fingerprint(case.exam_key) == before
        return
    assert r.status_code == 200, r.text
    restored = world.admin.patch(f"/api/v1/exams/{case.exam_id}",
                                 json={"groups": case.exam_groups})
    assert restored.status_code == 200, restored.text


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_create_exam(world: World, role: str, relation: str) -> None:
    """A restricted scheduler creates exams only for its own groups (the exam of the relation
    names the groups asked for)."""
    case = case_of(world, role, relation)
    exam_id = f"new-{role}-{relation}"
    before = world.fingerprint(case.exam_key)
    with world.client(role, relation) as http:
        r = http.post("/api/v1/exams", json={"id": exam_id, "title": exam_id,
                                             "groups": case.exam_groups})
        if not has(role, "exams.manage") or not case.manages:
            assert_denied(r, 403)
            assert world.fingerprint(case.exam_key) == before
            return
        assert r.status_code == 201, r.text
        assert http.get(f"/api/v1/exams/{exam_id}").status_code == 200  # its creator sees it


# -- sessions --------------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_list_sessions(world: World, role: str, relation: str) -> None:
    case = case_of(world, role, relation)
    with world.client(role, relation) as http:
        r = http.get(f"/api/v1/exams/{case.exam_id}/sessions")
        filtered = http.get(f"/api/v1/exams/{case.exam_id}/sessions",
                            params={"search": "Secretname"})
    expected = expect_exam_access(case, "sessions.view")
    if expected != 200:
        assert_denied(r, expected, no_exam(case.exam_id) if expected == 404 else None)
        assert_denied(filtered, expected, no_exam(case.exam_id) if expected == 404 else None)
        return
    assert r.status_code == 200, r.text
    seen = {s["id"] for s in world.exam_sessions(case.exam_key) if case.sees(s)}
    assert {s["id"] for s in r.json()["sessions"]} == seen
    assert set(case.visible) <= seen and not set(case.hidden) & seen
    found = {s["id"] for s in filtered.json()["sessions"]}
    assert found == ({world.sessions["b1"]} & seen)


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_create_sessions(world: World, role: str, relation: str) -> None:
    """Adding sessions changes the exam: it needs one of the exam's groups."""
    case = case_of(world, role, relation)
    before = world.fingerprint(case.exam_key)
    with world.client(role, relation) as http:
        r = http.post(f"/api/v1/exams/{case.exam_id}/sessions", json={
            "candidates": [{"candidate_id": f"new-{role}-{relation}", "group": "Q"}]})
    expected = expect_exam_access(case, "sessions.create", change=True)
    if expected != 200:
        assert_denied(r, expected, no_exam(case.exam_id) if expected == 404 else None)
        assert world.fingerprint(case.exam_key) == before
        return
    assert r.status_code == 201, r.text


def session_targets(world: World, case: Case) -> list[tuple[str, bool]]:
    """(session id, seen?): the exam's seed sessions and one that does not exist."""
    return ([(sid, True) for sid in case.visible] + [(sid, False) for sid in case.hidden]
            + [("0000000000000000", False)])


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_read_session_and_history(world: World, role: str, relation: str) -> None:
    case = case_of(world, role, relation)
    with world.client(role, relation) as http:
        for sid, seen in session_targets(world, case):
            base = f"/api/v1/exams/{case.exam_id}/sessions/{sid}"
            for path, permission in ((base, "sessions.view"), (base + "/history",
                                                                "sessions.history")):
                r = http.get(path)
                if not has(role, permission):
                    assert_denied(r, 403)
                elif seen:
                    assert r.status_code == 200, (path, r.text)
                else:
                    assert_denied(r, 404, no_session(case, sid))


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_report_irregularity(world: World, role: str, relation: str) -> None:
    case = case_of(world, role, relation)
    with world.client(role, relation) as http:
        for sid, seen in session_targets(world, case):
            before = world.fingerprint(case.exam_key)
            r = http.post(f"/api/v1/exams/{case.exam_id}/sessions/{sid}/irregularities",
                          json={"category": "examinee/behaviour", "note": f"{role} {relation}"})
            if has(role, "sessions.irregularity") and seen:
                assert r.status_code == 201, r.text
                continue
            if not has(role, "sessions.irregularity"):
                assert_denied(r, 403)
            else:
                assert_denied(r, 404, no_session(case, sid))
            assert world.fingerprint(case.exam_key) == before


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_list_irregularities(world: World, role: str, relation: str) -> None:
    case = case_of(world, role, relation)
    with world.client(role, relation) as http:
        r = http.get(f"/api/v1/exams/{case.exam_id}/irregularities")
    expected = expect_exam_access(case, "sessions.history")
    if expected != 200:
        assert_denied(r, expected, no_exam(case.exam_id) if expected == 404 else None)
        return
    assert r.status_code == 200, r.text
    about = {row["session_id"] for row in r.json()["irregularities"]}
    assert set(case.visible) <= about and not set(case.hidden) & about


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_guest_sessions_and_reassign(world: World, role: str, relation: str) -> None:
    case = case_of(world, role, relation)
    with world.client(role, relation) as http:
        r = http.get(f"/api/v1/exams/{case.exam_id}/guest-sessions")
        expected = expect_exam_access(case, "sessions.view")
        if expected != 200:
            assert_denied(r, expected, no_exam(case.exam_id) if expected == 404 else None)
        else:
            assert r.status_code == 200 and r.json()["sessions"] == []
        for sid, seen in session_targets(world, case):
            before = world.fingerprint(case.exam_key)
            r = http.post(f"/api/v1/exams/{case.exam_id}/guest-sessions/{sid}/reassign",
                          json={"candidate_id": f"real-{role}"})
            if not has(role, "guests.reassign"):
                assert_denied(r, 403)
            elif seen:  # in scope: the next check answers (these are not guest sessions)
                assert r.status_code == 409, r.text
                assert r.json()["error"]["code"] in ("guest_session_active",
                                                     "not_a_guest_session")
            else:
                assert_denied(r, 404, no_session(case, sid))
            assert world.fingerprint(case.exam_key) == before


# -- history and exports --------------------------------------------------------------------


def hidden_names(case: Case) -> list[str]:
    keys = {sid: key for key, sid in WORLD_IDS.items()}
    return [SESSIONS[keys[sid]][2] for sid in case.hidden]


WORLD_IDS: dict[str, str] = {}  # session key -> id, filled by the world fixture


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_exam_history_and_exports(world: World, role: str, relation: str) -> None:
    """The exam's history and its exports show only the sessions in scope; an exam out of
    scope is the 404 of an unknown one."""
    case = case_of(world, role, relation)
    base = f"/api/v1/exams/{case.exam_id}"
    with world.client(role, relation) as http:
        for path, permission in ((base + "/history", "sessions.history"),
                                 (base + "/history.csv", "sessions.history"),
                                 (base + "/irregularities.csv", "sessions.history"),
                                 (base + "/sessions.csv", "sessions.view"),
                                 (base + "/sessions.html", "sessions.view")):
            r = http.get(path)
            expected = expect_exam_access(case, permission)
            if expected != 200:
                assert_denied(r, expected, no_exam(case.exam_id) if expected == 404 else None)
                continue
            assert r.status_code == 200, (path, r.text)
            for leaked in case.hidden + hidden_names(case):
                assert leaked not in r.text, (path, leaked)
            for shown in case.visible:
                assert shown in r.text or path.endswith(("sessions.csv", "sessions.html")), path
        for sid, seen in session_targets(world, case):
            r = http.get(f"{base}/sessions/{sid}/history.csv")
            if not has(role, "sessions.history"):
                assert_denied(r, 403)
            elif seen:
                assert r.status_code == 200, r.text
            else:
                assert_denied(r, 404, no_session(case, sid))


# -- commands --------------------------------------------------------------------------------


def notice(target: Any, **extra: Any) -> dict[str, Any]:
    return {"action": "notice", "text": "scope test", "target": target, **extra}


def skipped_not_found(sid: str) -> dict[str, Any]:
    return {"session_id": sid, "reason": "not_found", "message": "no such session in this exam"}


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_command_on_named_sessions(world: World, role: str, relation: str) -> None:
    """A named session out of scope is skipped exactly like one that does not exist."""
    case = case_of(world, role, relation)
    with world.client(role, relation) as http:
        for sid, seen in session_targets(world, case):
            before = world.fingerprint(case.exam_key)
            r = http.post(f"/api/v1/exams/{case.exam_id}/commands", json=notice(sid))
            expected = expect_exam_access(case, "sessions.notice")
            if expected != 200:
                assert_denied(r, expected, no_exam(case.exam_id) if expected == 404 else None)
                assert world.fingerprint(case.exam_key) == before
                continue
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body) == {"command_id", "action", "applied", "skipped"}
            if seen:
                assert [a["session_id"] for a in body["applied"]] == [sid]
            else:
                assert body["applied"] == [] and body["skipped"] == [skipped_not_found(sid)]
                assert world.fingerprint(case.exam_key) == before
        if case.hidden and expect_exam_access(case, "sessions.notice") == 200:
            # a mixed list: the same skips in the same order as for unknown ids
            r = http.post(f"/api/v1/exams/{case.exam_id}/commands",
                          json=notice([case.hidden[0], "0000000000000000"]))
            assert r.json()["skipped"] == [skipped_not_found(case.hidden[0]),
                                           skipped_not_found("0000000000000000")]


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_filtered_command_reveals_nothing(world: World, role: str, relation: str) -> None:
    """A filter over an out-of-scope candidate's name answers like one over a name nobody has
    (the `out_of_scope` count recovered a name in 227 requests); `all` touches only what the
    caller sees."""
    case = case_of(world, role, relation)
    with world.client(role, relation) as http:
        before = world.fingerprint(case.exam_key)
        secret = http.post(f"/api/v1/exams/{case.exam_id}/commands",
                           json=notice({"search": "Secretname"}))
        nobody = http.post(f"/api/v1/exams/{case.exam_id}/commands",
                           json=notice({"search": "Nobodyhasthisname"}))
        expected = expect_exam_access(case, "sessions.notice")
        if expected != 200:
            for r in (secret, nobody):
                assert_denied(r, expected, no_exam(case.exam_id) if expected == 404 else None)
            assert world.fingerprint(case.exam_key) == before
            return
        b1_seen = world.sessions["b1"] in case.visible
        strip = {"command_id"}
        if not b1_seen:
            assert {k: v for k, v in secret.json().items() if k not in strip} == \
                {k: v for k, v in nobody.json().items() if k not in strip}
            assert world.fingerprint(case.exam_key) == before
        everything = http.post(f"/api/v1/exams/{case.exam_id}/commands", json=notice("all"))
        assert everything.status_code == 200, everything.text
        seen = {s["id"] for s in world.exam_sessions(case.exam_key) if case.sees(s)}
        assert {a["session_id"] for a in everything.json()["applied"]} == seen
        assert set(everything.json()) == {"command_id", "action", "applied", "skipped"}
        after = world.fingerprint(case.exam_key)["sessions"]
        for sid in case.hidden:
            assert after[sid] == before["sessions"][sid]


def test_kept_command_answer_is_only_replayed_to_its_caller(world: World) -> None:
    """A command id is an idempotency key; another caller reusing it must not get the first
    caller's answer (which names sessions outside its scope)."""
    exam_id = EXAMS["EB"][0]
    command_id = f"shared-{uuid.uuid4().hex[:8]}"
    first = world.admin.post(f"/api/v1/exams/{exam_id}/commands",
                             json=notice("all", command_id=command_id))
    assert first.status_code == 200
    assert world.sessions["b1"] in {a["session_id"] for a in first.json()["applied"]}
    with world.client("proctor", "candidates") as http:
        again = http.post(f"/api/v1/exams/{exam_id}/commands",
                          json=notice("all", command_id=command_id))
    assert again.status_code == 200, again.text
    named = {a["session_id"] for a in again.json()["applied"]} | {
        s["session_id"] for s in again.json()["skipped"]}
    assert named == {world.sessions["c1"]}


# -- organisation-wide: audit log and exports ------------------------------------------------


@pytest.mark.parametrize(("role", "relation"), MATRIX)
def test_audit_and_exports(world: World, role: str, relation: str) -> None:
    """The audit log and the exports span every group: only unrestricted roles read them,
    whatever permissions a restricted role was given."""
    with world.client(role, relation) as http:
        for path, permission in (("/api/v1/audit", "audit.view"),
                                 ("/api/v1/audit.csv", "audit.view"),
                                 ("/api/v1/users.csv", "users.export"),
                                 ("/api/v1/users", "users.manage")):
            r = http.get(path)
            if has(role, permission) and unrestricted(role):
                assert r.status_code == 200, (path, r.text)
            else:
                assert_denied(r, 403)


# -- the dashboard socket --------------------------------------------------------------------


async def dashboard(world: World, role: str, relation: str) -> WsClient:
    token = world.token(role, RELATIONS[relation].user_groups)
    return await WsClient.connect(f"{world.server.ws_url}/ws/proctor", JSON,
                                  additional_headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize(("role", "relation"), MATRIX)
async def test_socket_subscribe_snapshot_and_deltas(
    world: World, role: str, relation: str
) -> None:
    """Scope on subscribe (an exam out of scope is `not_found` like an unknown one), on the
    snapshot, on every live delta, on catch-up and on commands."""
    case = case_of(world, role, relation)
    ws = await dashboard(world, role, relation)
    try:
        await ws.send({"type": "subscribe", "exam_id": "no-such-exam", "request_id": 1})
        unknown = await ws.recv("snapshot", "error")
        await ws.send({"type": "subscribe", "exam_id": case.exam_id, "request_id": 2})
        reply = await ws.recv("snapshot", "error")
        if not case.exam_visible:
            assert unknown["type"] == reply["type"] == "error"
            assert (reply["code"], reply["message"]) == ("not_found", f"no exam {case.exam_id!r}")
            assert (unknown["code"], unknown["message"]) == ("not_found", "no exam 'no-such-exam'")
            return
        assert reply["type"] == "snapshot", reply
        seen = {s["id"] for s in world.exam_sessions(case.exam_key) if case.sees(s)}
        assert {s["id"] for s in reply["sessions"]} == seen
        seq = reply["seq"]
        # live deltas: the hidden sessions change first, then the seen ones; the first deltas
        # this dashboard gets must be the seen ones (fan-out keeps the exam's order)
        for sid in case.hidden + case.visible:
            r = world.admin.post(f"/api/v1/exams/{case.exam_id}/commands",
                                 json=notice(sid))
            assert r.status_code == 200
        for sid in case.visible:
            assert (await ws.recv_event("notice"))["session_id"] == sid
        # catch-up from a sequence number: only what it sees
        await ws.send({"type": "subscribe", "exam_id": case.exam_id, "last_seq": seq})
        replay = await ws.recv("events", "snapshot")
        assert replay["type"] == "events"
        assert {e["session_id"] for e in replay["events"]} == set(case.visible)
        # commands over the socket: out of scope is skipped as unknown
        for i, (sid, seen_it) in enumerate(session_targets(world, case)):
            await ws.send({"type": "command", "request_id": 10 + i, **notice(sid)})
            answer = await ws.recv("command_result", "error")
            if not has(role, "sessions.notice"):
                assert (answer["type"], answer["code"]) == ("error", "forbidden")
            elif seen_it:
                assert [a["session_id"] for a in answer["applied"]] == [sid]
            else:
                assert answer["skipped"] == [skipped_not_found(sid)]
                assert "out_of_scope" not in answer
    finally:
        await ws.close()


async def test_exam_regrouped_away_closes_its_dashboards(world: World) -> None:
    """A dashboard that managed an exam whose groups change away from it stops getting deltas
    and is closed (4403): what it shows no longer matches its scope."""
    exam_id = f"regroup-{uuid.uuid4().hex[:6]}"
    assert world.admin.post("/api/v1/exams", json={"id": exam_id, "title": "regroup",
                                                   "groups": ["A"]}).status_code == 201
    r = world.admin.post(f"/api/v1/exams/{exam_id}/sessions",
                         json={"candidates": [{"candidate_id": "r1", "group": "B"}]})
    [session] = r.json()["sessions"]
    ws = await dashboard(world, "proctor", "own")
    try:
        await ws.send({"type": "subscribe", "exam_id": exam_id})
        assert (await ws.recv("snapshot"))["sessions"][0]["id"] == session["id"]
        assert world.admin.patch(f"/api/v1/exams/{exam_id}",
                                 json={"groups": ["B"]}).status_code == 200
        assert world.admin.post(f"/api/v1/exams/{exam_id}/commands",
                                json=notice(session["id"])).status_code == 200
        error = await ws.recv("error", "event", "event_batch")
        assert (error["type"], error["code"]) == ("error", "forbidden")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv_any()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        assert not [m for m in ws.received if m["type"] in ("event", "event_batch")]
    finally:
        await ws.close()


async def test_exam_regrouped_on_another_process(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Two processes sharing Redis and SQL: a dashboard on one is re-scoped (and closed, 4403)
    when the exam's groups are changed through the other."""
    redis_server.start()
    shared = {"redis_url": redis_server.url, "redis_prefix": f"sc{uuid.uuid4().hex[:8]}:",
              "database_url": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
              "auth_recheck_interval": 0.3}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = ServerProcess(workdir=tmp_path / "one", **shared).start()  # type: ignore[arg-type]
    two = ServerProcess(workdir=tmp_path / "two", **shared).start()  # type: ignore[arg-type]
    ws: WsClient | None = None
    try:
        w = World(one, httpx.Client(base_url=one.url, timeout=30,
                                    headers={"Authorization": f"Bearer {STAFF_TOKEN}"}))
        token = w.new_login("proctor", ("A",))
        assert w.admin.post("/api/v1/exams", json={"id": "moved", "title": "moved",
                                                   "groups": ["A"]}).status_code == 201
        ws = await WsClient.connect(f"{two.ws_url}/ws/proctor", JSON,
                                    additional_headers={"Authorization": f"Bearer {token}"})
        await ws.send({"type": "subscribe", "exam_id": "moved"})
        assert (await ws.recv("snapshot"))["sessions"] == []
        assert w.admin.patch("/api/v1/exams/moved", json={"groups": ["B"]}).status_code == 200
        error = await ws.recv("error")
        assert (error["code"], error["message"]) == (
            "forbidden", "the exam's groups changed; subscribe again")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv_any()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        w.admin.close()
    finally:
        if ws is not None:
            await ws.close()
        one.stop()
        two.stop()
