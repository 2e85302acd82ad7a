"""REST for candidate session tokens: revoke a session's tokens and get a new one.

A session token (from `POST …/sessions`) opens its session without an access code. Once it
leaks, or a candidate lost it, staff move the session's token generation on: every token issued
before stops opening the session, and the answer carries the only token that does.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from realtime.api.routes import principal_of, visible_session
from realtime.auth.permissions import Permission
from realtime.runtime import runtime_of


async def reissue_token(request: Request) -> Response:
    """
    summary: Revoke every candidate token of a session and return a new one
    parameters:
      - {name: exam_id, in: path, required: true, schema: {type: string}}
      - {name: session_id, in: path, required: true, schema: {type: string}}
    responses:
      200: {description: "{session_id, token, generation, expires_after}"}
      403: {description: Missing sessions.create}
      404: {description: Unknown session, or outside the caller's groups}
    """
    principal = await principal_of(request, Permission.CREATE_SESSIONS)
    exam, session = await visible_session(request, principal)
    runtime = runtime_of(request)
    generation = await runtime.service.revoke_candidate_tokens(exam.id, session["id"],
                                                               principal.actor)
    ttl = runtime.settings.candidate_token_ttl
    expires = max(time.time(), exam.ends_at or 0.0) + ttl if ttl > 0 else None
    return JSONResponse({
        "session_id": session["id"],
        "token": runtime.auth.issue_candidate_token(exam.id, session["id"], generation),
        "generation": generation,
        "expires_after": expires,  # unless the session is running then (epoch seconds)
    })


routes = [
    Route("/api/v1/exams/{exam_id}/sessions/{session_id}/token", reissue_token,
          methods=["POST"]),
]
