"""Which history rows a read wants: a time range, a page by sequence number, hidden kinds.

Pure: builds SQL statements, runs none. Pages are keyed by `seq` (never by offset), so a page
is one index range scan however far back it is, and rows written meanwhile never shift it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select

from realtime.db.models import EventRow, IrregularityRow

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """`since` inclusive, `until` exclusive (epoch seconds). Forward pages (the default) start
    after `after_seq`; with `before_seq` the page is the `limit` rows just before it (still
    returned oldest first), for reading back from the latest."""

    since: float | None = None
    until: float | None = None
    after_seq: int = 0
    before_seq: int | None = None
    limit: int = MAX_PAGE
    exclude: frozenset[str] = frozenset()

    @property
    def backward(self) -> bool:
        return self.before_seq is not None


def events_page(where: Any, flt: HistoryFilter) -> Select[EventRow]:
    """`limit + 1` events matching `where` and `flt` (one more tells whether a next page exists),
    in the direction of the page: ascending seq forward, descending backward."""
    stmt = select(EventRow).where(where)
    if flt.since is not None:
        stmt = stmt.where(EventRow.at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(EventRow.at < flt.until)
    if flt.exclude:
        stmt = stmt.where(EventRow.kind.not_in(sorted(flt.exclude)))
    if flt.backward:
        stmt = stmt.where(EventRow.seq < flt.before_seq).order_by(EventRow.seq.desc())
    else:
        stmt = stmt.where(EventRow.seq > flt.after_seq).order_by(EventRow.seq)
    return stmt.limit(flt.limit + 1)


def irregularities_page(
    exam_id: str,
    since: float | None,
    until: float | None,
    after: tuple[float, str] | None,
    limit: int | None,
) -> Select[IrregularityRow]:
    """An exam's irregularities in time order, the page after the (at, id) key `after`."""
    stmt = select(IrregularityRow).where(IrregularityRow.exam_id == exam_id)
    if since is not None:
        stmt = stmt.where(IrregularityRow.at >= since)
    if until is not None:
        stmt = stmt.where(IrregularityRow.at < until)
    if after is not None:
        at, row_id = after
        stmt = stmt.where(
            (IrregularityRow.at > at) | ((IrregularityRow.at == at) & (IrregularityRow.id > row_id))
        )
    stmt = stmt.order_by(IrregularityRow.at, IrregularityRow.id)
    return stmt if limit is None else stmt.limit(limit)
