"""The session state machine: pure functions from (session, request, now) to a transition.

Nothing here does I/O. A store commits a `Transition` atomically against the session version it
was computed from (compare-and-set); on a conflict the caller re-reads and asks again. Because
both the memory and the Redis store commit what these functions decide, the rules cannot drift
between backends.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from realtime.state import incidents
from realtime.state.incidents import Incident, IncidentKind
from realtime.state.model import (
    Action,
    Event,
    EventKind,
    Exam,
    RefusalReason,
    SkipReason,
    Status,
)

MAX_EXTEND_MINUTES = 24 * 60
MAX_NOTICE_LENGTH = 2000


@dataclass(slots=True)
class Transition:
    """What to change in a session, and the history events that say so.

    `like`: transitions with the same `like` object (copies of one decision of a bulk
    command: `CommandDecisions`) hold equal changes and equal events but for the session they
    are about (its id), values and their types alike; a store may encode one and reuse it."""

    changes: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    like: object | None = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class Rejection:
    """A request that changes nothing; `reason` is a documented code."""

    reason: str
    message: str
    event: Event | None = None  # refusals of opens are recorded too
    # What the recorded refusal changes (an incident's count and text): committed against
    # the version decided on, like a transition.
    changes: dict[str, Any] = field(default_factory=dict)


Outcome = Transition | Rejection


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True)
class Liveness:
    """Timing rules for connections, from configuration."""

    stale_after: float = 15.0  # a holder not seen for this long is not live any more
    resume_grace: float = 60.0  # a tab may resume a locked session this long after a drop


def _event(
    session: dict[str, Any],
    kind: str,
    actor: str,
    now: float,
    changes: dict[str, Any],
    details: dict[str, Any] | None = None,
) -> Event:
    status = session["status"]
    # (positional: a dataclass's generated __init__ takes them ~2x faster than by keyword,
    # which a bulk command's 5,000 events notice; the order is `Event`'s fields')
    return Event(session["exam_id"], session["id"], kind, actor, now, status,
                 changes.get("status", status), details or {}, changes)


def candidate_actor(session: dict[str, Any]) -> str:
    """How history names the candidate of a session (the same for every connection)."""
    return f"candidate:{session['candidate_id'] or session['id']}"


def holder_is_live(session: dict[str, Any], now: float, liveness: Liveness) -> bool:
    """Whether another connection currently holds the session."""
    if not session["connected"] or not session["conn_id"]:
        return False
    last_seen = session["last_seen"]
    return last_seen is not None and now - last_seen < liveness.stale_after


def _start_changes(session: dict[str, Any], exam: Exam, now: float) -> dict[str, Any]:
    minutes = exam.duration_minutes + int(session["extra_minutes"])
    return {"status": Status.ACTIVE.value, "started_at": now, "deadline": now + minutes * 60}


def resume_grace(exam: Exam, liveness: Liveness) -> float:
    """How long a tab may resume its locked session after a drop: the exam's own setting
    (0 = strict: no resume without an unlock) or, when unset, the deployment default."""
    own = exam.settings.resume_grace_seconds
    return liveness.resume_grace if own is None else float(own)


@dataclass(slots=True)
class OpenRequest:
    conn_id: str
    new_resume_hash: str
    actor: str = ""  # empty: the session's candidate
    resume_token: str | None = None
    client_id: str = ""
    remote_addr: str = ""
    user_agent: str = ""  # the browser's User-Agent: which device opened, shown in history
    # Seconds since the session's `last_seen` during which the server could not hear anyone
    # (its state store was unreachable): they do not count against the resume grace.
    unheard: float = 0.0


def open_session(
    session: dict[str, Any],
    exam: Exam,
    request: OpenRequest,
    now: float,
    liveness: Liveness,
) -> Outcome:
    """A candidate connection asks to open (or resume) its session. Rules 1–3 of the spec."""
    status = Status(session["status"])

    def refuse(reason: RefusalReason, message: str) -> Rejection:
        details: dict[str, Any] = {"reason": reason.value, "remote_addr": request.remote_addr,
                                   "user_agent": request.user_agent}
        changes: dict[str, Any] = {}
        if reason in _INCIDENT_REFUSALS:
            found = [(IncidentKind.REFUSED, _refusal_text(reason, request.remote_addr))]
            changes = incidents.record(session, found, now)
            details["incidents"] = incidents.kinds(found)
        actor = request.actor or candidate_actor(session)
        event = _event(session, EventKind.REFUSED, actor, now, changes, details)
        return Rejection(reason.value, message, event, changes)

    if status.final:
        return refuse(RefusalReason.CLOSED, f"the session is {status.value}")
    if status is Status.READY:
        if exam.starts_at is not None and now < exam.starts_at:
            return refuse(RefusalReason.OUTSIDE_WINDOW, "the exam has not started yet")
        if exam.ends_at is not None and now > exam.ends_at:
            return refuse(RefusalReason.OUTSIDE_WINDOW, "the exam has ended")

    live = holder_is_live(session, now, liveness)
    token_ok = bool(
        request.resume_token
        and session["resume_hash"]
        and hash_token(request.resume_token) == session["resume_hash"]
    )
    last_seen = session["last_seen"]
    grace = resume_grace(exam, liveness)
    within_grace = grace > 0 and (
        live
        or (
            last_seen is not None
            and now - last_seen - max(0.0, request.unheard) <= grace
        )
    )
    resuming = token_ok and within_grace

    if session["locked"] and not resuming:
        if live:
            return refuse(
                RefusalReason.ALREADY_OPEN,
                "the session is locked and already open elsewhere; ask your supervisor",
            )
        return refuse(RefusalReason.LOCKED, "the session is locked; ask your supervisor")

    changes: dict[str, Any] = {
        "connected": True,
        "conn_id": request.conn_id,
        "client_id": request.client_id,
        "remote_addr": request.remote_addr,
        "last_seen": now,
        "resume_hash": request.new_resume_hash,
    }
    if token_ok:
        changes["reconnects"] = int(session["reconnects"]) + 1
    device = incidents.device_of(request.user_agent)
    if device:
        changes["device"] = device
    found = _open_incidents(session, request, device, live, token_ok)
    offline = session
    if not live and session["connected"] and session["conn_id"]:
        # The holder went silent and nobody marked it yet: offline since it was last heard.
        found.append((IncidentKind.DROPPED, "Connection lost (no sign of life)"))
        offline = {**session, **incidents.went_offline(session, last_seen or now)}
    changes.update(incidents.back_online(offline, now))
    changes.update(incidents.record(session, found, now))
    if status is Status.READY:
        if exam.settings.requires_authorization and not session["authorized"]:
            changes["status"] = Status.AWAITING.value
        else:
            changes.update(_start_changes(session, exam, now))

    details: dict[str, Any] = {"remote_addr": request.remote_addr, "client_id": request.client_id,
                               "user_agent": request.user_agent}
    if live and session["conn_id"] != request.conn_id:
        details["superseded"] = True
    if found:
        details["incidents"] = incidents.kinds(found)
    kind = EventKind.RESUMED_CONNECTION if token_ok else EventKind.OPENED
    actor = request.actor or candidate_actor(session)
    events = [_event(session, kind, actor, now, changes, details)]

    if exam.settings.lock_sessions or session["relock"]:
        changes["locked"] = True
        changes["relock"] = True
        if not session["locked"]:
            relock = _event(session, EventKind.RELOCKED, "system", now, {"locked": True})
            relock.before = relock.after = changes.get("status", session["status"])
            events.append(relock)
    return Transition(changes, events)


_INCIDENT_REFUSALS = (RefusalReason.LOCKED, RefusalReason.ALREADY_OPEN)


def _refusal_text(reason: RefusalReason, remote_addr: str) -> str:
    where = f" (from {remote_addr})" if remote_addr else ""
    if reason is RefusalReason.ALREADY_OPEN:
        return f"Open refused: already open elsewhere{where}"
    return f"Open refused: locked{where}"


def _open_incidents(
    session: dict[str, Any], request: OpenRequest, device: str, live: bool, token_ok: bool
) -> list[Incident]:
    """What an accepted open tells staff: another tab or device took over, or the session
    came back from another address or browser than it was last opened from."""
    found: list[Incident] = []
    if live and session["conn_id"] != request.conn_id and not token_ok:
        found.append((IncidentKind.TAKEOVER, "Taken over by another tab or device"))
    before = session.get("device") or ""
    if device and before and device != before:
        found.append((IncidentKind.DEVICE_CHANGED, "Opened from another browser or device"))
    old, new = session["remote_addr"], request.remote_addr
    if old and new and old != new:
        found.append((IncidentKind.ADDRESS_CHANGED, f"Address changed: {old} → {new}"))
    return found


def apply_command(
    session: dict[str, Any],
    exam: Exam,
    action: Action,
    actor: str,
    now: float,
    params: dict[str, Any] | None = None,
) -> Outcome:
    """A staff command on one session. Validated against its status; never half-applied."""
    decided = _command(session, exam, action, actor, now, params or {})
    if isinstance(decided, Rejection):
        return decided
    changes, details = decided
    return Transition(changes, [_event(session, action.value, actor, now, changes, details)])


def _command(
    session: dict[str, Any],
    exam: Exam,
    action: Action,
    actor: str,
    now: float,
    params: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]] | Rejection:
    """`apply_command`'s decision: the changes and the event's details, or the rejection. It
    reads the session only by `session[name]` and `session.get(name)`, and never its `id` or
    `exam_id` (`CommandDecisions` relies on both)."""
    status = Status(session["status"])
    details: dict[str, Any] = {}
    for key in ("reason", "reason_category", "command_id"):
        if params.get(key):
            details[key] = params[key]
    if action is Action.REOPEN:
        outcome = _reopen(session, status, now, bool(params.get("reason")))
        if isinstance(outcome, Rejection):
            return outcome
        return outcome, details
    if status.final:
        return Rejection(SkipReason.FINAL_STATUS.value, f"the session is {status.value}")

    changes: dict[str, Any] = {}

    def invalid(wanted: str) -> Rejection:
        return Rejection(
            SkipReason.INVALID_STATUS.value,
            f"cannot {action.value} a session that is {status.value} (needs {wanted})",
        )

    if action is Action.AUTHORIZE:
        if session["authorized"] or status in (Status.ACTIVE, Status.PAUSED):
            return Rejection(SkipReason.ALREADY_AUTHORIZED.value, "already authorized")
        changes["authorized"] = True
        if status is Status.AWAITING:
            changes.update(_start_changes(session, exam, now))
    elif action is Action.PAUSE:
        if status is not Status.ACTIVE:
            return invalid("active")
        changes = {"status": Status.PAUSED.value, "paused_at": now}
    elif action is Action.RESUME:
        if status is not Status.PAUSED:
            return invalid("paused")
        changes = {"status": Status.ACTIVE.value, "paused_at": None}
        # Paused time does not count against the candidate.
        if session["deadline"] is not None and session["paused_at"] is not None:
            changes["deadline"] = session["deadline"] + (now - session["paused_at"])
    elif action is Action.LOCK:
        if session["locked"]:
            return Rejection(SkipReason.ALREADY_LOCKED.value, "already locked")
        changes = {"locked": True, "relock": True}
    elif action is Action.UNLOCK:
        if not session["locked"]:
            return Rejection(SkipReason.NOT_LOCKED.value, "not locked")
        changes = {"locked": False}
    elif action is Action.ACKNOWLEDGE_HAND:
        if not session.get("hand_raised"):
            return Rejection(SkipReason.HAND_NOT_RAISED.value, "no hand is raised")
        changes = {"hand_raised": False, "hand_acked_at": now, "hand_acked_by": actor}
    elif action is Action.TERMINATE:
        changes = {"status": Status.TERMINATED.value, "connected": False}
        changes.update(incidents.back_online(session, now))  # offline time ends with it
        if status is Status.ACTIVE:
            # The clock stops here: a reopened session resumes with the time it had left.
            changes["paused_at"] = now
    elif action is Action.EXTEND:
        minutes = params.get("minutes")
        if not isinstance(minutes, int) or isinstance(minutes, bool):
            return Rejection(SkipReason.INVALID_PARAMS.value, "extend needs an integer 'minutes'")
        if not 1 <= minutes <= MAX_EXTEND_MINUTES:
            return Rejection(
                SkipReason.INVALID_PARAMS.value, f"minutes must be 1..{MAX_EXTEND_MINUTES}"
            )
        changes = {"extra_minutes": int(session["extra_minutes"]) + minutes}
        if session["deadline"] is not None:
            changes["deadline"] = session["deadline"] + minutes * 60
        details["minutes"] = minutes
    elif action is Action.REDUCE:
        minutes = params.get("minutes")
        if not isinstance(minutes, int) or isinstance(minutes, bool):
            return Rejection(SkipReason.INVALID_PARAMS.value, "reduce needs an integer 'minutes'")
        if not 1 <= minutes <= MAX_EXTEND_MINUTES:
            return Rejection(
                SkipReason.INVALID_PARAMS.value, f"minutes must be 1..{MAX_EXTEND_MINUTES}"
            )
        short = _too_short(session, exam, status, minutes, now)
        if short is not None:
            return short
        changes = {"extra_minutes": int(session["extra_minutes"]) - minutes}
        if session["deadline"] is not None:
            changes["deadline"] = session["deadline"] - minutes * 60
        details["minutes"] = minutes
    elif action is Action.NOTICE:
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            return Rejection(SkipReason.INVALID_PARAMS.value, "notice needs a non-empty 'text'")
        if len(text) > MAX_NOTICE_LENGTH:
            return Rejection(
                SkipReason.INVALID_PARAMS.value, f"text is longer than {MAX_NOTICE_LENGTH}"
            )
        details["text"] = text
        # Kept until acknowledged, so a page that was offline still shows it on (re)open.
        changes = {"notice": text, "notice_id": params.get("command_id", "")}
    else:  # pragma: no cover - Action is a closed enum
        raise ValueError(action)
    # Kept until the page acknowledges it: a page that was offline shows the resulting state
    # on reopen and acks this id, which makes the queued command `delivered`.
    tracked = DELIVERY_TRACKED.get(action)
    if tracked is not None:
        changes[tracked] = params.get("command_id", "")
    return changes, details


_MISSING = object()
_SCALARS = (str, int, float, bool, type(None))


class _Reads:
    """A session as a decision sees it: notes the name of every field read, in order."""

    __slots__ = ("_session", "names")

    def __init__(self, session: dict[str, Any]) -> None:
        self._session = session
        self.names: list[str] = []

    def __getitem__(self, name: str) -> Any:
        self.names.append(name)
        return self._session[name]

    def get(self, name: str, default: Any = None) -> Any:
        self.names.append(name)
        return self._session.get(name, default)


def _same_as(session: dict[str, Any], names: tuple[str, ...]) -> tuple[Any, ...]:
    """What `names` hold in `session`, as a key under which only identical values meet: 1,
    1.0 and True (or 0.0 and -0.0) decide alike but are written differently."""
    if len(names) == 1:  # a pause, a lock: the status alone
        value = session.get(names[0], _MISSING)
        return ((float, repr(value)) if type(value) is float else (type(value), value),)
    key = []
    for name in names:
        value = session.get(name, _MISSING)
        key.append((float, repr(value)) if type(value) is float else (type(value), value))
    return tuple(key)


class CommandDecisions:
    """`apply_command` of one staff command (one exam, action, actor, time and params) for
    session after session, deciding once per distinct input.

    The state machine still decides: the first session of each input is decided by it, on a
    view that notes which fields the decision read. A later session whose fields of those
    names hold identical values would be decided the same way (the decision is a pure
    function of its constants and of what it reads, so it reads the same fields in the same
    order and takes the same path): it gets a copy of that decision, with an event of its
    own (its id, exam and status). A hall's "pause all" is thus decided once, not 5,000
    times. Where inputs are mostly distinct (a resume of sessions with deadlines of their
    own), it stops remembering and decides each session plainly. `tests/test_properties.py`
    checks that the outcomes equal `apply_command`'s, session by session.
    """

    GIVE_UP_AFTER = 64  # distinct inputs seen; then more misses than hits: decide plainly

    __slots__ = ("_kind", "_known", "action", "actor", "decided", "exam", "hits", "now",
                 "params")

    def __init__(self, exam: Exam, action: Action, actor: str, now: float,
                 params: dict[str, Any] | None = None) -> None:
        self.exam, self.action, self.actor, self.now = exam, action, actor, now
        self.params = params or {}
        self._kind = action.value
        # (names read, in order) -> their values' key -> (changes, details) or the rejection
        self._known: list[tuple[tuple[str, ...], dict[tuple[Any, ...], Any]]] | None = []
        self.decided = 0  # sessions the state machine decided (the rest were copies)
        self.hits = 0

    def __call__(self, session: dict[str, Any]) -> Outcome:
        known = self._known
        if known is None:
            self.decided += 1
            return apply_command(session, self.exam, self.action, self.actor, self.now,
                                 self.params)
        for names, decisions in known:
            try:
                found = decisions.get(_same_as(session, names))
            except TypeError:  # a value that cannot be a key: decide this one plainly
                found = None
                break
            if found is not None:
                self.hits += 1
                if isinstance(found, Rejection):
                    return Rejection(found.reason, found.message)
                # `_outcome`'s copy, inline (5,000 calls in a hall's "pause all")
                changes = dict(found[0])
                return Transition(changes, [_event(session, self._kind, self.actor, self.now,
                                                   changes, dict(found[1]))], found)
        self.decided += 1
        reads = _Reads(session)
        try:
            decided = _command(reads, self.exam, self.action, self.actor,  # type: ignore[arg-type]
                               self.now, self.params)
        except Exception:  # whatever it is, the plain decision says it (or does not fail)
            self._known = None
            return apply_command(session, self.exam, self.action, self.actor, self.now,
                                 self.params)
        entry = self._remember(session, tuple(reads.names), decided)
        return self._outcome(session, decided, copy=False, like=entry)

    def _remember(self, session: dict[str, Any], names: tuple[str, ...],
                  decided: tuple[dict[str, Any], dict[str, Any]] | Rejection) -> Any:
        """Remember the decision for later sessions of this input; returns what they will be
        given (the `like` of their transitions), or None if it is not remembered."""
        known = self._known
        assert known is not None
        if self.decided > self.GIVE_UP_AFTER and self.decided > self.hits:
            self._known = None  # mostly distinct: remembering costs more than it saves
            return None
        if isinstance(decided, Rejection):
            if decided.event is not None or decided.changes:
                return None  # not a command's (it records nothing): never shared
            entry: Any = decided
        else:
            changes, details = decided
            values = [*changes.values(), *details.values()]
            if not all(isinstance(v, _SCALARS) for v in values):
                return None  # shared copies must not share a mutable value
            entry = (dict(changes), dict(details))
        try:
            key = _same_as(session, names)
            for seen, decisions in known:
                if seen == names:
                    decisions[key] = entry
                    return entry
            known.append((names, {key: entry}))
        except TypeError:  # unhashable: not remembered
            return None
        return entry

    def _outcome(self, session: dict[str, Any],
                 decided: tuple[dict[str, Any], dict[str, Any]] | Rejection,
                 copy: bool, like: Any) -> Outcome:
        """The outcome for `session`; a transition's `like` is the remembered decision it
        copies (or was remembered as): `_command` reads `status` first and never `id` or
        `exam_id`, so the copies' events differ only in their session."""
        if isinstance(decided, Rejection):
            return Rejection(decided.reason, decided.message) if copy else decided
        changes, details = decided
        if copy:
            changes, details = dict(changes), dict(details)
        return Transition(changes, [_event(session, self._kind, self.actor, self.now, changes,
                                           details)], like)


# Commands whose effect a page shows from the session's state (so it can acknowledge them
# after a reconnect), and the session field that remembers the latest one until it does.
DELIVERY_TRACKED: dict[Action, str] = {
    Action.PAUSE: "status_command_id",
    Action.RESUME: "status_command_id",
    Action.LOCK: "lock_command_id",
    Action.UNLOCK: "lock_command_id",
}


def _too_short(
    session: dict[str, Any], exam: Exam, status: Status, minutes: int, now: float
) -> Rejection | None:
    """Reduce never takes more than is left: the end stays at or after now (for a paused
    session, after the moment its clock stopped); a session not started keeps at least one
    minute. Refused rather than clamped, so a typo never ends a candidate's exam at once."""
    deadline = session["deadline"]
    if deadline is None:
        total = exam.duration_minutes + int(session["extra_minutes"])
        if total - minutes >= 1:
            return None
        left = f"the exam would last {total - minutes} min"
    else:
        clock = session["paused_at"] if status is Status.PAUSED and session["paused_at"] else now
        if deadline - minutes * 60 >= clock:
            return None
        left = f"only {max(0.0, (deadline - clock) / 60):.1f} min left"
    return Rejection(
        SkipReason.NOT_ENOUGH_TIME.value, f"cannot take {minutes} min away: {left}"
    )


def _reopen(
    session: dict[str, Any], status: Status, now: float, has_reason: bool
) -> dict[str, Any] | Rejection:
    """A terminated session back in play (TAO's "reactivate"): `paused` with the time it had
    left when it was terminated (its clock stopped then), or `ready` if it never started.
    Unlocked, so the candidate can open it once more (a locking exam locks it again then);
    the proctor resumes it."""
    if status is not Status.TERMINATED:
        return Rejection(
            SkipReason.INVALID_STATUS.value,
            f"cannot reopen a session that is {status.value} (needs terminated)",
        )
    if not has_reason:
        return Rejection(SkipReason.INVALID_PARAMS.value, "reopen needs a 'reason'")
    changes: dict[str, Any]
    if session["started_at"] is None:
        changes = {"status": Status.READY.value, "paused_at": None}
    else:
        changes = {"status": Status.PAUSED.value, "paused_at": session["paused_at"] or now}
    if session["locked"]:
        changes["locked"] = False
    return changes


def disconnect(
    session: dict[str, Any], conn_id: str, now: float, reason: str, dropped: bool = False
) -> Outcome:
    """The connection `conn_id` went away. Only the current holder can disconnect the session.

    `dropped`: it was lost without a close (no answer to pings, no close frame): an incident."""
    if session["conn_id"] != conn_id or not session["connected"]:
        return Rejection("not_holder", "connection does not hold the session")
    changes: dict[str, Any] = {"connected": False, "last_seen": now}
    details: dict[str, Any] = {"reason": reason}
    if not Status(session["status"]).final:
        changes.update(incidents.went_offline(session, now))
    if dropped:
        found = [(IncidentKind.DROPPED, f"Connection lost ({reason})")]
        changes.update(incidents.record(session, found, now))
        details["incidents"] = incidents.kinds(found)
    event = _event(session, EventKind.DISCONNECTED, "system", now, changes, details)
    return Transition(changes, [event])


def reattach(session: dict[str, Any], conn_id: str, now: float) -> Outcome:
    """The connection `conn_id` still holds the session and answers pings, but the session was
    marked disconnected meanwhile (a sweeper during a state-store outage): connected again."""
    if session["conn_id"] != conn_id or session["connected"]:
        return Rejection("not_holder", "connection does not hold a disconnected session")
    if Status(session["status"]).final:
        return Rejection("closed", f"the session is {session['status']}")
    changes: dict[str, Any] = {"connected": True, "last_seen": now}
    # Never offline: only marked so while this server could not hear it.
    changes.update(incidents.back_online(session, now, count=False))
    details = {"reason": "still connected", "client_id": session["client_id"]}
    event = _event(session, EventKind.RESUMED_CONNECTION, "system", now, changes, details)
    return Transition(changes, [event])


def expire_holder(
    session: dict[str, Any], now: float, liveness: Liveness, node_lost: bool = False
) -> Outcome:
    """A session still marked connected whose holder has not been heard of for too long, or
    whose holder's server process stopped beating (`node_lost`): mark it disconnected so every
    dashboard sees it."""
    if not session["connected"] or (not node_lost and holder_is_live(session, now, liveness)):
        return Rejection("live", "the holder is alive")
    changes: dict[str, Any] = {"connected": False}
    reason = "node lost" if node_lost else "holder lost"
    details: dict[str, Any] = {"reason": reason, "last_seen": session["last_seen"]}
    if not Status(session["status"]).final:
        # Offline since it was last heard of, not since this sweep noticed.
        changes.update(incidents.went_offline(session, session["last_seen"] or now))
    text = "server process lost" if node_lost else "no sign of life"
    found = [(IncidentKind.DROPPED, f"Connection lost ({text})")]
    changes.update(incidents.record(session, found, now))
    details["incidents"] = incidents.kinds(found)
    event = _event(session, EventKind.DISCONNECTED, "system", now, changes, details)
    return Transition(changes, [event])


def _require_holder(session: dict[str, Any], conn_id: str) -> Rejection | None:
    if session["conn_id"] != conn_id:
        return Rejection("not_holder", "this connection no longer holds the session")
    if Status(session["status"]).final:
        return Rejection("closed", f"the session is {session['status']}")
    return None


def report_progress(
    session: dict[str, Any], conn_id: str, actor: str, position: int, answered: int, now: float
) -> Outcome:
    rejected = _require_holder(session, conn_id)
    if rejected:
        return rejected
    if position < 0 or answered < 0:
        return Rejection(
            SkipReason.INVALID_PARAMS.value, "position and answered must not be negative"
        )
    changes = {"position": position, "answered": answered, "last_seen": now}
    return Transition(changes, [_event(session, EventKind.PROGRESS, actor, now, changes)])


def client_event(
    session: dict[str, Any], conn_id: str, actor: str, name: str, detail: str, now: float
) -> Outcome:
    """Something the candidate's page noticed (focus lost, fullscreen left, …)."""
    rejected = _require_holder(session, conn_id)
    if rejected:
        return rejected
    changes = {"alerts": int(session["alerts"]) + 1, "last_alert": name, "last_seen": now}
    details = {"name": name, "detail": detail}
    return Transition(
        changes, [_event(session, EventKind.CLIENT_EVENT, actor, now, changes, details)]
    )


def acknowledge(
    session: dict[str, Any], conn_id: str, actor: str, command_id: str, now: float
) -> Outcome:
    """The candidate's page confirms it received (and showed) a command."""
    if session["conn_id"] != conn_id:
        return Rejection("not_holder", "this connection no longer holds the session")
    changes: dict[str, Any] = {"last_seen": now}
    if command_id and command_id == session["notice_id"]:
        changes.update(notice="", notice_id="")
    for tracked in ("status_command_id", "lock_command_id"):
        if command_id and command_id == session.get(tracked):
            changes[tracked] = ""
    details = {"command_id": command_id}
    return Transition(changes, [_event(session, EventKind.DELIVERED, actor, now, changes, details)])


def raise_hand(session: dict[str, Any], conn_id: str, actor: str, now: float) -> Outcome:
    """The candidate asks for a proctor. Once per raise: a raised hand stays up until staff
    acknowledge it."""
    rejected = _require_holder(session, conn_id)
    if rejected:
        return rejected
    if session.get("hand_raised"):
        return Rejection("already_raised", "your hand is already raised")
    changes = {"hand_raised": True, "hand_raised_at": now, "hand_acked_at": None,
               "hand_acked_by": "", "last_seen": now}
    return Transition(changes, [_event(session, EventKind.HAND_RAISED, actor, now, changes)])


def submit(session: dict[str, Any], conn_id: str, actor: str, now: float) -> Outcome:
    rejected = _require_holder(session, conn_id)
    if rejected:
        return rejected
    if session["status"] != Status.ACTIVE.value:
        return Rejection(
            SkipReason.INVALID_STATUS.value, f"cannot submit while {session['status']}"
        )
    changes = {"status": Status.COMPLETED.value, "connected": False, "last_seen": now}
    return Transition(changes, [_event(session, EventKind.SUBMITTED, actor, now, changes)])


def irregularity(
    session: dict[str, Any], actor: str, category: str, note: str, now: float
) -> Transition:
    changes: dict[str, Any] = {}
    details = {"category": category, "note": note}
    return Transition(
        changes, [_event(session, EventKind.IRREGULARITY, actor, now, changes, details)]
    )
