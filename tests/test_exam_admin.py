"""The pure parts of exam management: an exam's derived status, the list's filters, and reading
a roster CSV into rows numbered by their line in the file."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from realtime.api.exam_query import ExamStatus, parse_exam_filter, status_of
from realtime.api.roster import mark_repeats, parse_roster
from realtime.db.exam_records import ExamRecord
from realtime.errors import BadRequest
from realtime.state.model import Exam

NOW = 1_800_000_000.0


def record(starts: float | None = None, ends: float | None = None,
           archived: float | None = None, title: str = "Chemistry") -> ExamRecord:
    return ExamRecord(Exam(id="e1", title=title, starts_at=starts, ends_at=ends), NOW - 10,
                      archived)


@pytest.mark.parametrize(("starts", "ends", "archived", "expected"), [
    (None, None, None, ExamStatus.RUNNING),
    (NOW + 1, None, None, ExamStatus.SCHEDULED),
    (NOW, NOW + 1, None, ExamStatus.RUNNING),  # from starts_at on
    (None, NOW, None, ExamStatus.ENDED),  # from ends_at on
    (NOW - 60, NOW - 1, NOW - 1, ExamStatus.ARCHIVED),
    (NOW + 60, None, NOW - 1, ExamStatus.ARCHIVED),
])
def test_status_follows_the_window_unless_archived(
    starts: float | None, ends: float | None, archived: float | None, expected: ExamStatus
) -> None:
    """scheduled before the window, ended from its end, archived whatever the window says."""
    assert status_of(record(starts, ends, archived), NOW) is expected


def test_filters_hide_archived_and_match_status_dates_and_text() -> None:
    """Archived exams only when asked for; a window overlapping [from, to); text in title or id."""
    default = parse_exam_filter(QueryParams(""))
    assert default.matches(record(), NOW)
    assert not default.matches(record(archived=NOW), NOW)
    assert parse_exam_filter(QueryParams("archived=true")).matches(record(archived=NOW), NOW)
    only = parse_exam_filter(QueryParams("status=archived"))
    assert only.matches(record(archived=NOW), NOW) and not only.matches(record(), NOW)
    two = parse_exam_filter(QueryParams("status=scheduled&status=ended"))
    assert two.matches(record(starts=NOW + 5), NOW) and not two.matches(record(), NOW)
    window = parse_exam_filter(QueryParams("from=2027-01-10&to=2027-01-11"))
    day = 1_799_539_200.0  # 2027-01-10T00:00:00Z
    assert window.matches(record(day + 3600, day + 7200), NOW)
    assert not window.matches(record(day - 7200, day), NOW)  # ended as the range began
    assert not window.matches(record(day + 86400, None), NOW)  # starts as the range ends
    assert window.matches(record(None, None), NOW)  # no window: always open
    text = parse_exam_filter(QueryParams("search=CHEM"))
    assert text.matches(record(), NOW) and not text.matches(record(title="Physics"), NOW)


@pytest.mark.parametrize("query", ["status=done", "archived=yes", "from=soon",
                                   "from=2027-01-02&to=2027-01-01", f"search={'x' * 201}"])
def test_malformed_filters_are_refused(query: str) -> None:
    with pytest.raises(BadRequest):
        parse_exam_filter(QueryParams(query))


def test_rows_are_numbered_by_the_line_they_start_on() -> None:
    """A quoted field over two lines and blank lines keep later rows on their true line; a
    piece of a file numbers from `first_line`."""
    raw = ('\ufeffCandidate_ID, Name ,GROUP\r\n'
           'a,"Ada\nLovelace",A\r\n'
           '\r\n'
           'b,"Grace ""Amazing"" Hopper",B\r\n').encode()
    rows = parse_roster(raw)
    assert [(r.line, r.candidate) for r in rows] == [
        (2, {"candidate_id": "a", "name": "Ada\nLovelace", "group": "A"}),
        (5, {"candidate_id": "b", "name": 'Grace "Amazing" Hopper', "group": "B"}),
    ]
    assert [r.line for r in parse_roster(raw, first_line=502)] == [502, 505]


def test_row_problems_are_reported_on_their_row() -> None:
    """Each bad row says why; repeats are errors from their second line on; a given access
    code is checked and normalised as in a bulk creation."""
    raw = ("candidate_id,candidate_name,access_code\n"
           "a,Ada,abcd-efgh-2345\n"
           "b,Bob\n"
           ",Nobody,\n"
           "c,Cyd,AAAAAAAA\n"
           "a,Ada again,\n"
           "d,Dee,ABCD-EFGH-2345\n"
           f"e,{'x' * 201},\n").encode()
    rows = parse_roster(raw)
    mark_repeats(rows)
    problems = {r.line: r.problem for r in rows}
    assert rows[0].candidate["access_code"] == "ABCD-EFGH-2345" and problems[2] is None
    assert "2 fields" in str(problems[3])
    assert problems[4] == "candidate_id is empty"
    assert "too easy to guess" in str(problems[5])
    assert problems[6] == "candidate 'a' is also on line 2"
    assert problems[7] == "access code 'ABCD-EFGH-2345' is also on line 2"
    assert "'name'" in str(problems[8])


@pytest.mark.parametrize(("raw", "words"), [
    (b"", "empty"),
    (b"candidate_id\r\n", "no rows"),
    (b"candidate_id\r\n\r\n \r\n", "no rows"),
    (b"id,name\r\na,b\r\n", "unknown column"),
    (b"name,group\r\na,b\r\n", "candidate_id"),
    (b"candidate_id,name,candidate_name\r\na,b,c\r\n", "twice"),
    (b"candidate_id\r\n\xe9\r\n", "UTF-8"),
    (b"candidate_id\r\na\x00\r\n", "NUL"),
])
def test_a_file_that_is_not_a_roster_is_refused(raw: bytes, words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        parse_roster(raw)
