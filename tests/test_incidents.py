"""Incidents and time offline as the pure state machine records them: no server, no store."""

from __future__ import annotations

from typing import Any

from realtime.state import incidents, machine
from realtime.state.incidents import MAX_INCIDENT_TEXT, IncidentKind
from realtime.state.machine import Liveness, OpenRequest, Rejection, Transition
from realtime.state.model import Action, Exam, ExamSettings, new_session

NOW = 1_000_000.0
LIVE = Liveness(stale_after=30, resume_grace=60)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/130.0 Safari/537.36"


def exam(**settings: Any) -> Exam:
    return Exam(id="e", title="E", duration_minutes=60, settings=ExamSettings(**settings))


def request(
    conn: str, token: str | None = None, addr: str = "10.0.0.1", agent: str = FIREFOX
) -> OpenRequest:
    return OpenRequest(conn_id=conn, new_resume_hash=machine.hash_token(conn + "-token"),
                       resume_token=token, remote_addr=addr, user_agent=agent)


def applied(outcome: machine.Outcome) -> Transition:
    assert isinstance(outcome, Transition), outcome
    return outcome


def after(s: dict[str, Any], outcome: machine.Outcome) -> dict[str, Any]:
    return {**s, **applied(outcome).changes, "version": s["version"] + 1}


def opened(conn: str = "a", **settings: Any) -> dict[str, Any]:
    s = new_session(id="s", exam_id="e", candidate_id="c")
    return after(s, machine.open_session(s, exam(**settings), request(conn), NOW, LIVE))


def test_a_first_open_is_no_incident_and_not_offline() -> None:
    """Opening a fresh session records nothing and starts no offline time."""
    s = opened()
    assert s["incidents"] == 0 and s["last_incident"] == ""
    assert s["offline_since"] is None and s["offline_seconds"] == 0.0
    assert s["device"] == incidents.device_of(FIREFOX) != ""


def test_a_refused_open_on_a_locked_session_counts_an_incident() -> None:
    """`already_open` and `locked` refusals carry the incident changes in their event."""
    s = opened(lock_sessions=True)
    r = machine.open_session(s, exam(lock_sessions=True), request("b", addr="10.0.0.9"),
                             NOW + 1, LIVE)
    assert isinstance(r, Rejection) and r.reason == "already_open"
    assert r.changes["incidents"] == 1
    assert r.changes["last_incident"] == IncidentKind.REFUSED
    assert r.changes["last_incident_at"] == NOW + 1
    assert "already open elsewhere" in r.changes["last_incident_text"]
    assert "10.0.0.9" in r.changes["last_incident_text"]
    assert r.event is not None and r.event.changes == r.changes
    assert r.event.details["incidents"] == ["refused"]


def test_a_refusal_of_a_closed_session_is_no_incident() -> None:
    """Opening a finished session (a reload after submitting) changes nothing."""
    s = new_session(id="s", exam_id="e", candidate_id="c", status="completed")
    r = machine.open_session(s, exam(), request("b"), NOW, LIVE)
    assert isinstance(r, Rejection) and r.reason == "closed" and r.changes == {}


def test_a_second_tab_taking_over_is_an_incident() -> None:
    """Without a lock another tab takes the session over: a takeover incident."""
    s = opened()
    t = applied(machine.open_session(s, exam(), request("b"), NOW + 2, LIVE))
    assert t.changes["last_incident"] == IncidentKind.TAKEOVER
    assert t.changes["incidents"] == 1
    assert t.events[0].details["incidents"] == ["takeover"]


def test_the_same_tab_resuming_is_no_takeover() -> None:
    """The current resume token reconnecting while the old socket lingers is no takeover."""
    s = opened(lock_sessions=True)
    t = applied(machine.open_session(s, exam(lock_sessions=True), request("b", "a-token"),
                                     NOW + 2, LIVE))
    assert "incidents" not in t.changes


def test_address_and_device_changes_between_opens_are_incidents() -> None:
    """Another address and another browser: two incidents; the latest names the device."""
    s = opened()
    s = after(s, machine.disconnect(s, "a", NOW + 5, "closed"))
    t = applied(machine.open_session(s, exam(), request("b", addr="192.0.2.7", agent=CHROME),
                                     NOW + 10, LIVE))
    assert t.changes["incidents"] == 2
    assert t.changes["last_incident"] == IncidentKind.DEVICE_CHANGED
    assert "10.0.0.1 → 192.0.2.7" in t.changes["last_incident_text"]
    assert t.events[0].details["incidents"] == ["device_changed", "address_changed"]


def test_a_clean_close_is_offline_time_but_no_incident() -> None:
    """Closing the page is no incident; the time until it is back counts as offline."""
    s = opened()
    s = after(s, machine.disconnect(s, "a", NOW + 10, "closed"))
    assert s["incidents"] == 0 and s["offline_since"] == NOW + 10
    s = after(s, machine.open_session(s, exam(), request("b"), NOW + 25, LIVE))
    assert s["offline_since"] is None and s["offline_seconds"] == 15.0


def test_offline_time_accumulates_over_two_drops() -> None:
    """Two silent drops: two incidents, and the offline time of both spells adds up."""
    s = opened()
    s = after(s, machine.disconnect(s, "a", NOW + 10, "close 4009", dropped=True))
    assert s["last_incident"] == IncidentKind.DROPPED and s["incidents"] == 1
    assert "close 4009" in s["last_incident_text"]
    s = after(s, machine.open_session(s, exam(), request("b", "a-token"), NOW + 14, LIVE))
    s = after(s, machine.disconnect(s, "b", NOW + 100, "lost 1006", dropped=True))
    s = after(s, machine.open_session(s, exam(), request("c", "b-token"), NOW + 106.5, LIVE))
    assert s["incidents"] == 2
    assert s["offline_seconds"] == 10.5 and s["offline_since"] is None
    assert incidents.offline_total(s, NOW + 500) == 10.5


def test_the_sweeper_counts_offline_time_from_when_the_holder_was_last_heard() -> None:
    """A holder that went silent is offline since its `last_seen`, and it is a drop."""
    s = opened()
    t = applied(machine.expire_holder(s, NOW + 40, LIVE))
    assert t.changes["offline_since"] == NOW
    assert t.changes["last_incident"] == IncidentKind.DROPPED
    assert incidents.offline_total({**s, **t.changes}, NOW + 50) == 50


def test_an_open_over_a_silent_holder_counts_the_drop_and_its_time() -> None:
    """The holder went silent and nobody marked it: the new open records both."""
    s = opened()
    t = applied(machine.open_session(s, exam(), request("b"), NOW + 45, LIVE))
    assert t.changes["last_incident"] == IncidentKind.DROPPED
    assert t.changes["offline_seconds"] == 45.0 and t.changes["offline_since"] is None


def test_a_reattach_forgets_the_offline_spell() -> None:
    """Marked offline while the server could not hear it, but never gone: no time counted."""
    s = opened()
    s = after(s, machine.expire_holder(s, NOW + 40, LIVE))
    s = after(s, machine.reattach(s, "a", NOW + 41))
    assert s["offline_since"] is None and s["offline_seconds"] == 0.0


def test_terminate_ends_the_offline_spell() -> None:
    """A session terminated while offline stops counting offline time."""
    s = opened()
    s = after(s, machine.disconnect(s, "a", NOW + 10, "closed"))
    s = after(s, machine.apply_command(s, exam(), Action.TERMINATE, "staff:p", NOW + 70))
    assert s["offline_since"] is None and s["offline_seconds"] == 60.0


def test_the_latest_incident_text_is_bounded() -> None:
    """However long the addresses, the stored text stays within its limit."""
    s = new_session(id="s", exam_id="e", candidate_id="c")
    many = [(IncidentKind.ADDRESS_CHANGED, "x" * 500), (IncidentKind.TAKEOVER, "y" * 500)]
    changes = incidents.record(s, many, NOW)
    assert len(changes["last_incident_text"]) == MAX_INCIDENT_TEXT
    assert changes["last_incident"] == IncidentKind.TAKEOVER and changes["incidents"] == 2


def test_sessions_from_before_incidents_existed_still_work() -> None:
    """A session without the new fields (rebuilt from an older state) gets them on change."""
    s = opened()
    for name in ("incidents", "last_incident", "last_incident_text", "last_incident_at",
                 "offline_seconds", "offline_since", "device"):
        del s[name]
    s = after(s, machine.disconnect(s, "a", NOW + 1, "lost 1006", dropped=True))
    assert s["incidents"] == 1 and s["offline_since"] == NOW + 1
