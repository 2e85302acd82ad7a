"""Whether a candidate session token still opens its session: the rule, with no I/O.

A token names its session and the session's token generation when it was issued. Staff revoke
every earlier token of a session by moving the generation on (and get a new token for it). A
token also expires `REALTIME_CANDIDATE_TOKEN_TTL` seconds after the later of its issue and its
exam's end, but never while its session runs (awaiting, active or paused): expiry must not
lock a candidate out mid-exam, so a token good at the start stays good to the end.
"""

from __future__ import annotations

from typing import Any

from realtime.state.model import Status

RUNNING = frozenset({Status.AWAITING.value, Status.ACTIVE.value, Status.PAUSED.value})


def generation_of(session: dict[str, Any]) -> int:
    return int(session.get("token_gen") or 0)


def token_refusal(
    *, generation: int, issued_at: float, session: dict[str, Any], exam_ends_at: float | None,
    ttl: float, now: float,
) -> str | None:
    """Why the token may not open `session` (None: it may)."""
    if generation != generation_of(session):
        return "this link was replaced by a newer one; ask the exam staff for the new link"
    if session.get("status") in RUNNING or ttl <= 0:
        return None
    if now > max(issued_at, exam_ends_at or 0.0) + ttl:
        return "this link has expired; ask the exam staff for a new one"
    return None
