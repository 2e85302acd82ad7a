"""The session rules as pure functions: no server, no store."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime.state import machine
from realtime.state import redis as redis_store
from realtime.state.machine import Liveness, OpenRequest, Rejection, Transition
from realtime.state.model import Action, Event, Exam, ExamSettings, Status, new_session
from realtime.state.redis import RedisStore
from realtime.state.store import Commit

NOW = 1_000_000.0
LIVE = Liveness(stale_after=30, resume_grace=60)


def exam(**settings: Any) -> Exam:
    return Exam(id="e", title="E", duration_minutes=60, settings=ExamSettings(**settings))


def session(**fields: Any) -> dict[str, Any]:
    return new_session(id="s", exam_id="e", candidate_id="c", **fields)


def request(conn: str = "conn-1", token: str | None = None) -> OpenRequest:
    return OpenRequest(
        conn_id=conn,
        new_resume_hash=machine.hash_token(conn + "-token"),
        actor="candidate:s",
        resume_token=token,
    )


def applied(outcome: machine.Outcome) -> Transition:
    assert isinstance(outcome, Transition), outcome
    return outcome


def rejected(outcome: machine.Outcome) -> Rejection:
    assert isinstance(outcome, Rejection), outcome
    return outcome


def after(s: dict[str, Any], outcome: machine.Outcome) -> dict[str, Any]:
    return {**s, **applied(outcome).changes, "version": s["version"] + 1}


def test_open_starts_the_session_and_sets_the_deadline() -> None:
    """Opening a ready session makes it active with a deadline of now + duration."""
    t = applied(machine.open_session(session(), exam(), request(), NOW, LIVE))
    assert t.changes["status"] == "active"
    assert t.changes["deadline"] == NOW + 3600
    assert t.changes["connected"] is True
    assert [e.kind for e in t.events] == ["opened"]


def test_open_waits_for_authorization_when_the_exam_requires_it() -> None:
    """With requires_authorization, an open leads to `awaiting`, and authorize starts it."""
    s = after(
        session(),
        machine.open_session(session(), exam(requires_authorization=True), request(), NOW, LIVE),
    )
    assert s["status"] == "awaiting"
    t = applied(machine.apply_command(s, exam(), Action.AUTHORIZE, "staff:p", NOW + 5))
    assert t.changes["status"] == "active"
    assert t.changes["deadline"] == NOW + 5 + 3600


@pytest.mark.parametrize("status", ["completed", "terminated"])
def test_final_sessions_refuse_opens_with_closed(status: str) -> None:
    """A completed or terminated session cannot be opened again."""
    r = rejected(machine.open_session(session(status=status), exam(), request(), NOW, LIVE))
    assert r.reason == "closed"
    assert r.event is not None and r.event.kind == "refused"


def test_lock_sessions_relocks_in_the_same_step_as_the_open() -> None:
    """The template setting locks every session as it is opened, recorded as a re-lock."""
    t = applied(machine.open_session(session(), exam(lock_sessions=True), request(), NOW, LIVE))
    assert t.changes["locked"] is True
    assert [e.kind for e in t.events] == ["opened", "relocked"]


def test_locked_session_refuses_a_new_connection() -> None:
    """A locked session with no live holder is refused with `locked`."""
    s = session(locked=True, relock=True, status="active")
    assert rejected(machine.open_session(s, exam(), request(), NOW, LIVE)).reason == "locked"


def test_locked_and_held_session_refuses_with_already_open() -> None:
    """A locked session held by a live connection is refused with `already_open`."""
    s = after(
        session(),
        machine.open_session(session(), exam(lock_sessions=True), request("a"), NOW, LIVE),
    )
    r = rejected(machine.open_session(s, exam(lock_sessions=True), request("b"), NOW + 1, LIVE))
    assert r.reason == "already_open"


def test_unlocked_session_is_taken_over_and_the_old_holder_superseded() -> None:
    """Without a lock a second connection takes over; the event says it superseded."""
    s = after(session(), machine.open_session(session(), exam(), request("a"), NOW, LIVE))
    t = applied(machine.open_session(s, exam(), request("b"), NOW + 1, LIVE))
    assert t.changes["conn_id"] == "b"
    assert t.events[0].details["superseded"] is True


def test_unlock_then_open_locks_again() -> None:
    """Once locked, a session locks itself again on the next successful open."""
    s = session(status="active")
    s = after(s, machine.apply_command(s, exam(), Action.LOCK, "staff:p", NOW))
    s = after(s, machine.apply_command(s, exam(), Action.UNLOCK, "staff:sup", NOW))
    assert s["locked"] is False
    t = applied(machine.open_session(s, exam(), request(), NOW + 1, LIVE))
    assert t.changes["locked"] is True


def test_resume_token_lets_the_same_tab_back_in_within_the_grace() -> None:
    """The current resume token reopens a locked session shortly after a drop."""
    s = after(
        session(),
        machine.open_session(session(), exam(lock_sessions=True), request("a"), NOW, LIVE),
    )
    s = after(s, machine.disconnect(s, "a", NOW + 1, "network"))
    t = applied(
        machine.open_session(s, exam(lock_sessions=True), request("b", "a-token"), NOW + 30, LIVE)
    )
    assert t.events[0].kind == "reconnected"
    assert t.changes["reconnects"] == 1


def test_resume_token_expires_after_the_grace_and_is_useless_in_strict_mode() -> None:
    """After the grace period, or with grace 0, the token no longer opens a locked session."""
    s = after(
        session(),
        machine.open_session(session(), exam(lock_sessions=True), request("a"), NOW, LIVE),
    )
    s = after(s, machine.disconnect(s, "a", NOW + 1, "network"))
    late = machine.open_session(
        s, exam(lock_sessions=True), request("b", "a-token"), NOW + 62, LIVE
    )
    assert rejected(late).reason == "locked"
    strict = Liveness(stale_after=30, resume_grace=0)
    now = machine.open_session(
        s, exam(lock_sessions=True), request("b", "a-token"), NOW + 2, strict
    )
    assert rejected(now).reason == "locked"


def test_a_wrong_or_old_token_does_not_resume() -> None:
    """Only the token handed out by the latest open works (tokens rotate on every open)."""
    s = after(
        session(),
        machine.open_session(session(), exam(lock_sessions=True), request("a"), NOW, LIVE),
    )
    s = after(s, machine.disconnect(s, "a", NOW + 1, "network"))
    s = after(
        s, machine.open_session(s, exam(lock_sessions=True), request("b", "a-token"), NOW + 2, LIVE)
    )
    s = after(s, machine.disconnect(s, "b", NOW + 3, "network"))
    old = machine.open_session(s, exam(lock_sessions=True), request("c", "a-token"), NOW + 4, LIVE)
    assert rejected(old).reason == "locked"


@pytest.mark.parametrize(
    ("status", "action", "reason"),
    [
        ("ready", Action.PAUSE, "invalid_status"),
        ("active", Action.RESUME, "invalid_status"),
        ("paused", Action.PAUSE, "invalid_status"),
        ("active", Action.AUTHORIZE, "already_authorized"),
        ("completed", Action.PAUSE, "final_status"),
        ("terminated", Action.UNLOCK, "final_status"),
    ],
)
def test_commands_invalid_for_the_status_are_skipped_with_a_reason(
    status: str, action: Action, reason: str
) -> None:
    """Each command is validated against the current status and never half-applied."""
    assert (
        rejected(machine.apply_command(session(status=status), exam(), action, "p", NOW)).reason
        == reason
    )


def test_lock_twice_and_unlock_unlocked_are_skipped() -> None:
    """Lock and unlock say when there is nothing to do."""
    assert (
        rejected(machine.apply_command(session(locked=True), exam(), Action.LOCK, "p", NOW)).reason
        == "already_locked"
    )
    assert (
        rejected(machine.apply_command(session(), exam(), Action.UNLOCK, "p", NOW)).reason
        == "not_locked"
    )


def test_paused_time_is_given_back_on_resume() -> None:
    """The deadline moves by the time spent paused."""
    s = session(status="active", deadline=NOW + 600)
    s = after(s, machine.apply_command(s, exam(), Action.PAUSE, "p", NOW))
    t = applied(machine.apply_command(s, exam(), Action.RESUME, "p", NOW + 120))
    assert t.changes["deadline"] == NOW + 720


def test_extend_moves_the_deadline_and_validates_minutes() -> None:
    """Extend adds minutes; zero, negative or non-integer minutes are refused."""
    s = session(status="active", deadline=NOW)
    assert (
        applied(machine.apply_command(s, exam(), Action.EXTEND, "p", NOW, {"minutes": 10})).changes[
            "deadline"
        ]
        == NOW + 600
    )
    for bad in (0, -5, "10", 2.5, True):
        assert (
            rejected(
                machine.apply_command(s, exam(), Action.EXTEND, "p", NOW, {"minutes": bad})
            ).reason
            == "invalid_params"
        )


def test_terminate_is_final_and_records_the_actor() -> None:
    """Terminate ends the session; the history event names who did it."""
    t = applied(
        machine.apply_command(session(status="paused"), exam(), Action.TERMINATE, "staff:sup", NOW)
    )
    assert t.changes["status"] == "terminated"
    assert t.events[0].actor == "staff:sup"
    assert t.events[0].before == "paused" and t.events[0].after == "terminated"


def test_only_the_holder_reports_progress_or_submits() -> None:
    """A connection that no longer holds the session cannot change it."""
    s = session(status="active", conn_id="a", connected=True)
    assert rejected(machine.report_progress(s, "b", "c", 1, 1, NOW)).reason == "not_holder"
    assert rejected(machine.submit(s, "b", "c", NOW)).reason == "not_holder"
    assert applied(machine.submit(s, "a", "c", NOW)).changes["status"] == "completed"


def test_disconnect_by_a_stale_connection_changes_nothing() -> None:
    """Only the current holder's disconnect flips `connected`."""
    s = session(status="active", conn_id="new", connected=True)
    assert isinstance(machine.disconnect(s, "old", NOW, "gone"), Rejection)


@given(st.lists(st.sampled_from(list(Action)), min_size=1, max_size=30))
def test_any_command_sequence_keeps_the_session_consistent(actions: list[Action]) -> None:
    """Whatever staff do, only a reopen leaves a final status (and only `terminated`), the
    status is always a known one, and time is never taken away past now."""
    s = session(status="active", started_at=NOW, deadline=NOW + 3600)
    was_final = False
    for i, action in enumerate(actions):
        params = {"minutes": 5, "text": "hello", "reason": "why"}
        before = s["status"]
        outcome = machine.apply_command(s, exam(), action, "p", NOW + i * 60, params)
        if isinstance(outcome, Transition):
            assert not was_final or (action is Action.REOPEN and before == "terminated")
            s = after(s, outcome)
            if action is Action.REDUCE and s["status"] == "active":
                assert s["deadline"] >= NOW + i * 60
        was_final = Status(s["status"]).final
        assert s["status"] in {x.value for x in Status}


# -- corrections: reopen, reduce, strict mode per exam ----------------------------------------


def test_terminate_stops_the_clock_and_reopen_gives_the_time_back() -> None:
    """Terminating an active session records when its clock stopped; reopening makes it
    paused from that moment, so a resume later restores exactly the time it had left."""
    s = session(status="active", started_at=NOW, deadline=NOW + 600, locked=True, relock=True)
    s = after(s, machine.apply_command(s, exam(), Action.TERMINATE, "staff:sup", NOW + 100))
    assert s["paused_at"] == NOW + 100
    t = applied(machine.apply_command(s, exam(), Action.REOPEN, "staff:sup", NOW + 5000,
                                      {"reason": "terminated by mistake"}))
    assert t.changes == {"status": "paused", "paused_at": NOW + 100, "locked": False}
    event = t.events[0]
    assert (event.kind, event.before, event.after, event.actor) == (
        "reopen", "terminated", "paused", "staff:sup")
    assert event.details["reason"] == "terminated by mistake"
    s = after(s, t)
    resumed = after(s, machine.apply_command(s, exam(), Action.RESUME, "p", NOW + 6000))
    assert resumed["deadline"] - (NOW + 6000) == 500  # the 500 s it had left at termination


def test_reopen_of_a_session_that_never_started_makes_it_ready_and_openable() -> None:
    """A terminated session without a start goes back to ready; the candidate opens it."""
    s = session(status="terminated")
    s = after(s, machine.apply_command(s, exam(), Action.REOPEN, "p", NOW, {"reason": "r"}))
    assert s["status"] == "ready"
    opened = applied(machine.open_session(s, exam(), request(), NOW + 1, LIVE))
    assert opened.changes["status"] == "active"


def test_a_reopened_locked_session_opens_once_from_a_new_tab_and_locks_again() -> None:
    """Reopen unlocks like an unlock does: one new open, which locks the session again."""
    s = session(status="terminated", started_at=NOW, deadline=NOW + 600, paused_at=NOW + 10,
                locked=True, relock=True)
    s = after(s, machine.apply_command(s, exam(), Action.REOPEN, "p", NOW + 20, {"reason": "r"}))
    opened = applied(machine.open_session(s, exam(), request("new"), NOW + 30, LIVE))
    assert opened.changes["locked"] is True
    assert opened.changes.get("status") is None  # still paused until a proctor resumes


@pytest.mark.parametrize(
    ("fields", "params", "reason"),
    [
        ({"status": "active"}, {"reason": "r"}, "invalid_status"),
        ({"status": "completed"}, {"reason": "r"}, "invalid_status"),
        ({"status": "terminated"}, {}, "invalid_params"),
    ],
)
def test_reopen_needs_a_terminated_session_and_a_reason(
    fields: dict[str, Any], params: dict[str, Any], reason: str
) -> None:
    """Only terminated sessions reopen (a submission stays final), and never without a reason."""
    outcome = machine.apply_command(session(**fields), exam(), Action.REOPEN, "p", NOW, params)
    assert rejected(outcome).reason == reason


def test_reduce_takes_time_away_but_never_past_now() -> None:
    """Reduce moves the deadline earlier; taking more than is left is refused, not clamped."""
    s = session(status="active", started_at=NOW - 600, deadline=NOW + 600, extra_minutes=5)
    t = applied(machine.apply_command(s, exam(), Action.REDUCE, "p", NOW, {"minutes": 10}))
    assert t.changes == {"extra_minutes": -5, "deadline": NOW}
    assert t.events[0].details["minutes"] == 10
    too_much = rejected(machine.apply_command(s, exam(), Action.REDUCE, "p", NOW,
                                              {"minutes": 11}))
    assert too_much.reason == "not_enough_time"
    assert "10.0 min left" in too_much.message
    for bad in (0, -5, "10", 2.5, True, 1441):
        outcome = machine.apply_command(s, exam(), Action.REDUCE, "p", NOW, {"minutes": bad})
        assert rejected(outcome).reason == "invalid_params"


def test_reduce_of_a_paused_session_counts_from_when_its_clock_stopped() -> None:
    """Paused, the time left is what it had at the pause, however long the pause lasts."""
    s = session(status="paused", started_at=NOW - 600, deadline=NOW + 300, paused_at=NOW)
    ok = machine.apply_command(s, exam(), Action.REDUCE, "p", NOW + 3000, {"minutes": 5})
    assert applied(ok).changes["deadline"] == NOW
    over = machine.apply_command(s, exam(), Action.REDUCE, "p", NOW + 3000, {"minutes": 6})
    assert rejected(over).reason == "not_enough_time"


def test_reduce_before_the_start_shortens_the_exam_to_at_least_a_minute() -> None:
    """A session not started yet gets less time when it starts; at least one minute stays."""
    s = session()
    t = applied(machine.apply_command(s, exam(), Action.REDUCE, "p", NOW, {"minutes": 59}))
    assert t.changes == {"extra_minutes": -59}
    s = after(s, t)
    assert applied(machine.open_session(s, exam(), request(), NOW, LIVE)).changes[
        "deadline"] == NOW + 60
    assert rejected(machine.apply_command(s, exam(), Action.REDUCE, "p", NOW,
                                          {"minutes": 1})).reason == "not_enough_time"


def test_reason_and_category_are_kept_in_the_event() -> None:
    """A command's reason and reason category are recorded in its history event."""
    t = applied(machine.apply_command(
        session(status="active"), exam(), Action.PAUSE, "p", NOW,
        {"reason": "fire alarm", "reason_category": "environment/disturbance"},
    ))
    assert t.events[0].details == {"reason": "fire alarm",
                                   "reason_category": "environment/disturbance"}


def _dropped_locked() -> dict[str, Any]:
    s = after(
        session(),
        machine.open_session(session(), exam(lock_sessions=True), request("a"), NOW, LIVE),
    )
    return after(s, machine.disconnect(s, "a", NOW + 1, "network"))


def test_a_strict_exam_refuses_the_same_tab_while_a_lenient_one_lets_it_back() -> None:
    """The exam's resume_grace_seconds wins over the deployment's grace: 0 is strict (no
    resume without an unlock), a longer one lets the tab back later than the default."""
    s = _dropped_locked()
    strict = exam(lock_sessions=True, resume_grace_seconds=0)
    assert rejected(
        machine.open_session(s, strict, request("b", "a-token"), NOW + 2, LIVE)
    ).reason == "locked"
    lenient = exam(lock_sessions=True, resume_grace_seconds=600)
    back = machine.open_session(s, lenient, request("b", "a-token"), NOW + 300, LIVE)
    assert applied(back).events[0].kind == "reconnected"
    default = exam(lock_sessions=True)  # unset: the deployment's 60 s
    assert rejected(
        machine.open_session(s, default, request("b", "a-token"), NOW + 300, LIVE)
    ).reason == "locked"
    assert machine.resume_grace(default, LIVE) == 60
    assert machine.resume_grace(strict, Liveness(resume_grace=0)) == 0


# -- a command over many sessions, decided once per distinct input ----------------------------

# Values that are equal but not the same (1, 1.0 and True; 0, 0.0 and -0.0) decide alike and
# may be written differently: a copied decision must not hand one session another's. Per
# field, groups of equal values.
_LOOKALIKES: dict[str, list[list[Any]]] = {
    "status": [[x.value] for x in Status],
    "locked": [[True, 1], [False, 0]],
    "authorized": [[True, 1], [False, 0]],
    "started_at": [[None], [NOW - 600, NOW - 600.0]],
    "deadline": [[None], [0, 0.0, -0.0], [NOW + 600, NOW + 600.0], [NOW + 1234.5], [NOW - 60]],
    "paused_at": [[None], [NOW - 30, NOW - 30.0], [0, 0.0, -0.0]],
    "extra_minutes": [[0, 0.0, False], [5, 5.0], [1, True]],
    "hand_raised": [[True, 1], [False, 0], ["missing"]],
    "offline_since": [[None], [NOW - 10, NOW - 10.0], [0, 0.0, -0.0]],
    "offline_seconds": [[0.0, 0, -0.0], [3.5]],
}


def _group(name: str, value: Any) -> list[Any]:
    """The values of `name` equal to `value` (itself among them)."""
    return next(g for g in _LOOKALIKES[name]
                if any(v == value and type(v) is type(value) for v in g))


@st.composite
def _hall(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Sessions of one exam in few states, so that many are alike: a first state, others that
    differ from one before in a field or two, and for each of them a twin whose values are
    equal to its own but maybe not the same (5 for 5.0, 0.0 for -0.0, 1 for True)."""
    kinds = [{name: draw(st.sampled_from(draw(st.sampled_from(groups))))
              for name, groups in _LOOKALIKES.items()}]
    for _ in range(draw(st.integers(0, 3))):
        kind = dict(draw(st.sampled_from(kinds)))
        for name in draw(st.lists(st.sampled_from(sorted(_LOOKALIKES)), min_size=1,
                                  max_size=2)):
            kind[name] = draw(st.sampled_from(draw(st.sampled_from(_LOOKALIKES[name]))))
        kinds.append(kind)
    kinds += [{name: draw(st.sampled_from(_group(name, value))) for name, value in kind.items()}
              for kind in kinds]
    picks = draw(st.lists(st.integers(0, len(kinds) - 1), min_size=1, max_size=40))
    hall = []
    for n, pick in enumerate(picks):
        fields = dict(kinds[pick])
        missing = fields["hand_raised"] == "missing"
        if missing:
            del fields["hand_raised"]
        s = new_session(id=f"s{n}", exam_id="e", candidate_id=f"c{n}", **fields)
        if missing:
            del s["hand_raised"]
        hall.append(s)
    return hall


_PARAMS = st.fixed_dictionaries(
    {"minutes": st.sampled_from([5, 5, 5, 1, 3000, 0, True, 2.0, None])},
    optional={
        "reason": st.sampled_from(["", "why"]),
        "reason_category": st.sampled_from(["", "technical"]),
        "text": st.sampled_from(["", " ", "hello"]),
        "command_id": st.sampled_from(["", "cmd-1"]),
    })


@pytest.mark.parametrize("action", list(Action))
@settings(max_examples=100)
@given(hall=_hall(), params=_PARAMS, lenient=st.booleans())
def test_a_command_decided_once_per_distinct_input_decides_as_each_session_alone(
    hall: list[dict[str, Any]], action: Action, params: dict[str, Any], lenient: bool
) -> None:
    """`CommandDecisions` gives every session exactly what `apply_command` gives it alone:
    the same changes and event (values of the same type: 1 is not True, 0.0 not -0.0), or the
    same rejection; and every transition has changes of its own (a store writes each
    session's version into them)."""
    ex = exam(resume_grace_seconds=None if lenient else 0)
    decide = machine.CommandDecisions(ex, action, "staff:p", NOW, params)
    transitions = []
    for s in hall:
        alone = machine.apply_command(s, ex, action, "staff:p", NOW, params)
        copied = decide(s)
        assert repr(copied) == repr(alone)
        if isinstance(copied, Transition):
            assert copied.events[0].changes is copied.changes
            transitions.append(copied)
    assert len({id(t.changes) for t in transitions}) == len(transitions)
    assert len({id(t.events[0]) for t in transitions}) == len(transitions)


def test_a_hall_in_few_states_is_decided_once_per_state() -> None:
    """5,000 sessions, two states: the state machine decides twice; every session still gets
    its own event."""
    hall = [session(status="active", started_at=NOW, deadline=NOW + 3600) for _ in range(4990)]
    hall += [session(status="completed") for _ in range(10)]
    for n, s in enumerate(hall):
        s["id"] = f"s{n}"
    decide = machine.CommandDecisions(exam(), Action.PAUSE, "staff:p", NOW, {"command_id": "c"})
    outcomes = [decide(s) for s in hall]
    assert decide.decided == 2
    assert [o.events[0].session_id for o in outcomes[:4990]  # type: ignore[union-attr]
            ] == [f"s{n}" for n in range(4990)]
    assert {rejected(o).reason for o in outcomes[4990:]} == {"final_status"}


def test_distinct_inputs_are_decided_each_and_no_longer_remembered() -> None:
    """A resume of sessions with deadlines of their own shares nothing: after a few it stops
    remembering (and still decides each one right)."""
    hall = [session(status="paused", started_at=NOW - 600, deadline=NOW + n, paused_at=NOW - 60)
            for n in range(500)]
    decide = machine.CommandDecisions(exam(), Action.RESUME, "staff:p", NOW)
    outcomes = [applied(decide(s)) for s in hall]
    assert decide.decided == 500 and decide.hits == 0
    assert [o.changes["deadline"] for o in outcomes] == [NOW + n + 60 for n in range(500)]
    assert decide._known is None  # gave up remembering


def _blobs(args: list[Any]) -> list[list[bytes]]:
    """The event blobs of each commit in a commit_batch.lua call's arguments (their layout:
    see there): the flat array gives each commit's events' lengths, ARGV[11] the events."""
    flat = msgpack.unpackb(args[5], raw=True)
    joined: bytes = args[10]
    found, i, at = [], 0, 0
    while i < len(flat):
        j = i + 6
        j += 1 + flat[j]  # guard items
        j += 1 + flat[j]  # change items
        blobs = []
        for length in flat[j + 1:j + 1 + flat[j]]:
            blobs.append(joined[at:at + length])
            at += length
        found.append(blobs)
        i = j + 1 + flat[j]
    assert at == len(joined)
    return found


def _commits(hall: list[dict[str, Any]], outcomes: list[machine.Outcome],
             alike: bool) -> list[Commit]:
    return [Commit("e", s["id"], s["version"], o.changes, o.events, command_id="cmd-1",
                   like=o.like if alike else None)
            for s, o in zip(hall, outcomes, strict=True) if isinstance(o, Transition)]


@pytest.mark.parametrize("action", list(Action))
@settings(max_examples=50)
@given(hall=_hall(), params=_PARAMS, lenient=st.booleans())
def test_the_redis_store_encodes_copied_decisions_as_each_alone(
    hall: list[dict[str, Any]], action: Action, params: dict[str, Any], lenient: bool
) -> None:
    """The Redis store encodes a decision copied to many sessions once (`Transition.like`):
    what it sends is byte for byte what it sends with every commit encoded on its own."""
    ex = exam(resume_grace_seconds=None if lenient else 0)
    decide = machine.CommandDecisions(ex, action, "staff:p", NOW, params)
    for n, s in enumerate(hall):
        s["version"] = n % 3
    outcomes = [decide(s) for s in hall]
    store = RedisStore("redis://127.0.0.1:1/0")  # never connects: only encodes
    _, shared = store._batch_args("e", _commits(hall, outcomes, alike=True), "t")
    _, alone = store._batch_args("e", _commits(hall, outcomes, alike=False), "t")
    assert _blobs(shared) == _blobs(alone)
    assert (shared[5], shared[10]) == (alone[5], alone[10])


def test_a_hall_paused_at_once_is_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A "pause all" of 5,000 look-alike sessions: one decision, one event encoded (the rest
    are cut from it), and still each session's own event and version."""
    hall = [session(status="active", started_at=NOW, deadline=NOW + 3600, version=n % 7)
            for n in range(5000)]
    for n, s in enumerate(hall):
        s["id"] = f"s{n}"
    decide = machine.CommandDecisions(exam(), Action.PAUSE, "staff:p", NOW, {"command_id": "c"})
    outcomes = [decide(s) for s in hall]
    encoded = 0
    real = redis_store.encode_event

    def counted(event: Event, version: int | None) -> bytes:
        nonlocal encoded
        encoded += 1
        return real(event, version)

    monkeypatch.setattr(redis_store, "encode_event", counted)
    _, args = RedisStore("redis://127.0.0.1:1/0")._batch_args(
        "e", _commits(hall, outcomes, alike=True), "t")
    assert encoded == 1
    blobs = [blob for commit in _blobs(args) for blob in commit]
    events = [msgpack.unpackb(b) for b in blobs]
    assert [(e["session_id"], e["changes"]["version"]) for e in events] == [
        (f"s{n}", n % 7 + 1) for n in range(5000)]
    monkeypatch.undo()
    assert blobs == [redis_store.encode_event(o.events[0], n % 7 + 1)  # type: ignore[union-attr]
                     for n, o in enumerate(outcomes)]
