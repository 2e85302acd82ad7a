"""Exam management under `/api/v1/exams`: the list with status, counts and filters, archiving
(`DELETE`, a soft delete) and restoring.

Archiving is bookkeeping: the exam, its sessions and their history stay; the exam only leaves
the default list. It changes nothing on the live path, so a candidate of an archived exam can
still open (no one is locked out by a tidy-up). While candidates are connected the archive is
refused (409) unless `?force=true`: archiving a running hall is almost always a wrong click.
Both directions are audited.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from realtime.api.exam_query import parse_exam_filter, status_of
from realtime.api.routes import managed_exam, principal_of
from realtime.auth.permissions import Permission
from realtime.auth.principal import Principal
from realtime.db.exam_records import (
    ExamRecord,
    GroupCounts,
    exam_record,
    exam_records,
    session_counts,
    set_archived,
)
from realtime.errors import BadRequest, Conflict
from realtime.identity import scope
from realtime.identity.web import ctx_of, identity_of
from realtime.jsonsafe import JSONResponse
from realtime.runtime import runtime_of


def exam_item(
    record: ExamRecord, counts: GroupCounts, principal: Principal, now: float
) -> dict[str, Any]:
    """An exam as the list shows it: its fields, status, dates, the number of its sessions
    (those the principal sees) per status, and whether the principal manages it (may change
    it, import a roster, export its codes) or only sees it through its candidates."""
    by_status: dict[str, int] = {}
    for (group, status), n in counts.items():
        if scope.sees_session(principal, record.exam.groups, group):
            by_status[status] = by_status.get(status, 0) + n
    return {
        **record.exam.to_dict(),
        "status": status_of(record, now).value,
        "created_at": record.created_at,
        "archived_at": record.archived_at,
        "archived_by": record.archived_by,
        "sessions": sum(by_status.values()),
        "counts": by_status,
        "manages": scope.manages(principal, record.exam.groups),
    }


async def list_exams(request: Request) -> Response:
    """
    summary: The exams in the caller's scope, with status, dates and session counts
    description: >
      Archived exams are left out unless `archived=true` or `status` names `archived`.
      `status` is derived: scheduled (before starts_at), running, ended (from ends_at on),
      archived. Counts are of the sessions the caller sees, as SQL last recorded them.
    parameters:
      - {name: status, in: query, schema: {type: string},
         description: "comma separated: scheduled, running, ended, archived"}
      - {name: from, in: query, schema: {type: string},
         description: "ISO-8601: exams whose window reaches past this time"}
      - {name: to, in: query, schema: {type: string},
         description: "ISO-8601: exams whose window starts before this time"}
      - {name: search, in: query, schema: {type: string}, description: "in the title or id"}
      - {name: archived, in: query, schema: {type: boolean}, description: "include archived"}
    responses:
      200: {description: "{exams: [Exam with status, created_at, archived_at, sessions, counts,
        manages]}"}
      400: {description: A malformed filter}
    """
    principal = await principal_of(request, Permission.VIEW_SESSIONS)
    flt = parse_exam_filter(request.query_params)
    db = runtime_of(request).db
    now = time.time()
    with_candidates: set[str] = set()
    if not principal.unrestricted:  # exams where some of the principal's candidates sit
        with_candidates = await db.exam_ids_for_groups(principal.groups)
    shown = [
        r for r in await exam_records(db)
        if scope.sees_exam(principal, r.exam.groups, r.exam.id in with_candidates)
        and flt.matches(r, now)
    ]
    counts = await session_counts(db, [r.exam.id for r in shown])
    return JSONResponse(
        {"exams": [exam_item(r, counts.get(r.exam.id, {}), principal, now) for r in shown]}
    )


async def _managed_record(request: Request, principal: Principal) -> ExamRecord:
    exam = await managed_exam(request, principal)
    record = await exam_record(runtime_of(request).db, exam.id)
    if record is None:  # in the state store but not (or no longer) in SQL
        raise scope.exam_not_found(exam.id)
    return record


async def _answer(request: Request, principal: Principal, exam_id: str) -> Response:
    db = runtime_of(request).db
    record = await exam_record(db, exam_id)
    if record is None:
        raise scope.exam_not_found(exam_id)
    counts = (await session_counts(db, [exam_id])).get(exam_id, {})
    return JSONResponse(exam_item(record, counts, principal, time.time()))


def _force(request: Request) -> bool:
    raw = request.query_params.get("force", "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise BadRequest("'force' must be true or false")
    return raw in ("true", "1")


async def archive_exam(request: Request) -> Response:
    """
    summary: Archive an exam (a soft delete; its sessions and history are kept)
    description: >
      Refused with 409 while candidates are connected, unless `force=true`. Archiving an
      archived exam changes nothing. Audited as `exam_archived`.
    parameters:
      - {name: force, in: query, schema: {type: boolean},
         description: "archive even with candidates connected"}
    responses:
      200: {description: The archived exam}
      403: {description: "Missing exams.manage, or an exam without the caller's groups"}
      404: {description: Unknown exam (or out of scope)}
      409: {description: Candidates are connected (and force is not set)}
    """
    principal = await principal_of(request, Permission.MANAGE_EXAMS)
    force = _force(request)
    runtime = runtime_of(request)
    record = await _managed_record(request, principal)
    exam_id = record.exam.id
    if record.archived_at is None:
        sessions, _ = await runtime.store.snapshot(exam_id, ("id", "connected"))
        connected = sum(1 for s in sessions if s.get("connected"))
        if connected and not force:
            raise Conflict(
                f"{connected} candidate(s) are connected to this exam: archive it once they "
                "are done, or repeat with ?force=true"
            )
        await set_archived(runtime.db, exam_id, time.time(), principal.actor)
        await identity_of(request).audit.record(
            ctx_of(principal), "exam_archived", f"exam:{exam_id}",
            connected=connected, forced=force,
        )
    return await _answer(request, principal, exam_id)


async def restore_exam(request: Request) -> Response:
    """
    summary: Bring an archived exam back into the list
    description: Restoring an exam that is not archived changes nothing. Audited as
      `exam_restored`.
    responses:
      200: {description: The exam}
      403: {description: "Missing exams.manage, or an exam without the caller's groups"}
      404: {description: Unknown exam (or out of scope)}
    """
    principal = await principal_of(request, Permission.MANAGE_EXAMS)
    runtime = runtime_of(request)
    record = await _managed_record(request, principal)
    if record.archived_at is not None:
        await set_archived(runtime.db, record.exam.id, None, None)
        await identity_of(request).audit.record(
            ctx_of(principal), "exam_restored", f"exam:{record.exam.id}",
        )
    return await _answer(request, principal, record.exam.id)


routes = [
    Route("/api/v1/exams", list_exams, methods=["GET"]),
    Route("/api/v1/exams/{exam_id}", archive_exam, methods=["DELETE"]),
    Route("/api/v1/exams/{exam_id}/restore", restore_exam, methods=["POST"]),
]
