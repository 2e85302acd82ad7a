"""Webhooks end to end: a real server delivering to a real HTTP receiver on 127.0.0.1 that
fails on purpose (500, a hang past the timeout, refused connections), filters by kind and
exam, "send test", bad input, group scope, and a server SIGKILLed mid-delivery that loses none.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import Api, eventually
from redis_server import RedisServer
from server import ServerProcess
from test_identity_e2e import bearer, make_user
from webhook_receiver import Receiver

FAST = {"webhook_timeout": 1, "webhook_backoff": 0.2, "webhook_backoff_max": 1}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hooks = Receiver().start()
    yield hooks
    hooks.close()


@pytest.fixture(scope="module")
def whserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    roles = tmp_path_factory.mktemp("roles") / "roles.json"
    roles.write_text(json.dumps({"roles": {"integrator": {
        "permissions": ["webhooks.manage", "sessions.view"]}}}))
    process = ServerProcess(roles_file=str(roles), **FAST).start()
    yield process
    process.stop()


@pytest.fixture
async def admin(whserver: ServerProcess) -> AsyncIterator[Api]:
    client = Api(whserver.url)
    yield client
    await client.close()


async def subscribe(api: Api, receiver: Receiver, path: str = "/hook",
                    **fields: Any) -> dict[str, Any]:
    response = await api.http.post("/api/v1/webhooks", json={"url": receiver.url(path), **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    receiver.secrets[path] = created["secret"]
    return created


async def deliveries(api: Api, subscription_id: str, **query: str) -> list[dict[str, Any]]:
    response = await api.http.get(f"/api/v1/webhooks/{subscription_id}/deliveries",
                                  params=query)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


async def test_a_failing_receiver_gets_the_event_after_500_timeout_and_refusal(
    admin: Api, receiver: Receiver
) -> None:
    """500, then no answer within the timeout, then connection refused: retried with backoff
    and delivered on the 4th attempt, signed; the log counts the attempts and keeps the errors."""
    exam = await admin.create_exam()
    sub = await subscribe(admin, receiver, exam_id=exam["id"], kinds=["lock"])
    receiver.plan = ["500", "hang"]
    await admin.create_sessions(exam["id"], 1)
    await admin.command(exam["id"], action="lock", target="all")

    await eventually(lambda: receiver.count() >= 2)  # the 500, and the hang in progress
    receiver.stop()  # the next attempt is refused

    async def refused() -> dict[str, Any] | None:
        log = await deliveries(admin, sub["id"])
        return log[0] if log and log[0]["attempts"] >= 3 else None

    failing = await eventually(refused)
    assert failing["status"] == "pending" and failing["next_attempt_at"] is not None
    receiver.start()

    async def delivered() -> dict[str, Any] | None:
        log = await deliveries(admin, sub["id"])
        return log[0] if log and log[0]["status"] == "delivered" else None

    done = await eventually(delivered)
    assert len(await deliveries(admin, sub["id"])) == 1
    assert done["attempts"] >= 4 and done["kind"] == "lock" and done["last_status_code"] == 200
    errors = [e["error"] for e in done["errors"]]
    assert errors[0].startswith("HTTP 500") and "failing on purpose" in errors[0]
    assert errors[1].startswith("timeout")
    assert all("ConnectError" in e for e in errors[2:]) and len(errors) == done["attempts"] - 1
    answers = [r.answer for r in receiver.received]
    assert answers[:2] == ["500", "hang"] and answers[-1] == "ok"
    assert {r.delivery_id for r in receiver.received} == {done["id"]}  # one delivery, resent
    ok = receiver.accepted()[0]
    assert ok.signed and ok.kind == "lock" and ok.body["id"] == done["id"]
    event = ok.body["event"]
    assert event["exam_id"] == exam["id"] and event["kind"] == "lock" and event["seq"] >= 1
    assert "changes" not in event
    metrics = (await admin.http.get("/metrics")).text
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith("realtime_webhook_")}
    assert values["realtime_webhook_attempts_failed"] >= 3
    assert values["realtime_webhook_delivered"] >= 1


async def test_subscriptions_filter_by_exam_and_kind(admin: Api, receiver: Receiver) -> None:
    """Each subscription gets exactly the events of its exam (or every exam) and kinds."""
    x = await admin.create_exam()
    y = await admin.create_exam()
    a = await subscribe(admin, receiver, "/a", exam_id=x["id"], kinds=["created"])
    b = await subscribe(admin, receiver, "/b", exam_id=y["id"])
    c = await subscribe(admin, receiver, "/c", kinds=["lock"])  # every exam
    await admin.create_sessions(x["id"], 2)
    await admin.create_sessions(y["id"], 1)
    await admin.command(x["id"], action="lock", target="all")

    await eventually(lambda: len(receiver.accepted("/a")) == 2
                     and len(receiver.accepted("/b")) == 1
                     and len([r for r in receiver.accepted("/c")
                              if r.body["event"]["exam_id"] == x["id"]]) == 2)
    log_a = await deliveries(admin, a["id"])
    assert sorted((d["exam_id"], d["kind"]) for d in log_a) == [(x["id"], "created")] * 2
    assert [(d["exam_id"], d["kind"]) for d in await deliveries(admin, b["id"])] == [
        (y["id"], "created")]
    log_c = [d for d in await deliveries(admin, c["id"]) if d["exam_id"] in (x["id"], y["id"])]
    assert sorted((d["exam_id"], d["kind"]) for d in log_c) == [(x["id"], "lock")] * 2
    assert all(r.signed for r in receiver.received)
    for sub in (a, b, c):
        assert (await admin.http.delete(f"/api/v1/webhooks/{sub['id']}")).status_code == 204


async def test_send_test_pings_and_the_log_shows_it(admin: Api, receiver: Receiver) -> None:
    """"Send test" delivers a signed `ping`; a wrong secret is refused by the receiver and the
    log says so; the listing counts deliveries by status; changes are audited."""
    sub = await subscribe(admin, receiver, description="LMS")
    response = await admin.http.post(f"/api/v1/webhooks/{sub['id']}/test")
    assert response.status_code == 202, response.text
    ping = response.json()
    await eventually(lambda: receiver.accepted())
    got = receiver.accepted()[0]
    assert got.kind == "ping" and got.delivery_id == ping["id"] and got.body["event"] is None

    receiver.secrets["/hook"] = "not-the-secret"
    second = (await admin.http.post(f"/api/v1/webhooks/{sub['id']}/test")).json()

    async def refused() -> dict[str, Any] | None:
        log = {d["id"]: d for d in await deliveries(admin, sub["id"])}
        found = log.get(second["id"])
        return found if found and found["attempts"] >= 1 else None

    bad = await eventually(refused)
    assert bad["status"] == "pending" and bad["last_error"].startswith("HTTP 401")
    listed = (await admin.http.get("/api/v1/webhooks")).json()
    mine = next(s for s in listed["subscriptions"] if s["id"] == sub["id"])
    assert mine["counts"]["delivered"] == 1 and mine["counts"]["pending"] == 1
    assert "secret" not in mine and "lock" in listed["kinds"]
    off = await admin.http.patch(f"/api/v1/webhooks/{sub['id']}", json={"active": False})
    assert off.status_code == 200 and off.json()["active"] is False
    audit = (await admin.http.get("/api/v1/audit", params={"action": "webhook_test"})).json()
    assert any(e["subject"] == f"webhook:{sub['id']}" for e in audit["entries"])
    assert (await admin.http.delete(f"/api/v1/webhooks/{sub['id']}")).status_code == 204
    assert (await admin.http.get(f"/api/v1/webhooks/{sub['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"url": "ftp://127.0.0.1/x"}, 400, "http"),
        ({"url": "not a url"}, 400, "url"),
        ({"url": "http:///nohost"}, 400, "host"),
        ({"url": "http://127.0.0.1:99999/"}, 400, "url"),
        ({}, 400, "url"),
        ({"url": "http://127.0.0.1/", "kinds": ["lock", "exploded"]}, 400, "exploded"),
        ({"url": "http://127.0.0.1/", "kinds": "lock"}, 400, "kinds"),
        ({"url": "http://127.0.0.1/", "exam_id": "no-such-exam"}, 404, "no-such-exam"),
        ({"url": "http://127.0.0.1/", "colour": "red"}, 400, "colour"),
        ({"url": "http://127.0.0.1/", "active": "yes"}, 400, "active"),
    ],
)
async def test_bad_subscriptions_are_refused(
    admin: Api, body: dict[str, Any], status: int, says: str
) -> None:
    """Bad URLs, unknown kinds or fields, unknown exams: a clear 4xx, nothing stored."""
    response = await admin.http.post("/api/v1/webhooks", json=body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]


async def test_group_scope_of_subscriptions(admin: Api, receiver: Receiver) -> None:
    """A restricted role with webhooks.manage subscribes to exams of its groups only, never to
    every exam, and does not see others' subscriptions; a role without it gets 403."""
    mine = await admin.create_exam(groups=["G1"])
    theirs = await admin.create_exam(groups=["G2"])
    _, token = await make_user(admin, ["integrator"], ["G1"])
    _, viewer = await make_user(admin, ["viewer"], ["G1"])
    http, url = admin.http, receiver.url()
    ok = await http.post("/api/v1/webhooks", json={"url": url, "exam_id": mine["id"]},
                         headers=bearer(token))
    assert ok.status_code == 201, ok.text
    other = await http.post("/api/v1/webhooks", json={"url": url, "exam_id": theirs["id"]},
                            headers=bearer(token))
    assert other.status_code == 404
    everything = await http.post("/api/v1/webhooks", json={"url": url}, headers=bearer(token))
    assert everything.status_code == 403
    global_sub = await subscribe(admin, receiver)
    listed = (await http.get("/api/v1/webhooks", headers=bearer(token))).json()["subscriptions"]
    assert [s["id"] for s in listed] == [ok.json()["id"]]
    hidden = await http.get(f"/api/v1/webhooks/{global_sub['id']}", headers=bearer(token))
    assert hidden.status_code == 404
    assert (await http.get("/api/v1/webhooks", headers=bearer(viewer))).status_code == 403
    for sid in (ok.json()["id"], global_sub["id"]):
        assert (await http.delete(f"/api/v1/webhooks/{sid}")).status_code == 204


async def test_a_server_killed_mid_delivery_loses_none(
    redis_server: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    """SIGKILL while deliveries are in flight (one hanging, others failing): after a restart
    every matching event is delivered at least once, and de-duplicating by delivery id
    leaves exactly one delivery per event."""
    redis_server.start()
    server = ServerProcess(redis_url=redis_server.url, workdir=tmp_path,
                           redis_prefix=f"wh{uuid.uuid4().hex[:8]}:", **FAST).start()
    try:
        api = Api(server.url)
        exam = await api.create_exam()
        sub = await subscribe(api, receiver, exam_id=exam["id"], kinds=["created", "lock"])
        receiver.plan = ["ok"] * 3 + ["hang"]
        receiver.default = "500"
        await api.create_sessions(exam["id"], 12)
        await eventually(lambda: receiver.count() >= 6)  # some delivered, one hanging, failures
        server.kill()
        await api.close()

        receiver.default = "ok"
        receiver.release.set()
        server.start()
        api = Api(server.url)
        await api.command(exam["id"], action="lock", target="all")
        expected = 12 + 12  # created + lock

        def events_delivered() -> int:
            return len({r.body["event"]["id"] for r in receiver.accepted()})

        await eventually(events_delivered, timeout=60)
        await eventually(lambda: events_delivered() == expected, timeout=60)
        history = (await api.http.get(f"/api/v1/exams/{exam['id']}/history")).json()["events"]
        wanted = {e["id"] for e in history if e["kind"] in ("created", "lock")}
        unique: dict[str, dict[str, Any]] = {}
        for r in receiver.accepted():
            unique.setdefault(r.delivery_id, r.body)
        assert sorted(b["event"]["id"] for b in unique.values()) == sorted(wanted)
        assert all(r.signed for r in receiver.accepted())

        async def all_logged() -> bool:  # each answer is recorded just after it arrives
            log = await deliveries(api, sub["id"], limit="1000")
            return len(log) == expected and all(d["status"] == "delivered" for d in log)

        await eventually(all_logged)
        await api.close()
    finally:
        server.stop()


@pytest.mark.postgres
async def test_two_processes_on_postgres_send_each_delivery_once(
    redis_server: RedisServer, pg_url: str, receiver: Receiver
) -> None:
    """Two processes sharing Redis and PostgreSQL both run a dispatcher; the claims (FOR UPDATE
    SKIP LOCKED, then a lease) give each delivery to one of them: without a crash, every event
    reaches the receiver exactly once."""
    redis_server.start()
    shared: dict[str, Any] = {"redis_url": redis_server.url, "database_url": pg_url,
                              "redis_prefix": f"wh{uuid.uuid4().hex[:8]}:", **FAST}
    first = ServerProcess(**shared).start()
    second = ServerProcess(**shared).start()
    apis = [Api(first.url), Api(second.url)]
    try:
        sub = await subscribe(apis[1], receiver, kinds=["created"])  # every exam: fresh server
        for api in apis:
            exam = await api.create_exam()
            await api.create_sessions(exam["id"], 30)
        await eventually(lambda: len(receiver.accepted()) >= 60, timeout=60)

        async def all_logged() -> bool:
            log = await deliveries(apis[0], sub["id"], limit="1000")
            return len(log) == 60 and all(d["status"] == "delivered" for d in log)

        await eventually(all_logged)
        ids = [r.delivery_id for r in receiver.received]
        assert len(ids) == len(set(ids)) == 60, "a delivery was sent twice"
        assert len({r.body["event"]["id"] for r in receiver.received}) == 60
    finally:
        for api in apis:
            await api.close()
        first.stop()
        second.stop()
