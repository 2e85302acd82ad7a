"""Webhook parts without a server: signatures, the retry schedule, URL checks, and the SQL
claims (deliveries written with their drained events, one holder at a time, leases that run
out), on SQLite and PostgreSQL (the `db` fixture)."""

from __future__ import annotations

import pytest

from realtime.db.database import Database
from realtime.errors import BadRequest
from realtime.state.model import Event
from realtime.webhooks.dispatcher import RetryPolicy
from realtime.webhooks.inputs import check_url, host_allowed
from realtime.webhooks.signing import signature_header, verify
from realtime.webhooks.store import WebhookStore


def test_a_signature_verifies_and_tampering_or_age_breaks_it() -> None:
    """The body, the secret and the timestamp are all covered; old timestamps are refused."""
    body = b'{"id":"d1","kind":"ping"}'
    header = signature_header("s3cret", 1_000_000, body)
    assert verify("s3cret", header, body, now=1_000_010)
    assert not verify("s3cret", header, body + b" ", now=1_000_010)
    assert not verify("other", header, body, now=1_000_010)
    assert not verify("s3cret", header.replace("t=1000000", "t=1000001"), body, now=1_000_010)
    assert not verify("s3cret", header, body, now=1_000_000 + 301)
    assert not verify("s3cret", "garbage", body, now=1_000_000)


def test_retry_delays_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, backoff=10, backoff_max=300)
    assert policy.delay(1, lambda: 0.0) == 5 and policy.delay(1, lambda: 1.0) == 10
    assert policy.delay(3, lambda: 1.0) == 40
    assert policy.delay(20, lambda: 1.0) == 300 and policy.delay(20, lambda: 0.0) == 150


def test_only_http_urls_to_allowed_hosts() -> None:
    assert check_url("https://lms.example.org/hook", []) == "https://lms.example.org/hook"
    for bad in ("file:///etc/passwd", "javascript:alert(1)", "http://", "http://a b/", 5):
        with pytest.raises(BadRequest):
            check_url(bad, [])
    allowed = ["127.0.0.0/8", "lms.example.org"]
    assert host_allowed("127.0.0.1", allowed) and host_allowed("LMS.example.org", allowed)
    assert not host_allowed("10.0.0.1", allowed) and not host_allowed("evil.example", allowed)
    with pytest.raises(BadRequest, match="REALTIME_WEBHOOK_ALLOWED_HOSTS"):
        check_url("http://169.254.169.254/latest", allowed)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _event(seq: int, kind: str = "lock", exam: str = "E1") -> Event:
    return Event(exam_id=exam, session_id="s1", kind=kind, actor="staff:x", at=1.0, seq=seq)


async def test_the_dispatcher_is_woken_only_for_drained_batches_that_made_deliveries(
    db: Database,
) -> None:
    """Every drained batch used to wake the dispatcher, which then claimed (a write
    transaction) and looked for due deliveries in SQL: with no subscription at all, or none
    matching, nothing is new for it to send."""
    store = WebhookStore(db, Clock())
    db.outbox_hooks.append(store)
    wakes: list[int] = []
    store.on_new_deliveries = lambda: wakes.append(1)
    await db.write_outbox([_event(1)], [])  # no subscription
    assert wakes == []
    await store.create(url="http://127.0.0.1/h", exam_id="E1", kinds=["lock"], description="",
                       active=True, actor="t")
    wakes.clear()  # (creating one does not wake it; whatever it did, start from here)
    await db.write_outbox([_event(2, "pause"), _event(3, exam="E2")], [])  # none matching
    assert wakes == []
    await db.write_outbox([_event(4)], [])  # a delivery
    assert wakes == [1]
    await db.write_outbox([_event(4)], [])  # the drainer repeating itself: nothing new
    assert wakes == [1]


async def test_deliveries_are_written_with_their_events_once_and_claimed_by_one(
    db: Database,
) -> None:
    """A drained event makes one delivery per matching subscription, a repeated drain none;
    a claim holds it from other dispatchers until its lease runs out."""
    clock = Clock()
    store = WebhookStore(db, clock)
    db.outbox_hooks.append(store)
    sub, _secret = await store.create(url="http://127.0.0.1/h", exam_id="E1", kinds=["lock"],
                                      description="", active=True, actor="t")
    await db.write_outbox([_event(1), _event(2, "pause"), _event(3, exam="E2")], [])
    await db.write_outbox([_event(1)], [])  # the drainer repeating itself after a crash
    assert [(d["seq"], d["kind"]) for d in await store.deliveries(sub["id"])] == [(1, "lock")]

    first = await store.claim("p1", 10, lease=30)
    assert [c.kind for c in first] == ["lock"]
    assert await store.claim("p2", 10, lease=30) == []  # held by p1
    clock.now += 31  # p1 died: its lease ran out
    again = await store.claim("p2", 10, lease=30)
    assert [c.id for c in again] == [first[0].id]
    await store.finish("p1", first[0], ok=True, status_code=200, error="", retry_at=None)
    assert (await store.deliveries(sub["id"]))[0]["status"] == "pending"  # p1 lost its lease
    await store.finish("p2", again[0], ok=False, status_code=500, error="HTTP 500",
                       retry_at=None)
    failed = (await store.deliveries(sub["id"]))[0]
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["errors"][0]["status_code"] == 500
    retried = await store.retry(failed["id"])
    assert retried is not None and retried["status"] == "pending" and retried["attempts"] == 1
    assert [c.id for c in await store.claim("p3", 10, lease=30)] == [failed["id"]]
