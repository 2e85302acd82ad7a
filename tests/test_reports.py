"""Pure parts of reports: natural order, spreadsheet-safe cells, history query parsing."""

from __future__ import annotations

import csv
import io

import pytest
from starlette.datastructures import URL, QueryParams

from realtime.api.history_query import next_link, parse_history_filter, parse_time
from realtime.api.reports import natural_key
from realtime.errors import BadRequest
from realtime.identity.csvutil import csv_lines, safe_cell


def test_natural_order_of_names() -> None:
    """Digit runs compare as numbers and letters without case: 2 before 10."""
    names = ["Candidate 10", "candidate 2", "Candidate 1", "B", "a", "Candidate 2b"]
    assert sorted(names, key=natural_key) == [
        "a", "B", "Candidate 1", "candidate 2", "Candidate 2b", "Candidate 10"]


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@A1", "\tx", "\rx"])
def test_formula_cells_get_a_quote(text: str) -> None:
    """A cell a spreadsheet would evaluate starts with a quote; others are unchanged."""
    assert safe_cell(text) == "'" + text
    assert next(csv.reader(io.StringIO(csv_lines([[text, "plain", None, 3]])))) == [
        "'" + text, "plain", "", "3"]
    assert safe_cell("plain") == "plain" and safe_cell(None) == ""


def test_iso_times() -> None:
    """Dates, times with Z or an offset (even one whose '+' became a space) and naive times as
    UTC; anything else is a 400 naming the parameter."""
    assert parse_time("1970-01-02", "from") == 86400
    assert parse_time("1970-01-01T01:00:00Z", "from") == 3600
    assert parse_time("1970-01-01T01:00:00+01:00", "from") == 0
    assert parse_time("1970-01-01T01:00:00 01:00", "from") == 0
    assert parse_time("1970-01-01 00:00:01", "from") == 1
    with pytest.raises(BadRequest, match="'to' must be an ISO-8601"):
        parse_time("tomorrow", "to")


def test_next_link_moves_only_the_cursor() -> None:
    """The next page keeps every filter of the request and moves after_seq (or before_seq)."""
    query = QueryParams("from=2026-01-01&exclude=progress&after_seq=5&limit=10")
    flt = parse_history_filter(query)
    assert flt.after_seq == 5 and flt.limit == 10 and flt.exclude == {"progress"}
    url = URL("/api/v1/exams/e/history?from=2026-01-01&exclude=progress&after_seq=5&limit=10")
    assert next_link(url, flt, 6, 15) == (
        "/api/v1/exams/e/history?from=2026-01-01&exclude=progress&limit=10&after_seq=15")
    back = parse_history_filter(QueryParams("before_seq=50"))
    assert next_link(URL("/h?before_seq=50"), back, 40, 49) == "/h?before_seq=40"
