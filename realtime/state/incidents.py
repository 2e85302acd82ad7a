"""Incidents and time offline: what the live table shows of a session's connection trouble.

Pure helpers of the state machine. An incident is something staff should notice without
opening the history: an open refused on a locked session, a takeover by another tab or device,
a silent drop, a change of address or device between opens. The session keeps only a count and
the latest one (kind, short text, time), so its size stays bounded however many happen; the
history keeps each one in the event that caused it (`details["incidents"]`).

Time offline is kept the same way: `offline_since` while a started session has no connection,
folded into `offline_seconds` when it is back (or closed), so the total survives reconnects,
processes and state-store rebuilds (it travels in the events' changes like every field).
"""

from __future__ import annotations

import enum
import hashlib
from typing import Any

MAX_INCIDENT_TEXT = 160  # characters of `last_incident_text`


class IncidentKind(enum.StrEnum):
    """What happened, most serious first (the latest incident names the most serious one)."""

    REFUSED = "refused"  # an open refused: the session is locked, or already open elsewhere
    TAKEOVER = "takeover"  # another tab or device took the session over
    DROPPED = "dropped"  # the connection was lost without a close (silence, no close frame)
    DEVICE_CHANGED = "device_changed"  # opened from another browser or device than before
    ADDRESS_CHANGED = "address_changed"  # opened from another network address than before


Incident = tuple[IncidentKind, str]


def device_of(user_agent: str) -> str:
    """A short fingerprint of a browser's User-Agent ('' for none): enough to notice that a
    session was opened from another browser or device, without keeping the string itself."""
    if not user_agent:
        return ""
    return hashlib.sha256(user_agent.encode()).hexdigest()[:12]


def record(session: dict[str, Any], incidents: list[Incident], now: float) -> dict[str, Any]:
    """The session changes that count `incidents` and make the most serious the latest."""
    if not incidents:
        return {}
    order = list(IncidentKind)
    ranked = sorted(incidents, key=lambda i: order.index(i[0]))
    text = "; ".join(t for _, t in ranked)
    if len(text) > MAX_INCIDENT_TEXT:
        text = text[: MAX_INCIDENT_TEXT - 1] + "…"
    return {
        "incidents": int(session.get("incidents") or 0) + len(incidents),
        "last_incident": ranked[0][0].value,
        "last_incident_text": text,
        "last_incident_at": now,
    }


def went_offline(session: dict[str, Any], since: float) -> dict[str, Any]:
    """The session lost its connection at `since` (kept if it was already offline)."""
    if session.get("offline_since") is not None:
        return {}
    return {"offline_since": since}


def back_online(session: dict[str, Any], now: float, count: bool = True) -> dict[str, Any]:
    """The session has a connection again (or was closed) at `now`: the time since it went
    offline joins the total. `count=False` forgets it instead (the connection was never
    lost: only marked so while this server could not hear it)."""
    since = session.get("offline_since")
    if since is None:
        return {}
    changes: dict[str, Any] = {"offline_since": None}
    if count:
        total = float(session.get("offline_seconds") or 0.0) + max(0.0, now - float(since))
        changes["offline_seconds"] = round(total, 3)
    return changes


def offline_total(session: dict[str, Any], now: float) -> float:
    """Seconds offline so far, the current spell included."""
    total = float(session.get("offline_seconds") or 0.0)
    since = session.get("offline_since")
    return total + max(0.0, now - float(since)) if since is not None else total


def kinds(incidents: list[Incident]) -> list[str]:
    """For an event's details: which incidents it recorded."""
    return [kind.value for kind, _ in incidents]
