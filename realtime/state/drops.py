"""Hall-wide drop alerts, the pure part: which drops count, and the alert they raise.

Both stores keep an exam's recent drops (`disconnected` events) and its active alert; the
memory store decides with these functions, `lua/drops_record.lua` does the same in Redis
(atomically, so any number of processes may report the same drop and only one raises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALERT_ACTIVE_SECONDS = 600  # an alert stays active this long after the last drop
MAX_ALERT_SESSIONS = 500  # sessions named in one alert (the count is exact)


@dataclass(frozen=True, slots=True)
class Drop:
    """One `disconnected` event: its seq names it, so reporting it twice counts once."""

    seq: int
    at: float
    session_id: str
    group: str

    @property
    def member(self) -> str:
        return f"{self.seq}:{self.session_id}:{self.group}"


def parse_member(member: str, at: float) -> Drop:
    seq, session_id, group = member.split(":", 2)
    return Drop(int(seq), at, session_id, group)


def alert_for(
    exam_id: str, drops: list[Drop], window: float, threshold: int,
    max_sessions: int = MAX_ALERT_SESSIONS,
) -> dict[str, Any] | None:
    """The alert `drops` (all within the window) raise, or None: fewer than `threshold`
    different candidates dropped (or the alert is off, threshold < 1)."""
    if threshold < 1 or not drops:
        return None
    ordered = sorted(drops, key=lambda d: d.seq)
    sessions: list[str] = []
    groups: dict[str, int] = {}
    seen: set[str] = set()
    for drop in ordered:
        if drop.session_id in seen:
            continue  # candidates, not drops: one flapping connection is not a hall
        seen.add(drop.session_id)
        if len(sessions) < max_sessions:
            sessions.append(drop.session_id)
        groups[drop.group] = groups.get(drop.group, 0) + 1
    if len(seen) < threshold:
        return None
    trigger = ordered[-1]
    return {
        "id": f"{exam_id}:drop:{trigger.seq}",
        "exam_id": exam_id,
        "trigger_seq": trigger.seq,
        "session_id": trigger.session_id,
        "count": len(seen),
        "window_seconds": window,
        "first_at": min(d.at for d in ordered),
        "last_at": max(d.at for d in ordered),
        "raised_at": max(d.at for d in ordered),
        "sessions": sessions,
        "groups": groups,
        "group": next(iter(groups)) if len(groups) == 1 else "",
    }
