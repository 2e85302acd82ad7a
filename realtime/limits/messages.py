"""The message rate of one WebSocket: what to do with each incoming frame.

Frames within the rate are handled. Over it they are dropped unread, so nothing over the
limit is ever applied or committed: the first drop of a run is answered with an `error`
frame (`rate_limited`), and once more than `burst` were dropped in a row the socket is closed
with 4029 (the client reconnects after a backoff).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from realtime.limits.bucket import Rate, TokenBucket


class Verdict(enum.Enum):
    HANDLE = "handle"
    WARN = "warn"  # drop it, and tell the client (first drop of a run)
    DROP = "drop"
    CLOSE = "close"  # the client goes on regardless: close the socket


class MessageLimiter:
    __slots__ = ("_bucket", "_close_after", "_on_drop", "dropped")

    def __init__(self, rate: Rate, now: float, on_drop: Callable[[], None] | None = None) -> None:
        self._bucket = TokenBucket(rate, now)
        self._close_after = rate.burst
        self._on_drop = on_drop  # counts and logs (realtime.limits.refusals)
        self.dropped = 0  # dropped in a row (since the last handled frame)

    def admit(self, now: float) -> Verdict:
        if self._bucket.take(now):
            self.dropped = 0
            return Verdict.HANDLE
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()
        if self.dropped == 1:
            return Verdict.WARN
        if self.dropped > self._close_after:
            return Verdict.CLOSE
        return Verdict.DROP

    def retry_after(self) -> float:
        return self._bucket.retry_after()
