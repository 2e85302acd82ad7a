"""Reports under `/api/v1`: an exam's history as JSON pages, and CSV exports (with a
print-friendly HTML view) of its sessions, history and irregularities.

Each export checks exactly what the JSON endpoint it mirrors checks (the same permission and
the same scope helper), streams its rows page by page from SQL, and fetches the first page
before answering, so a failing database is a 503 rather than a cut-off file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from realtime.api.history_query import next_filter, parse_history_filter, parse_range
from realtime.api.reports import (
    EVENT_COLUMNS,
    IRREGULARITY_COLUMNS,
    SESSION_COLUMNS,
    ActorNames,
    Table,
    csv_body,
    event_row,
    html_body,
    irregularity_row,
    session_row,
)
from realtime.api.routes import (
    history_answer,
    principal_of,
    public_event,
    visible_exam,
    visible_session,
    visible_sessions,
)
from realtime.auth.permissions import Permission
from realtime.db.history import MAX_PAGE, HistoryFilter
from realtime.errors import NotFound
from realtime.identity import scope
from realtime.runtime import runtime_of
from realtime.state.model import Event, Exam

Directory = dict[str, tuple[str, str, str]]  # session id -> (candidate id, name, group)
_NOBODY = ("", "", "")


def _format(request: Request) -> str:
    fmt = str(request.path_params["fmt"])
    if fmt not in ("csv", "html"):
        raise NotFound("reports are .csv or .html")
    return fmt


def _answer(request: Request, table: Table, filename: str, subtitle: str) -> Response:
    if _format(request) == "html":
        return StreamingResponse(
            html_body(table, subtitle), media_type="text/html; charset=utf-8"
        )
    return StreamingResponse(
        csv_body(table),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
    )


def _subtitle(exam_title: str, since: float | None, until: float | None) -> str:
    def at(t: float | None, none: str) -> str:
        return none if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")

    now = datetime.now(UTC).isoformat(timespec="seconds")
    return f"{exam_title} · from {at(since, 'the start')} to {at(until, 'now')} · made {now}"


async def _then(first: list[list[Any]], rest: AsyncIterator[list[list[Any]]]
                ) -> AsyncIterator[list[list[Any]]]:
    yield first
    async for page in rest:
        yield page


async def _event_table(
    request: Request,
    title: str,
    session_id: str | None,
    flt: HistoryFilter,
    directory: Directory,
    visible: Callable[[str], bool],
) -> Table:
    """All events matching `flt` (forward from its cursor), read in pages of MAX_PAGE."""
    runtime = runtime_of(request)
    exam_id = str(request.path_params["exam_id"])
    names = ActorNames(runtime.db)
    flt = dataclasses.replace(flt, before_seq=None, limit=MAX_PAGE)

    async def shape(events: list[Event]) -> list[list[Any]]:
        shown = [public_event(e.to_dict()) for e in events if visible(e.session_id)]
        await names.name_all(shown, lambda sid: directory.get(sid, _NOBODY)[1])
        return [event_row(e, directory.get(e["session_id"], _NOBODY)) for e in shown]

    events, more = await runtime.service.history_page(exam_id, session_id, flt)
    first = await shape(events)

    async def rest(flt: HistoryFilter, events: list[Event], more: bool
                   ) -> AsyncIterator[list[list[Any]]]:
        read: Callable[[str, HistoryFilter], Awaitable[tuple[list[Event], bool]]] = (
            runtime.db.exam_history_page if session_id is None
            else runtime.db.session_history_page
        )
        while more and events:
            flt = next_filter(flt, events[0].seq, events[-1].seq)
            events, more = await read(session_id or exam_id, flt)
            yield await shape(events)

    return Table(title, EVENT_COLUMNS, _then(first, rest(flt, events, more)))


async def export_sessions(request: Request) -> Response:
    """
    summary: An exam's sessions as CSV (.csv) or a print-friendly page (.html)
    parameters:
      - {shared: report_format}
      - {name: status, in: query, schema: {type: string}, description: "comma separated"}
      - {name: group, in: query, schema: {type: string}}
      - {name: search, in: query, schema: {type: string}}
    responses:
      200: {description: "One row per session in the caller's scope, natural order of names"}
    """
    principal = await principal_of(request, Permission.VIEW_SESSIONS)
    _format(request)
    exam = await runtime_of(request).service.get_exam(request.path_params["exam_id"])
    now = runtime_of(request).service.clock()
    rows = [session_row(s, now) for s in await visible_sessions(request, principal)]

    async def pages() -> AsyncIterator[list[list[Any]]]:
        for start in range(0, len(rows), MAX_PAGE):
            yield rows[start : start + MAX_PAGE]

    table = Table(f"Sessions of {exam.title}", SESSION_COLUMNS, pages())
    return _answer(request, table, f"{exam.id}-sessions", _subtitle(exam.title, None, None))


async def export_session_history(request: Request) -> Response:
    """
    summary: A session's history as CSV (.csv) or a print-friendly page (.html)
    parameters:
      - {shared: report_format}
      - {shared: history_export}
    responses:
      200: {description: "Every matching event, oldest first"}
      400: {description: A malformed filter}
    """
    principal = await principal_of(request, Permission.VIEW_HISTORY)
    _format(request)
    flt = parse_history_filter(request.query_params)
    exam, session = await visible_session(request, principal)
    directory = {session["id"]: (session["candidate_id"], session["candidate_name"],
                                 session["group"])}
    title = f"History of {session['candidate_name'] or session['id']}"
    table = await _event_table(request, title, session["id"], flt, directory, lambda _s: True)
    return _answer(request, table, f"{exam.id}-{session['id']}-history",
                   _subtitle(exam.title, flt.since, flt.until))


async def _exam_scope(
    request: Request, permission: Permission
) -> tuple[Exam, Directory, Callable[[str], bool]]:
    """The exam (404 outside the caller's scope, as its JSON endpoints answer), its sessions'
    directory, and which sessions the caller may see rows of."""
    principal = await principal_of(request, permission)
    exam = await visible_exam(request, principal)
    directory = await runtime_of(request).db.session_directory(exam.id)

    def visible(session_id: str) -> bool:
        return scope.sees_session(principal, exam.groups, directory.get(session_id, _NOBODY)[2])

    return exam, directory, visible


async def exam_history(request: Request) -> Response:
    """
    summary: A page of all history of an exam, oldest first, with a link to the next page
    parameters:
      - {shared: history_page}
    responses:
      200: {description: "{events: [Event], next: URL of the next page or null}"}
      400: {description: A malformed filter}
    """
    flt = parse_history_filter(request.query_params)
    exam, directory, visible = await _exam_scope(request, Permission.VIEW_HISTORY)
    return await history_answer(
        request, exam.id, None, flt, lambda sid: directory.get(sid, _NOBODY)[1], visible
    )


async def export_exam_history(request: Request) -> Response:
    """
    summary: All history of an exam as CSV (.csv) or a print-friendly page (.html)
    parameters:
      - {shared: report_format}
      - {shared: history_export}
    responses:
      200: {description: "Every matching event, oldest first"}
      400: {description: A malformed filter}
    """
    _format(request)
    flt = parse_history_filter(request.query_params)
    exam, directory, visible = await _exam_scope(request, Permission.VIEW_HISTORY)
    table = await _event_table(request, f"History of {exam.title}", None, flt, directory,
                               visible)
    return _answer(request, table, f"{exam.id}-history",
                   _subtitle(exam.title, flt.since, flt.until))


async def export_irregularities(request: Request) -> Response:
    """
    summary: An exam's irregularities as CSV (.csv) or a print-friendly page (.html)
    parameters:
      - {shared: report_format}
      - {shared: range}
    responses:
      200: {description: "Every irregularity reported in the range, oldest first"}
      400: {description: A malformed range}
    """
    _format(request)
    since, until = parse_range(request.query_params)
    exam, directory, visible = await _exam_scope(request, Permission.VIEW_HISTORY)
    runtime = runtime_of(request)
    names = ActorNames(runtime.db)
    await runtime.service.caught_up(exam.id)

    async def page(after: tuple[float, str] | None) -> list[dict[str, Any]]:
        rows = await runtime.db.irregularities(exam.id, since, until, after, MAX_PAGE)
        await names.name_all(rows, lambda sid: directory.get(sid, _NOBODY)[1])
        return rows

    def shaped(rows: list[dict[str, Any]]) -> list[list[Any]]:
        return [irregularity_row(r, directory.get(r["session_id"], _NOBODY))
                for r in rows if visible(r["session_id"])]

    first = await page(None)

    async def rest(rows: list[dict[str, Any]]) -> AsyncIterator[list[list[Any]]]:
        while len(rows) == MAX_PAGE:
            rows = await page((rows[-1]["at"], rows[-1]["id"]))
            yield shaped(rows)

    table = Table(f"Irregularities of {exam.title}", IRREGULARITY_COLUMNS,
                  _then(shaped(first), rest(first)))
    return _answer(request, table, f"{exam.id}-irregularities",
                   _subtitle(exam.title, since, until))


routes = [
    Route("/api/v1/exams/{exam_id}/history", exam_history, methods=["GET"]),
    Route("/api/v1/exams/{exam_id}/history.{fmt}", export_exam_history, methods=["GET"]),
    Route("/api/v1/exams/{exam_id}/sessions.{fmt}", export_sessions, methods=["GET"]),
    Route("/api/v1/exams/{exam_id}/irregularities.{fmt}", export_irregularities,
          methods=["GET"]),
    Route(
        "/api/v1/exams/{exam_id}/sessions/{session_id}/history.{fmt}",
        export_session_history,
        methods=["GET"],
    ),
]
