"""CSV exports that spreadsheets open safely (no formula injection)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any


def iso(at: float | None) -> str:
    """An epoch time as ISO 8601 UTC with seconds, '' for none."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def safe_cell(value: Any) -> str:
    """The value as text; one that a spreadsheet would run as a formula gets a leading '."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    return csv_lines([header]) + csv_lines(rows)


def csv_lines(rows: Iterable[Sequence[Any]]) -> str:
    """Rows as CSV text (CRLF line ends, every cell through `safe_cell`): a chunk of a
    streamed export."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
    return out.getvalue()
