"""What every limit does when it refuses: count it (Prometheus, by kind) and log it, at most
one warning per kind every `interval` seconds, so a flood cannot flood the log too."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

log = logging.getLogger("realtime.limits")


class Kind(enum.StrEnum):
    """What was refused (the `kind` label of `realtime_rate_limited_total`)."""

    HANDSHAKE = "handshake"  # a WebSocket handshake from an address over its rate
    ACCESS_CODE = "access_code"  # an open by access code from an address over its rate
    LOGIN = "login"  # a login from an address over its rate
    CANDIDATE_MESSAGE = "candidate_message"  # a message dropped on a candidate socket
    DASHBOARD_MESSAGE = "dashboard_message"  # a message dropped on a dashboard socket


PER_SOCKET = frozenset({Kind.CANDIDATE_MESSAGE, Kind.DASHBOARD_MESSAGE})


class Refusals:
    def __init__(
        self,
        count: Callable[[Kind], None] | None = None,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self._interval = interval
        self._clock = clock
        self._unreported: dict[Kind, int] = {}
        self._reported_at: dict[Kind, float] = {}

    def record(self, kind: Kind, who: str, detail: str = "") -> None:
        if self._count is not None:
            self._count(kind)
        unreported = self._unreported.get(kind, 0) + 1
        now = self._clock()
        last = self._reported_at.get(kind)
        if last is not None and now - last < self._interval:
            self._unreported[kind] = unreported
            return
        self._reported_at[kind] = now
        self._unreported[kind] = 0
        hint = "" if kind in PER_SOCKET else "; behind a proxy, check REALTIME_TRUSTED_PROXIES"
        log.warning(
            "rate limit: %d %s refused since the last report (latest: %s%s)%s", unreported,
            kind.value, who or "unknown address", f", {detail}" if detail else "", hint,
        )
