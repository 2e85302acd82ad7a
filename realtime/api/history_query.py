"""History query parameters: `from`, `to`, `after_seq`, `before_seq`, `limit`, `exclude`.

Parsing is strict: a malformed value is a 400 with a message that names the parameter, never
a silently ignored filter (which is how the old endpoint lost `from`/`to`).
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime

from starlette.datastructures import URL, QueryParams

from realtime.db.history import MAX_PAGE, HistoryFilter
from realtime.errors import BadRequest
from realtime.state.model import Action, EventKind

# "…T10:00:00 01:00": a '+' of the offset that arrived unencoded in a query string.
_SPACED_OFFSET = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$")
# Commands are recorded under their action's name.
EVENT_KINDS = frozenset(k.value for k in EventKind) | frozenset(a.value for a in Action)
# The SQL column of `seq` is a 32-bit integer: a larger bound would be a database error.
MAX_SEQ = 2**31 - 1


def parse_time(text: str, name: str) -> float:
    """An ISO-8601 date or date-time as epoch seconds; without an offset it is UTC."""
    value = _SPACED_OFFSET.sub(r"\1+\2", text.strip())
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"'{name}' must be an ISO-8601 date or time such as 2026-06-01 or "
            f"2026-06-01T09:30:00Z, not {text[:40]!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _int(query: QueryParams, name: str, low: int, high: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}")
    return value


def parse_range(query: QueryParams) -> tuple[float | None, float | None]:
    """`from` (inclusive) and `to` (exclusive); 400 when malformed or `to` is not after `from`."""
    since = parse_time(query["from"], "from") if query.get("from") else None
    until = parse_time(query["to"], "to") if query.get("to") else None
    if since is not None and until is not None and until <= since:
        raise BadRequest("'to' must be after 'from'")
    return since, until


def parse_history_filter(query: QueryParams, limit: int = MAX_PAGE) -> HistoryFilter:
    """The filter a history request asks for (`limit` is the page size when not given)."""
    since, until = parse_range(query)
    after_seq = _int(query, "after_seq", 0, MAX_SEQ)
    before_seq = _int(query, "before_seq", 1, MAX_SEQ)
    if after_seq is not None and before_seq is not None:
        raise BadRequest("give 'after_seq' or 'before_seq', not both")
    exclude = frozenset(k for part in query.getlist("exclude") for k in part.split(",") if k)
    unknown = sorted(exclude - EVENT_KINDS)
    if unknown:
        raise BadRequest(f"unknown event kinds in 'exclude': {unknown}")
    return HistoryFilter(
        since=since,
        until=until,
        after_seq=after_seq or 0,
        before_seq=before_seq,
        limit=_int(query, "limit", 1, MAX_PAGE) or limit,
        exclude=exclude,
    )


def next_filter(flt: HistoryFilter, first_seq: int, last_seq: int) -> HistoryFilter:
    """The filter of the page after one that ran from `first_seq` to `last_seq`."""
    if flt.backward:
        return dataclasses.replace(flt, before_seq=first_seq)
    return dataclasses.replace(flt, after_seq=last_seq)


def next_link(url: URL, flt: HistoryFilter, first_seq: int, last_seq: int) -> str:
    """The path and query of the next page: the request's own, with the cursor moved on."""
    params = [
        (k, v) for k, v in QueryParams(url.query).multi_items()
        if k not in ("after_seq", "before_seq")
    ]
    params.append(("before_seq", str(first_seq)) if flt.backward else ("after_seq", str(last_seq)))
    query = str(QueryParams(params))
    return f"{url.path}?{query}"
