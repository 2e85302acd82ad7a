"""The drop-alert count in both stores (memory, Redis, Redis Cluster): a drop counts once
however many processes report it, candidates (not drops) reach the threshold, the window
slides, and an active alert keeps another from being raised."""

from __future__ import annotations

import uuid

from realtime.state.drops import Drop, alert_for
from realtime.state.store import StateStore


def drops(exam: str, first_seq: int, count: int, at: float, group: str = "A") -> list[Drop]:
    return [Drop(first_seq + i, at + i, f"s{first_seq + i}", group) for i in range(count)]


async def test_reported_twice_counts_once(store: StateStore) -> None:
    """Two processes reporting the same drops (by seq) do not reach a threshold of 6 with 4."""
    exam = f"e{uuid.uuid4().hex[:8]}"
    seen = drops(exam, 1, 4, 1000.0)
    assert await store.record_drops(exam, seen, 60, 6, 600) is None
    assert await store.record_drops(exam, seen, 60, 6, 600) is None  # the other process
    assert await store.active_alerts(exam) == []


async def test_threshold_raises_once_and_stays_active(store: StateStore) -> None:
    """The report that reaches the threshold raises the alert; later drops, from any
    reporter, keep it active instead of raising another."""
    exam = f"e{uuid.uuid4().hex[:8]}"
    assert await store.record_drops(exam, drops(exam, 1, 3, 1000.0), 60, 5, 600) is None
    alert = await store.record_drops(exam, drops(exam, 4, 2, 1003.0, "B"), 60, 5, 600)
    assert alert is not None
    assert alert["id"] == f"{exam}:drop:5" and alert["session_id"] == "s5"
    assert alert["count"] == 5 and alert["groups"] == {"A": 3, "B": 2} and alert["group"] == ""
    assert sorted(alert["sessions"]) == [f"s{i}" for i in range(1, 6)]
    assert await store.record_drops(exam, drops(exam, 6, 5, 1005.0), 60, 5, 600) is None
    assert [a["id"] for a in await store.active_alerts(exam)] == [alert["id"]]


async def test_old_drops_leave_the_window(store: StateStore) -> None:
    """Drops further apart than the window never add up."""
    exam = f"e{uuid.uuid4().hex[:8]}"
    assert await store.record_drops(exam, drops(exam, 1, 3, 1000.0), 10, 4, 600) is None
    assert await store.record_drops(exam, drops(exam, 4, 3, 2000.0), 10, 4, 600) is None
    alert = await store.record_drops(exam, drops(exam, 7, 1, 2005.0), 10, 4, 600)
    assert alert is not None and alert["count"] == 4 and alert["group"] == "A"


async def test_one_flapping_candidate_is_not_a_hall(store: StateStore) -> None:
    """Ten drops of one session are one candidate; threshold 0 is off."""
    exam = f"e{uuid.uuid4().hex[:8]}"
    flapping = [Drop(i, 1000.0 + i, "same", "A") for i in range(1, 11)]
    assert await store.record_drops(exam, flapping, 60, 3, 600) is None
    assert await store.record_drops(exam, drops(exam, 20, 5, 1011.0), 60, 0, 600) is None


def test_alert_for_names_a_single_group() -> None:
    """The pure rule: a hall of one group is named; an empty list raises nothing."""
    alert = alert_for("x", drops("x", 1, 3, 5.0, "hall-A"), 60, 3)
    assert alert is not None and alert["group"] == "hall-A" and alert["first_at"] == 5.0
    assert alert_for("x", [], 60, 1) is None
