"""One exception tree, and the documented error and close codes.

    RealtimeError
     ├── BadRequest        (400: malformed input, invalid parameters)
     ├── Unauthorized      (401: no or bad credentials)
     ├── Forbidden         (403: not allowed)
     ├── NotFound          (404)
     ├── Conflict          (409: duplicates, state that forbids the request)
     ├── PayloadTooLarge   (413: a request body over its limit)
     ├── RateLimited       (429: too many attempts from one address; retry after a while)
     └── Unavailable       (503: a backend does not answer; nothing was applied, retry)
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Codes in REST error bodies and WebSocket `error` messages."""

    MALFORMED = "malformed"  # not decodable with the connection's subprotocol
    INVALID = "invalid"  # decodable, but a field is missing or of the wrong type
    UNKNOWN_TYPE = "unknown_type"
    TOO_LARGE = "too_large"
    OUT_OF_ORDER = "out_of_order"  # e.g. progress before open, command before subscribe
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID_TRANSITION = "invalid_transition"
    UNKNOWN_ACTION = "unknown_action"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"  # a backend does not answer; nothing was applied; retry
    RATE_LIMITED = "rate_limited"  # too many messages or attempts; slow down, retry later


class CloseCode(enum.IntEnum):
    """WebSocket close codes. 4000–4099: the client may reconnect; 4100–4199: it must not."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013  # a backend does not answer (open not possible now); reconnect
    # reconnect allowed
    SLOW_CONSUMER = 4008  # the send queue overflowed; reconnect and resynchronise
    PING_TIMEOUT = 4009  # no answer to pings; reconnect
    RESYNC = 4010  # this process missed events; reconnect with last_seq to catch up
    RATE_LIMITED = 4029  # kept sending over the message rate limit; reconnect after a backoff
    # terminal
    SUPERSEDED = 4100  # another connection took the session over
    TERMINATED = 4101  # staff terminated the session
    COMPLETED = 4102  # the candidate submitted
    REFUSED = 4103  # the open was refused (see the `refused` message)
    UNAUTHORIZED = 4401  # bad or missing credentials
    FORBIDDEN = 4403  # origin or permission refused
    UNSUPPORTED_PROTOCOL = 4406  # no supported subprotocol offered

    @property
    def may_reconnect(self) -> bool:
        return self < 4100


class RealtimeError(Exception):
    status = 500
    code = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(RealtimeError):
    status = 400
    code = ErrorCode.INVALID


class Unauthorized(RealtimeError):
    status = 401
    code = ErrorCode.UNAUTHORIZED


class Forbidden(RealtimeError):
    status = 403
    code = ErrorCode.FORBIDDEN


class NotFound(RealtimeError):
    status = 404
    code = ErrorCode.NOT_FOUND


class Conflict(RealtimeError):
    status = 409
    code = ErrorCode.CONFLICT


class PayloadTooLarge(RealtimeError):
    status = 413
    code = ErrorCode.TOO_LARGE


class RateLimited(RealtimeError):
    """Too many attempts from one address; `retry_after` seconds until the next is allowed."""

    status = 429
    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(RealtimeError):
    """A backend (state store or SQL) did not answer and nothing was applied: retry later."""

    status = 503
    code = ErrorCode.UNAVAILABLE


def backend_down(exc: BaseException) -> bool:
    """Whether `exc` says Redis or SQL could not be reached (rather than a bug in our code).

    Every change is applied by one atomic state-store step after which nothing on the request
    path can fail, so such an error means nothing was applied: 503, retry.
    """
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ReadOnlyError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from realtime.state.cluster import slot_in_motion
    from realtime.state.store import CommitsFailed

    if slot_in_motion(exc):  # a Redis Cluster slot moving or failing over: nothing applied
        return True
    if isinstance(exc, CommitsFailed):  # (the failed exams' commits; the others went through)
        return all(backend_down(error) for error in exc.errors.values())
    if isinstance(exc, DBAPIError):
        text = str(exc).lower()
        return (
            exc.connection_invalidated
            or isinstance(exc.orig, ConnectionError | OSError)
            or "connect" in text
            or "locked" in text
        )
    if isinstance(exc, ReadOnlyError) or (
        isinstance(exc, ResponseError) and str(exc).startswith("NOREPLICAS")
    ):
        return True  # a replica, or a master without its replicas: it refused, applied nothing
    return isinstance(
        exc,
        RedisConnectionError | RedisTimeoutError | PoolTimeout | ConnectionError | OSError
        | TimeoutError,
    )
