"""Roster CSV: reading the file into rows, each either a candidate or the reason it is not.
Pure: no I/O; `roster_routes` checks the rows against SQL and creates the sessions.

The file is UTF-8 (a BOM is allowed), comma separated, with a header naming the columns:
`candidate_id` (required), `candidate_name` (or `name`), `group`, `access_code` (optional:
a generated code when empty). A problem with the file as a whole (not UTF-8, no or unknown
columns, too many rows) is a 400; a problem with one row is reported on that row and the
others are imported.

Rows are numbered by the line of the file they start on (the header is line 1), as a
spreadsheet or an editor shows them. A browser importing a big file in pieces sends each
piece with the header and `first_line`, the line its first row has in the whole file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field

from realtime.api.routes import candidate_problem
from realtime.errors import BadRequest
from realtime.sessions import custom_access_code

MAX_ROWS = 10_000
REQUIRED = "candidate_id"
# Column name in the file -> the candidate field of a bulk creation.
COLUMNS = {"candidate_id": "candidate_id", "candidate_name": "name", "name": "name",
           "group": "group", "access_code": "access_code"}


@dataclass(slots=True)
class RosterRow:
    """One row of the file: its line, the candidate it names, or what is wrong with it."""

    line: int
    candidate: dict[str, str] = field(default_factory=dict)
    problem: str | None = None

    @property
    def candidate_id(self) -> str:
        return self.candidate.get("candidate_id", "")


def _text(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the roster must be UTF-8 text (byte {exc.start} is not): save the sheet as "
            "'CSV UTF-8'"
        ) from None
    if "\x00" in text:
        raise BadRequest("the roster contains a NUL character: it is not a CSV text file")
    return text


def _header(cells: list[str]) -> list[str]:
    names = [c.strip().lower() for c in cells]
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise BadRequest(
            f"unknown column(s) {unknown}: the roster's columns are candidate_id (required), "
            "candidate_name, group, access_code"
        )
    fields = [COLUMNS[n] for n in names]
    if len(set(fields)) != len(fields):
        raise BadRequest(f"a column is named twice in the header: {names}")
    if REQUIRED not in fields:
        raise BadRequest(f"the header has no '{REQUIRED}' column (it has {names})")
    return fields


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, its cells); csv.Error becomes a 400 naming the line."""
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise BadRequest(f"line {reader.line_num}: {exc}") from None
        yield start, cells
        start = reader.line_num + 1


def parse_roster(raw: bytes, first_line: int = 2) -> list[RosterRow]:
    """The file's rows (blank lines skipped), numbered from `first_line` for the first line
    after the header. 400 for a problem with the whole file."""
    records = _records(_text(raw))
    try:
        _, header_cells = next(records)
    except StopIteration:
        raise BadRequest("the roster is empty: it needs a header line and rows") from None
    fields = _header(header_cells)
    shift = first_line - 2
    rows: list[RosterRow] = []
    for start, cells in records:
        if not any(c.strip() for c in cells):
            continue
        if len(rows) >= MAX_ROWS:
            raise BadRequest(f"at most {MAX_ROWS} rows per request: import the file in parts")
        row = RosterRow(line=start + shift)
        if len(cells) != len(fields):
            row.problem = f"has {len(cells)} fields where the header has {len(fields)}"
            row.candidate = {"candidate_id": cells[0].strip()} if cells else {}
        else:
            row.candidate = {f: c.strip() for f, c in zip(fields, cells, strict=True)}
            row.problem = _row_problem(row.candidate)
        rows.append(row)
    if not rows:
        raise BadRequest("the roster has a header but no rows")
    return rows


def _row_problem(candidate: dict[str, str]) -> str | None:
    """The checks of a bulk session creation, on one row; normalises the access code."""
    if not candidate.get("candidate_id"):
        return "candidate_id is empty"
    for key in ("name", "group", "access_code"):
        if not candidate.get(key):
            candidate.pop(key, None)
    problem = candidate_problem(candidate)
    if problem:
        return problem
    if "access_code" in candidate:
        try:
            candidate["access_code"] = custom_access_code(candidate["access_code"])
        except BadRequest as exc:
            return exc.message
    return None


def mark_repeats(rows: list[RosterRow]) -> None:
    """A candidate id or an access code on two rows: the later rows are errors."""
    ids: dict[str, int] = {}
    codes: dict[str, int] = {}
    for row in rows:
        if row.problem:
            continue
        first = ids.setdefault(row.candidate_id, row.line)
        if first != row.line:
            row.problem = f"candidate {row.candidate_id!r} is also on line {first}"
            continue
        code = row.candidate.get("access_code")
        if code:
            first = codes.setdefault(code, row.line)
            if first != row.line:
                row.problem = f"access code {code!r} is also on line {first}"
