"""The limits of one process, built from the settings and kept on `app.state.limits`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from realtime.config import Settings
from realtime.errors import RateLimited
from realtime.guests.network import parse_networks
from realtime.limits.addresses import AddressLimits
from realtime.limits.bucket import Rate
from realtime.limits.messages import MessageLimiter
from realtime.limits.refusals import Kind, Refusals


@dataclass(slots=True)
class Limits:
    addresses: AddressLimits
    candidate_messages: Rate
    dashboard_messages: Rate
    refusals: Refusals

    def message_limiter(self, kind: Kind, conn: HTTPConnection) -> MessageLimiter | None:
        """A new socket's message limiter (None when that limit is off)."""
        candidate = kind is Kind.CANDIDATE_MESSAGE
        rate = self.candidate_messages if candidate else self.dashboard_messages
        if not rate.enabled:
            return None
        who = self.addresses.key_of(conn)
        refusals = self.refusals
        return MessageLimiter(rate, time.monotonic(), lambda: refusals.record(kind, who))


def build_limits(settings: Settings, count: Callable[[Kind], None] | None = None) -> Limits:
    """Raises ValueError for a limit without a burst or an invalid trusted-proxy CIDR."""
    refusals = Refusals(count)
    addresses = AddressLimits(
        {
            Kind.HANDSHAKE: Rate(settings.handshake_rate, settings.handshake_burst),
            Kind.ACCESS_CODE: Rate(settings.access_code_rate, settings.access_code_burst),
            Kind.LOGIN: Rate(settings.login_rate, settings.login_burst),
        },
        parse_networks(settings.trusted_proxies),
        refusals,
    )
    return Limits(
        addresses,
        Rate(settings.candidate_message_rate, settings.candidate_message_burst),
        Rate(settings.dashboard_message_rate, settings.dashboard_message_burst),
        refusals,
    )


def rate_limited_response(exc: RateLimited) -> JSONResponse:
    """429 with `Retry-After` (whole seconds) and the same in the JSON error."""
    retry = max(1, math.ceil(exc.retry_after))
    body = {"error": {"code": str(exc.code), "message": exc.message, "retry_after": retry}}
    return JSONResponse(body, status_code=exc.status, headers={"Retry-After": str(retry)})


def limits_of(conn: HTTPConnection) -> Limits:
    limits: Limits = conn.app.state.limits
    return limits
