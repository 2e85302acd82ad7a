"""The domain: exams, sessions, events. Plain data, no I/O.

Sessions travel between the pure state machine, the state stores (memory, Redis), SQL and the
wire; they are kept as flat dicts of JSON-friendly scalars so every store can hold them as a hash
and the codecs can send them as they are.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Status(enum.StrEnum):
    READY = "ready"
    AWAITING = "awaiting"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    TERMINATED = "terminated"

    @property
    def final(self) -> bool:
        return self in (Status.COMPLETED, Status.TERMINATED)


class Action(enum.StrEnum):
    """Staff commands on a session."""

    AUTHORIZE = "authorize"
    PAUSE = "pause"
    RESUME = "resume"
    LOCK = "lock"
    UNLOCK = "unlock"
    TERMINATE = "terminate"
    EXTEND = "extend"
    NOTICE = "notice"
    ACKNOWLEDGE_HAND = "acknowledge_hand"  # staff saw a raised hand (needs sessions.notice)
    REDUCE = "reduce"  # take time away (never so much that the end lies before now)
    REOPEN = "reopen"  # a terminated session may be opened again (a correction, with a reason)


class EventKind(enum.StrEnum):
    """What a history event records. Commands use their `Action` value as kind."""

    CREATED = "created"
    OPENED = "opened"
    RESUMED_CONNECTION = "reconnected"
    REFUSED = "refused"
    RELOCKED = "relocked"
    DISCONNECTED = "disconnected"
    PROGRESS = "progress"
    CLIENT_EVENT = "client_event"
    DELIVERED = "delivered"
    SUBMITTED = "submitted"
    IRREGULARITY = "irregularity"
    REASSIGNED = "reassigned"  # a guest session moved to the real candidate
    TOKEN_REVOKED = "token_revoked"  # earlier candidate session tokens no longer open it
    HAND_RAISED = "hand_raised"  # the candidate asks for a proctor
    DROP_ALERT = "drop_alert"  # many candidates of the exam dropped within a short time


class RefusalReason(enum.StrEnum):
    """Why an open was refused; sent to the candidate in a `refused` message."""

    CLOSED = "closed"
    LOCKED = "locked"
    ALREADY_OPEN = "already_open"
    NOT_FOUND = "not_found"
    NOT_ELIGIBLE = "not_eligible"
    OUTSIDE_WINDOW = "outside_window"


class SkipReason(enum.StrEnum):
    """Why a command was not applied to one target session."""

    FINAL_STATUS = "final_status"
    INVALID_STATUS = "invalid_status"
    ALREADY_LOCKED = "already_locked"
    NOT_LOCKED = "not_locked"
    ALREADY_AUTHORIZED = "already_authorized"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    CONFLICT = "conflict"
    INVALID_PARAMS = "invalid_params"
    HAND_NOT_RAISED = "hand_not_raised"
    NOT_ENOUGH_TIME = "not_enough_time"  # reduce: the end would lie before now


# Row indicators (as Safe Exam Browser Server has them): per indicator a warning and a danger
# threshold (None: that level is off). The dashboard colours a row by the worst level reached.
INDICATORS = ("rtt_ms", "offline_seconds", "alerts")
DEFAULT_INDICATORS: dict[str, dict[str, float | None]] = {
    "rtt_ms": {"warning": 500, "danger": 2000},
    "offline_seconds": {"warning": 30, "danger": 120},
    "alerts": {"warning": 1, "danger": 3},
}


def default_indicators() -> dict[str, dict[str, float | None]]:
    return {name: dict(levels) for name, levels in DEFAULT_INDICATORS.items()}


@dataclass(slots=True)
class ExamSettings:
    requires_authorization: bool = False
    lock_sessions: bool = False
    allow_guests: bool = False
    lab_networks: list[str] = field(default_factory=list)
    # Hall-wide drop alert: this many `disconnected` events within this many seconds raise
    # one `drop_alert` (0 = off).
    drop_alert_count: int = 10
    drop_alert_window_seconds: int = 60
    indicators: dict[str, dict[str, float | None]] = field(default_factory=default_indicators)
    # Seconds a tab may resume its locked session after a drop (0: strict, no resume without
    # an unlock); None: the deployment's REALTIME_RESUME_GRACE.
    resume_grace_seconds: int | None = None


@dataclass(slots=True)
class Exam:
    id: str
    title: str
    groups: list[str] = field(default_factory=list)
    starts_at: float | None = None
    ends_at: float | None = None
    duration_minutes: int = 60
    settings: ExamSettings = field(default_factory=ExamSettings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Exam:
        settings = ExamSettings(**data.get("settings", {}))
        return cls(
            id=data["id"],
            title=data["title"],
            groups=list(data.get("groups", [])),
            starts_at=data.get("starts_at"),
            ends_at=data.get("ends_at"),
            duration_minutes=int(data.get("duration_minutes", 60)),
            settings=settings,
        )


# A session is a flat dict. These are its fields and their defaults; stores keep them all.
SESSION_DEFAULTS: dict[str, Any] = {
    "id": "",
    "exam_id": "",
    "candidate_id": "",
    "candidate_name": "",
    "group": "",
    "access_code": "",
    "status": Status.READY.value,
    "locked": False,
    "relock": False,  # locked once: every later open locks it again
    "connected": False,
    "authorized": False,
    "position": 0,
    "answered": 0,
    "started_at": None,
    "deadline": None,
    "extra_minutes": 0,
    "paused_at": None,
    "last_seen": None,
    "remote_addr": "",
    "client_id": "",
    "conn_id": "",
    "rtt_ms": None,
    "reconnects": 0,
    "resume_hash": "",
    "alerts": 0,
    "last_alert": "",
    # Connection trouble staff should notice (realtime.state.incidents): a count and the latest.
    "incidents": 0,
    "last_incident": "",  # an IncidentKind value
    "last_incident_text": "",
    "last_incident_at": None,
    "offline_seconds": 0.0,  # time offline so far, spells that ended
    "offline_since": None,  # when the current spell offline began (None: not offline)
    "device": "",  # fingerprint of the last opening browser's User-Agent
    "notice": "",  # the latest staff notice until the candidate's page acknowledges it
    "notice_id": "",
    "version": 0,
    "token_gen": 0,  # candidate session tokens of another generation are revoked
    "hand_raised": False,  # the candidate asked for a proctor; cleared by acknowledge_hand
    "hand_raised_at": None,
    "hand_acked_at": None,
    "hand_acked_by": "",
    # The command that set the current status (pause/resume) or lock (lock/unlock), until the
    # page acknowledges it: a page that was offline shows the state on reopen and acks it, so
    # the queued command becomes `delivered`.
    "status_command_id": "",
    "lock_command_id": "",
}

# Fields hidden from staff and candidates (secrets and internals).
PRIVATE_FIELDS = frozenset({"resume_hash", "conn_id", "token_gen", "device"})
# Fields for staff only: an incident's text may name the address of another device that
# tried to open the session, which its candidate has no business seeing.
STAFF_ONLY_FIELDS = frozenset({
    "incidents", "last_incident", "last_incident_text", "last_incident_at",
    "offline_seconds", "offline_since",
})
HIDDEN_FROM_CANDIDATE = PRIVATE_FIELDS | STAFF_ONLY_FIELDS


def new_session(**fields: Any) -> dict[str, Any]:
    session = dict(SESSION_DEFAULTS)
    unknown = set(fields) - set(SESSION_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown session fields: {sorted(unknown)}")
    session.update(fields)
    return session


def public_view(session: dict[str, Any]) -> dict[str, Any]:
    """The session as staff see it: no secrets."""
    return {k: v for k, v in session.items() if k not in PRIVATE_FIELDS}


def candidate_view(session: dict[str, Any]) -> dict[str, Any]:
    """The session as its candidate's page sees it: no secrets, no staff-only fields."""
    return {k: v for k, v in session.items() if k not in HIDDEN_FROM_CANDIDATE}


@dataclass(slots=True)
class Event:
    """One entry of a session's history and of its exam's event log.

    `seq` is the exam's sequence number, assigned by the store when the event is committed.
    `changes` holds the session fields the event changed (after values), so dashboards can patch
    their copy without a refetch.
    """

    exam_id: str
    session_id: str
    kind: str
    actor: str
    at: float
    before: str | None = None
    after: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "exam_id": self.exam_id,
            "session_id": self.session_id,
            "kind": self.kind,
            "actor": self.actor,
            "at": self.at,
            "before": self.before,
            "after": self.after,
            "details": self.details,
            "changes": self.changes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(
            exam_id=data["exam_id"],
            session_id=data["session_id"],
            kind=data["kind"],
            actor=data["actor"],
            at=data["at"],
            before=data.get("before"),
            after=data.get("after"),
            details=data.get("details") or {},
            changes=data.get("changes") or {},
            seq=int(data.get("seq") or 0),
            id=data.get("id") or "",
        )
