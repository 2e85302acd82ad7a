"""REST for guest accounts under `/api/v1`.

Candidates (no login): `GET /guests/offer` and `POST /guests/reserve`, answered only from an
exam's lab networks while it is live and allows guests. Staff: the pool (`/guests`,
`/guests/status`, `PUT /guests/pool`, `/guests/{login}/release`) and, after the exam, the guest
sessions of an exam and their reassignment to the real candidates.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route

from realtime.api.routes import json_body, principal_of
from realtime.auth.permissions import Permission
from realtime.errors import BadRequest, NotFound
from realtime.guests.models import FREE, RESERVED, RETIRED
from realtime.guests.network import refusal
from realtime.guests.service import GuestDetails, GuestError, GuestService
from realtime.identity.web import ctx_of
from realtime.jsonsafe import JSONResponse
from realtime.proxies import proxies_of
from realtime.runtime import runtime_of

Endpoint = Callable[[Request], Awaitable[Response]]


def guests_of(conn: HTTPConnection) -> GuestService:
    guests: GuestService = conn.app.state.guests
    return guests


def _errors(endpoint: Endpoint) -> Endpoint:
    """Guest refusals carry their own code (`no_guest_free`, `guest_session_active`, ...)."""

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except GuestError as exc:
            body = {"error": {"code": exc.guest_code, "message": exc.message}}
            return JSONResponse(body, status_code=exc.status)

    return wrapped


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _exam_summary(exam: Any) -> dict[str, Any]:
    return {"id": exam.id, "title": exam.title, "starts_at": exam.starts_at,
            "ends_at": exam.ends_at}


@_errors
async def offer(request: Request) -> Response:
    """
    summary: The live exams that offer guest accounts to this computer (no login needed)
    responses:
      200: {description: "{client_ip, exams: [{id, title, starts_at, ends_at}], free}"}
    """
    runtime = runtime_of(request)
    guests = guests_of(request)
    address = proxies_of(request).client(request)
    now = guests.clock()
    exams = [
        _exam_summary(e) for e in await runtime.service.list_exams()
        if refusal(e, address, now) is None
    ]
    free = (await guests.status())["free"] if exams else 0
    return JSONResponse({"client_ip": str(address or ""), "exams": exams, "free": free})


@_errors
async def reserve(request: Request) -> Response:
    """
    summary: Reserve a guest account for a live exam (no login; lab networks only)
    requestBody:
      content:
        application/json:
          schema:
            type: object
            required: [exam_id, title, first_name, surname]
            properties:
              exam_id: {type: string}
              title: {type: string}
              first_name: {type: string}
              surname: {type: string}
              student_number: {type: string}
              email: {type: string}
    responses:
      200: {description: "{login, password, account, exam_id}: shown to the candidate once"}
      403: {description: "guest_not_offered: not live, no guests, or outside the lab networks"}
      409: {description: "no_guest_free: every guest account is taken"}
    """
    runtime = runtime_of(request)
    guests = guests_of(request)
    body = _object(await json_body(request))
    exam_id = body.get("exam_id")
    if not isinstance(exam_id, str) or not exam_id:
        raise BadRequest("'exam_id' is required")
    details = GuestDetails.parse(body)
    try:
        exam = await runtime.service.get_exam(exam_id)
    except NotFound:
        raise GuestError(403, "guest_not_offered", "no such exam offers guest accounts") from None
    address = proxies_of(request).client(request)
    reason = refusal(exam, address, guests.clock())
    if reason is not None:
        raise GuestError(403, "guest_not_offered", reason)
    reservation = await guests.reserve(exam, details, str(address or ""))
    return JSONResponse({
        **reservation.to_dict(),
        "message": "Write these down: you need them to log in. They are shown only once.",
    })


@_errors
async def list_accounts(request: Request) -> Response:
    """
    summary: The guest accounts and who holds them (staff, users.manage)
    parameters:
      - {name: status, in: query, schema: {type: string, enum: [free, reserved, retired]}}
    responses:
      200: {description: "{accounts: [...]}"}
    """
    await principal_of(request, Permission.MANAGE_USERS)
    status = request.query_params.get("status") or None
    if status not in (None, FREE, RESERVED, RETIRED):
        raise BadRequest("'status' must be free, reserved or retired")
    return JSONResponse({"accounts": await guests_of(request).list_accounts(status)})


@_errors
async def pool_status(request: Request) -> Response:
    """
    summary: How many guest accounts exist, are free and are reserved
    responses:
      200: {description: "{size, free, reserved, retired}"}
    """
    await principal_of(request, Permission.VIEW_SESSIONS)
    return JSONResponse(await guests_of(request).status())


@_errors
async def resize_pool(request: Request) -> Response:
    """
    summary: Create or resize the pool guest1..guestN (staff, users.manage)
    requestBody:
      content:
        application/json:
          schema:
            type: object
            properties:
              size: {type: integer, description: "default REALTIME_GUEST_POOL_SIZE"}
              shrink: {type: boolean, description: "retire free accounts above size (default true)"}
    responses:
      200: {description: "{size, free, reserved, retired, created, retired, revived}"}
      409: {description: "guest_reserved: a reserved account is above the new size"}
    """
    principal = await principal_of(request, Permission.MANAGE_USERS)
    body = _object(await json_body(request) or {})
    size = body.get("size", runtime_of(request).settings.guest_pool_size)
    shrink = body.get("shrink", True)
    if not isinstance(shrink, bool):
        raise BadRequest("'shrink' must be true or false")
    return JSONResponse(await guests_of(request).resize(ctx_of(principal), size, shrink))


@_errors
async def release(request: Request) -> Response:
    """
    summary: Release a reserved guest account that holds no session (staff, users.manage)
    responses:
      200: {description: The account, free again}
      409: {description: "not_reserved, or guest_session_pending: reassign its sessions first"}
    """
    principal = await principal_of(request, Permission.MANAGE_USERS)
    account = await guests_of(request).release(ctx_of(principal), request.path_params["login"])
    return JSONResponse(account)


@_errors
async def guest_sessions(request: Request) -> Response:
    """
    summary: The exam's sessions taken with guest accounts, with what the guests typed
    responses:
      200: {description: "{warning, sessions: [{session_id, status, account, guest: {...}}]}"}
    """
    principal = await principal_of(request, Permission.VIEW_SESSIONS)
    runtime = runtime_of(request)
    exam = await runtime.service.get_exam(request.path_params["exam_id"])
    sessions = await guests_of(request).guest_sessions(exam.id, principal)
    warning = (
        f"{len(sessions)} session(s) of this exam were taken with guest accounts: reassign each"
        " to the real candidate" if sessions else None
    )
    return JSONResponse({"exam_id": exam.id, "warning": warning, "sessions": sessions})


@_errors
async def reassign(request: Request) -> Response:
    """
    summary: Give a guest session to the real candidate (staff, guests.reassign)
    requestBody:
      content:
        application/json:
          schema:
            type: object
            required: [candidate_id]
            properties:
              candidate_id: {type: string}
              candidate_name: {type: string}
              group: {type: string}
    responses:
      200: {description: "What moved, and whether the guest account was released"}
      403: {description: "missing guests.reassign"}
      409: {description: "guest_session_active, candidate_has_session or not_a_guest_session"}
    """
    principal = await principal_of(request, Permission.REASSIGN_GUESTS)
    body = _object(await json_body(request))
    result = await guests_of(request).reassign(
        request.path_params["exam_id"], request.path_params["session_id"], principal,
        body.get("candidate_id"),  # type: ignore[arg-type]
        body.get("candidate_name"), body.get("group"),
    )
    return JSONResponse(result)


routes = [
    Route("/api/v1/guests/offer", offer, methods=["GET"]),
    Route("/api/v1/guests/reserve", reserve, methods=["POST"]),
    Route("/api/v1/guests", list_accounts, methods=["GET"]),
    Route("/api/v1/guests/status", pool_status, methods=["GET"]),
    Route("/api/v1/guests/pool", resize_pool, methods=["PUT"]),
    Route("/api/v1/guests/{login}/release", release, methods=["POST"]),
    Route("/api/v1/exams/{exam_id}/guest-sessions", guest_sessions, methods=["GET"]),
    Route(
        "/api/v1/exams/{exam_id}/guest-sessions/{session_id}/reassign", reassign,
        methods=["POST"],
    ),
]
