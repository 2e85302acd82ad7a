"""REST for identity and access under `/api/v1`: login, users, roles, audit.

Staff log in with `POST /api/v1/auth/login`. Browsers get an HttpOnly `realtime_token` cookie
plus a `realtime_csrf` cookie whose value must be echoed in an `X-CSRF-Token` header on every
cookie-authenticated unsafe request; API clients use the returned token as a bearer token.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from realtime.api.inputs import int_param
from realtime.api.mail_routes import invite, with_invitations
from realtime.api.routes import json_body
from realtime.auth.permissions import Permission
from realtime.auth.principal import Principal
from realtime.errors import BadRequest, Unauthorized
from realtime.identity.audit import Ctx, audit_csv
from realtime.identity.csvutil import iso
from realtime.identity.service import STATUSES, LoginBlocked, users_csv
from realtime.identity.web import (
    CSRF_COOKIE,
    TOKEN_COOKIE,
    authenticate_request,
    client_ip,
    csrf_for,
    ctx_of,
    identity_of,
    request_token,
)
from realtime.jsonsafe import JSONResponse
from realtime.limits.refusals import Kind
from realtime.limits.setup import limits_of
from realtime.proxies import proxies_of
from realtime.runtime import runtime_of

CSV_TYPE = "text/csv; charset=utf-8"
MAX_AUDIT_LIMIT = 100_000


async def _caller(request: Request, permission: Permission | None = None) -> Principal:
    runtime = runtime_of(request)
    return await authenticate_request(request, runtime.auth, runtime.settings, permission)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _time_param(request: Request, name: str) -> float | None:
    """Epoch seconds or an ISO 8601 date/time (UTC unless it says otherwise)."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
        if math.isfinite(value):
            return value
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"'{name}' must be epoch seconds or an ISO 8601 date") from None
    if parsed.tzinfo is None:
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _user_out(user: dict[str, Any]) -> dict[str, Any]:
    return {**user, "blocked": user.get("blocked_until") is not None}


async def login(request: Request) -> Response:
    """
    summary: Staff login; sets the login cookies and returns a bearer token
    requestBody:
      content:
        application/json:
          schema: {type: object, required: [login, password],
                   properties: {login: {type: string}, password: {type: string}}}
    responses:
      200: {description: "{token, token_type, expires_at, csrf_token, user}"}
      401: {description: Wrong login or password}
      403: {description: The account is invited or deactivated}
      429: {description: "login_blocked (too many failures for this login: error.blocked_until)
        or rate_limited (too many failed logins from this address: Retry-After)"}
    """
    identity = identity_of(request)
    addresses = limits_of(request).addresses
    # Every login, staff, candidate or guest, spends one of the address's attempts
    # (REALTIME_LOGIN_RATE/BURST) before the password is checked, so parallel guesses cannot
    # overtake the count; a right password gives it back.
    key = addresses.take(Kind.LOGIN, request)
    try:
        body = _object(await json_body(request))
        done = await identity.service.login(
            body.get("login"), body.get("password"), client_ip(request)  # type: ignore[arg-type]
        )
    except LoginBlocked as exc:
        retry = max(1, math.ceil(exc.blocked_until - identity.service.clock()))
        return JSONResponse(
            {"error": {"code": "login_blocked", "message": exc.message,
                       "blocked_until": exc.blocked_until,
                       "blocked_until_iso": iso(exc.blocked_until)}},
            status_code=429,
            headers={"Retry-After": str(retry)},
        )
    except (Unauthorized, BadRequest):
        raise  # a wrong password (or none): the attempt counts
    except BaseException:
        addresses.give_back(Kind.LOGIN, key)  # a right password (inactive account), SQL down
        raise
    addresses.give_back(Kind.LOGIN, key)
    csrf = csrf_for(identity.settings.secret_key, done.token)
    user = (await identity.service.get_user(done.user["id"]))
    response = JSONResponse(
        {"token": done.token, "token_type": "bearer", "expires_at": done.expires_at,
         "csrf_token": csrf, "user": _user_out(user)}
    )
    max_age = max(1, int(done.expires_at - identity.service.clock()))
    # Secure whenever the browser came over HTTPS (directly or via a trusted proxy's
    # X-Forwarded-Proto), not only when REALTIME_COOKIE_SECURE says so.
    secure = identity.settings.cookie_secure or proxies_of(request).https(request)
    response.set_cookie(TOKEN_COOKIE, done.token, max_age=max_age, path="/", secure=secure,
                        httponly=True, samesite="strict")
    response.set_cookie(CSRF_COOKIE, csrf, max_age=max_age, path="/", secure=secure,
                        httponly=False, samesite="strict")
    return response


async def logout(request: Request) -> Response:
    """
    summary: End this login (the token is revoked everywhere, open sockets close)
    responses:
      200: {description: "{logged_out: true}"}
    """
    await _caller(request)
    identity = identity_of(request)
    token, _ = request_token(request)
    await identity.service.logout(token, client_ip(request))
    identity.auth.forget(token)
    response = JSONResponse({"logged_out": True})
    response.delete_cookie(TOKEN_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


async def me(request: Request) -> Response:
    """
    summary: The caller, with permissions and groups
    responses:
      200: {description: The principal}
    """
    principal = await _caller(request)
    return JSONResponse(
        {"id": principal.id, "name": principal.name, "kind": principal.kind,
         "permissions": sorted(p.value for p in principal.permissions),
         "groups": sorted(principal.groups), "unrestricted": principal.unrestricted,
         "roles": [r for r in principal.extra.get("roles", "").split(",") if r]}
    )


async def activate(request: Request) -> Response:
    """
    summary: Set the password with a one-time activation token (invited → active)
    responses:
      200: {description: The user}
      404: {description: Unknown or used token}
      409: {description: Expired token}
    """
    body = _object(await json_body(request))
    token, password = body.get("token"), body.get("password")
    if not isinstance(token, str) or not token:
        raise BadRequest("'token' is required")
    user = await identity_of(request).service.activate(
        Ctx("anonymous", client_ip(request)), token, password  # type: ignore[arg-type]
    )
    return JSONResponse(user)


async def list_roles(request: Request) -> Response:
    """
    summary: The roles and their permissions
    responses:
      200: {description: "{roles: [...], permissions: [...]}"}
    """
    await _caller(request)
    roles = identity_of(request).service.roles
    return JSONResponse({"roles": [r.to_dict() for r in roles.roles.values()],
                         "permissions": [p.value for p in Permission]})


async def _filtered_users(request: Request) -> list[dict[str, Any]]:
    q = request.query_params
    status = q.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"'status' must be one of {list(STATUSES)}")
    return await identity_of(request).service.list_users(
        search=q.get("search") or None,
        role=q.get("role") or None,
        group=q.get("group") or None,
        status=status,
        activated=(_time_param(request, "activated_from"), _time_param(request, "activated_to")),
        deactivated=(_time_param(request, "deactivated_from"),
                     _time_param(request, "deactivated_to")),
    )


async def list_users(request: Request) -> Response:
    """
    summary: Users, searched by name and filtered by role, group, status and dates
    parameters:
      - {name: search, in: query, schema: {type: string}, description: part of name/email/login}
      - {name: role, in: query, schema: {type: string}}
      - {name: group, in: query, schema: {type: string}}
      - {name: status, in: query, schema: {type: string, enum: [invited, active, deactivated]}}
      - {name: activated_from, in: query, schema: {type: string}}
      - {name: activated_to, in: query, schema: {type: string}}
      - {name: deactivated_from, in: query, schema: {type: string}}
      - {name: deactivated_to, in: query, schema: {type: string}}
    responses:
      200: {description: "{users: [User]} with blocked_until, logged_in, last_login_at, ..."}
    """
    await _caller(request, Permission.MANAGE_USERS)
    users = await with_invitations(request, await _filtered_users(request))
    return JSONResponse({"users": [_user_out(u) for u in users]})


async def export_users(request: Request) -> Response:
    """
    summary: The user list as CSV (same filters as GET /users)
    responses:
      200: {description: "CSV: name, login, email, roles, last_login, last_sign_out, status"}
    """
    principal = await _caller(request, Permission.EXPORT_USERS)
    users = await _filtered_users(request)
    await identity_of(request).audit.record(ctx_of(principal), "users_exported", "",
                                            count=len(users))
    return Response(users_csv(users), media_type=CSV_TYPE,
                    headers={"Content-Disposition": 'attachment; filename="users.csv"'})


async def create_user(request: Request) -> Response:
    """
    summary: Invite a user (returns a one-time activation token)
    requestBody:
      content:
        application/json:
          schema: {type: object, required: [full_name, email, roles],
                   properties: {full_name: {type: string}, email: {type: string},
                                login: {type: string}, job_title: {type: string},
                                phone: {type: string},
                                roles: {type: array, items: {type: string}},
                                groups: {type: array, items: {type: string}}}}
    responses:
      201: {description: "{user, activation_token, activation_expires_at, invitation}: with
        SMTP set up the token is e-mailed (invitation = its delivery) instead of returned"}
      409: {description: The e-mail or login is taken}
    """
    principal = await _caller(request, Permission.MANAGE_USERS)
    service = identity_of(request).service
    user, token = await service.create_user(ctx_of(principal), _object(await json_body(request)))
    sent = await invite(request, user, token, service.clock() + service.policy.activation_ttl)
    return JSONResponse(
        {"user": _user_out({**user, "blocked_until": None, "logged_in": False,
                            "invitation": sent["invitation"]}), **sent},
        status_code=201,
    )


async def get_user(request: Request) -> Response:
    """
    summary: One user
    responses:
      200: {description: The user}
    """
    await _caller(request, Permission.MANAGE_USERS)
    user = await identity_of(request).service.get_user(request.path_params["user_id"])
    [user] = await with_invitations(request, [user])
    return JSONResponse(_user_out(user))


async def update_user(request: Request) -> Response:
    """
    summary: Change a user's name, e-mail, login, title, phone, roles or groups
    responses:
      200: {description: The user}
      409: {description: Would remove the last active admin, or the e-mail/login is taken}
    """
    principal = await _caller(request, Permission.MANAGE_USERS)
    identity = identity_of(request)
    user = await identity.service.update_user(
        ctx_of(principal), request.path_params["user_id"], _object(await json_body(request))
    )
    identity.auth.forget()
    return JSONResponse(_user_out(user))


async def deactivate_user(request: Request) -> Response:
    """
    summary: Deactivate a user (logs them out everywhere; history is kept)
    responses:
      200: {description: The user}
      409: {description: The last active admin}
    """
    principal = await _caller(request, Permission.MANAGE_USERS)
    identity = identity_of(request)
    user = await identity.service.deactivate(ctx_of(principal), request.path_params["user_id"])
    identity.auth.forget()
    return JSONResponse(_user_out({**user, "blocked_until": None, "logged_in": False}))


async def reactivate_user(request: Request) -> Response:
    """
    summary: Reactivate a deactivated user
    responses:
      200: {description: "{user, activation_token (if the user never set a password; e-mailed
        instead with SMTP set up: invitation)}"}
    """
    principal = await _caller(request, Permission.MANAGE_USERS)
    service = identity_of(request).service
    user, token = await service.reactivate(ctx_of(principal), request.path_params["user_id"])
    sent = await invite(request, user, token, service.clock() + service.policy.activation_ttl)
    return JSONResponse({"user": user, "activation_token": sent["activation_token"],
                         "invitation": sent["invitation"]})


async def unlock_user(request: Request) -> Response:
    """
    summary: Lift a login block at once
    responses:
      200: {description: The user}
    """
    principal = await _caller(request, Permission.MANAGE_USERS)
    service = identity_of(request).service
    user_id = request.path_params["user_id"]
    await service.unlock(ctx_of(principal), user_id)
    return JSONResponse(_user_out(await service.get_user(user_id)))


async def reissue_invitation(request: Request) -> Response:
    """
    summary: A new activation token for an invited user (e-mailed with SMTP set up)
    responses:
      200: {description: "{activation_token, activation_expires_at, invitation}"}
    """
    principal = await _caller(request, Permission.MANAGE_USERS)
    service = identity_of(request).service
    user_id = request.path_params["user_id"]
    token, expires = await service.reissue_activation(ctx_of(principal), user_id)
    return JSONResponse(await invite(request, await service.get_user(user_id), token, expires))


async def _audit_entries(request: Request) -> list[dict[str, Any]]:
    q = request.query_params
    limit = int_param(request, "limit", 1000, 1, MAX_AUDIT_LIMIT)
    return await identity_of(request).audit.query(
        user=q.get("user") or None,
        since=_time_param(request, "from"),
        until=_time_param(request, "to"),
        action=q.get("action") or None,
        limit=limit,
        newest_first=q.get("order") == "desc",
    )


async def list_audit(request: Request) -> Response:
    """
    summary: Audit entries, oldest first, by user (id) and date range
    parameters:
      - {name: user, in: query, schema: {type: string}, description: entries by or about a user}
      - {name: from, in: query, schema: {type: string}, description: epoch seconds or ISO 8601}
      - {name: to, in: query, schema: {type: string}}
      - {name: action, in: query, schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer}}
      - {name: order, in: query, schema: {type: string}, description: "desc: newest first"}
    responses:
      200: {description: "{entries: [{id, at, actor, ip, action, subject, details}]}"}
    """
    await _caller(request, Permission.VIEW_AUDIT)
    return JSONResponse({"entries": await _audit_entries(request)})


async def export_audit(request: Request) -> Response:
    """
    summary: Audit entries as CSV (same filters as GET /audit)
    responses:
      200: {description: "CSV: time, actor, ip, action, subject, details"}
    """
    await _caller(request, Permission.VIEW_AUDIT)
    return Response(audit_csv(await _audit_entries(request)), media_type=CSV_TYPE,
                    headers={"Content-Disposition": 'attachment; filename="audit.csv"'})


routes = [
    Route("/api/v1/auth/login", login, methods=["POST"]),
    Route("/api/v1/auth/logout", logout, methods=["POST"]),
    Route("/api/v1/auth/me", me, methods=["GET"]),
    Route("/api/v1/auth/activate", activate, methods=["POST"]),
    Route("/api/v1/roles", list_roles, methods=["GET"]),
    Route("/api/v1/users", list_users, methods=["GET"]),
    Route("/api/v1/users", create_user, methods=["POST"]),
    Route("/api/v1/users.csv", export_users, methods=["GET"]),
    Route("/api/v1/users/{user_id}", get_user, methods=["GET"]),
    Route("/api/v1/users/{user_id}", update_user, methods=["PATCH"]),
    Route("/api/v1/users/{user_id}/deactivate", deactivate_user, methods=["POST"]),
    Route("/api/v1/users/{user_id}/reactivate", reactivate_user, methods=["POST"]),
    Route("/api/v1/users/{user_id}/unlock", unlock_user, methods=["POST"]),
    Route("/api/v1/users/{user_id}/invitation", reissue_invitation, methods=["POST"]),
    Route("/api/v1/audit", list_audit, methods=["GET"]),
    Route("/api/v1/audit.csv", export_audit, methods=["GET"]),
]
