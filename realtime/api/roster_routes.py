"""Rosters and access codes under `/api/v1/exams/{exam_id}`: importing a roster CSV (a
per-row report, partial success), and exporting the access codes as CSV or printable slips.

A roster import is idempotent per candidate: a `candidate_id` that already has a session in
the exam is reported as `exists` and left as it is (name, group and code are not changed), so
importing the same file twice, or again after fixing its bad rows, creates nothing twice.

Access codes are what a candidate needs to open a session, so their exports need
`sessions.create` on an exam the caller manages (whoever may issue codes) and are audited.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from realtime.api.reports import natural_key
from realtime.api.roster import RosterRow, mark_repeats, parse_roster
from realtime.api.routes import managed_exam, principal_of
from realtime.api.slips import slips_page
from realtime.auth.permissions import Permission
from realtime.db.errors import DuplicateError
from realtime.db.exam_records import registered_candidates, taken_access_codes
from realtime.errors import BadRequest, Conflict
from realtime.identity.csvutil import to_csv
from realtime.identity.web import ctx_of, identity_of
from realtime.jsonsafe import JSONResponse
from realtime.runtime import runtime_of
from realtime.sessions import SessionService

MAX_FIRST_LINE = 10_000_000
NO_STORE = {"Cache-Control": "no-store"}
ACCESS_CODE_COLUMNS = ("candidate_id", "candidate_name", "group", "access_code",
                       "candidate_url", "direct_link")


def _first_line(request: Request) -> int:
    raw = request.query_params.get("first_line", "2")
    if not raw.isdigit() or not 2 <= int(raw) <= MAX_FIRST_LINE:
        raise BadRequest(f"'first_line' must be an integer 2..{MAX_FIRST_LINE}")
    return int(raw)


async def _create(
    service: SessionService, exam_id: str, rows: list[RosterRow], actor: str
) -> dict[int, str]:
    """Create the rows' sessions in one batch; line -> session id. A clash that appeared
    meanwhile (a concurrent import) makes it go row by row, each clash on its own row."""
    if not rows:
        return {}
    try:
        made = await service.create_sessions(exam_id, [r.candidate for r in rows], actor)
        return {row.line: s["id"] for row, s in zip(rows, made, strict=True)}
    except DuplicateError:
        pass
    out: dict[int, str] = {}
    for row in rows:
        try:
            [session] = await service.create_sessions(exam_id, [row.candidate], actor)
            out[row.line] = session["id"]
        except Conflict as exc:
            row.problem = exc.message
    return out


async def import_roster(request: Request) -> Response:
    """
    summary: Import a roster (CSV) into an exam; answers a report row by row
    description: >
      The body is the CSV text (UTF-8; columns candidate_id, candidate_name, group,
      access_code; only candidate_id required). Valid rows become sessions, invalid ones are
      reported; a candidate_id already in the exam is `exists` and not changed. `first_line`
      numbers the rows of a file sent in parts.
    parameters:
      - {name: first_line, in: query, schema: {type: integer},
         description: "line of the first row after the header (2)"}
    requestBody:
      content:
        text/csv:
          schema: {type: string}
    responses:
      200: {description: "{rows: [{row, candidate_id, result: created|exists|error, message,
        session_id}], created, existing, errors}"}
      400: {description: "Not a usable CSV: not UTF-8, no rows, unknown or missing columns"}
      403: {description: "Missing sessions.create, or an exam without the caller's groups"}
      404: {description: Unknown exam (or out of scope)}
      413: {description: The body is over the bulk limit}
    """
    principal = await principal_of(request, Permission.CREATE_SESSIONS)
    first_line = _first_line(request)
    runtime = runtime_of(request)
    exam_id = (await managed_exam(request, principal)).id
    rows = parse_roster(await request.body(), first_line)
    mark_repeats(rows)
    fine = [r for r in rows if not r.problem]
    existing = await registered_candidates(runtime.db, exam_id, [r.candidate_id for r in fine])
    fresh = [r for r in fine if r.candidate_id not in existing]
    taken = await taken_access_codes(
        runtime.db, [r.candidate["access_code"] for r in fresh if "access_code" in r.candidate]
    )
    for row in fresh:
        if row.candidate.get("access_code") in taken:
            row.problem = "this access code is already used by another session"
    created = await _create(runtime.service, exam_id,
                            [r for r in fresh if not r.problem], principal.actor)
    report: list[dict[str, Any]] = []
    for row in rows:
        entry: dict[str, Any] = {"row": row.line, "candidate_id": row.candidate_id}
        if row.problem:
            entry.update(result="error", message=row.problem)
        elif row.line in created:
            entry.update(result="created", session_id=created[row.line])
        else:
            entry.update(result="exists", session_id=existing[row.candidate_id])
        report.append(entry)
    totals = {k: sum(1 for e in report if e["result"] == v)
              for k, v in (("created", "created"), ("existing", "exists"), ("errors", "error"))}
    await identity_of(request).audit.record(
        ctx_of(principal), "roster_imported", f"exam:{exam_id}", first_line=first_line,
        **totals,
    )
    return JSONResponse({"rows": report, **totals})


async def _code_holders(request: Request, fmt: str) -> tuple[str, list[dict[str, Any]], str]:
    """(exam title, its sessions with an access code in natural order of names, the candidate
    page's URL), after the permission check; the export is audited."""
    principal = await principal_of(request, Permission.CREATE_SESSIONS)
    runtime = runtime_of(request)
    exam = await managed_exam(request, principal)
    group = request.query_params.get("group", "")
    sessions = [
        s for s in await runtime.service.list_sessions(exam.id)
        if s.get("access_code") and (not group or s["group"] == group)
    ]
    sessions.sort(key=lambda s: (natural_key(s["candidate_name"]), s["id"]))
    await identity_of(request).audit.record(
        ctx_of(principal), "access_codes_exported", f"exam:{exam.id}", format=fmt,
        group=group, count=len(sessions),
    )
    return exam.title, sessions, f"{str(request.base_url).rstrip('/')}/candidate/"


async def access_codes_csv(request: Request) -> Response:
    """
    summary: The exam's access codes as CSV (audited)
    parameters:
      - {name: group, in: query, schema: {type: string}, description: "one candidate group"}
    responses:
      200: {description: "text/csv: candidate_id, candidate_name, group, access_code,
        candidate_url, direct_link"}
      403: {description: "Missing sessions.create, or an exam without the caller's groups"}
      404: {description: Unknown exam (or out of scope)}
    """
    exam_id = request.path_params["exam_id"]
    _, sessions, url = await _code_holders(request, "csv")
    body = to_csv(ACCESS_CODE_COLUMNS, (
        [s["candidate_id"], s["candidate_name"], s["group"], s["access_code"], url,
         f"{url}?code={s['access_code']}"]
        for s in sessions
    ))
    return Response(body, media_type="text/csv; charset=utf-8", headers={
        **NO_STORE, "Content-Disposition": f'attachment; filename="{exam_id}-access-codes.csv"'})


async def access_code_slips(request: Request) -> Response:
    """
    summary: The exam's access codes as printable slips, one per candidate (HTML, audited)
    parameters:
      - {name: group, in: query, schema: {type: string}, description: "one candidate group"}
    responses:
      200: {description: "text/html: a print view with cut lines"}
      403: {description: "Missing sessions.create, or an exam without the caller's groups"}
      404: {description: Unknown exam (or out of scope)}
    """
    title, sessions, url = await _code_holders(request, "slips")
    made = datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="seconds")
    subtitle = f"{len(sessions)} slip(s) · made {made} · cut along the dashed lines"
    return HTMLResponse(slips_page(title, sessions, url, subtitle), headers=NO_STORE)


routes = [
    Route("/api/v1/exams/{exam_id}/roster", import_roster, methods=["POST"]),
    Route("/api/v1/exams/{exam_id}/access-codes.csv", access_codes_csv, methods=["GET"]),
    Route("/api/v1/exams/{exam_id}/access-codes.html", access_code_slips, methods=["GET"]),
]
