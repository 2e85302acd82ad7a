"""E-mailed invitations and password resets under `/api/v1` (`realtime.mail`).

With REALTIME_SMTP_HOST set, an invitation (a new user, a new activation link, a reactivated
user who never chose a password) is e-mailed instead of shown: the answer carries the
delivery (`pending`, then `sent` or `failed`, visible on the user) and no token. Without it,
the token is shown once, as before, and password reset by e-mail does not exist (404).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route

from realtime.api.routes import json_body
from realtime.errors import BadRequest, NotFound
from realtime.identity.audit import Ctx
from realtime.identity.password_reset import PasswordResets
from realtime.identity.service import INVITED
from realtime.identity.web import client_ip, identity_of
from realtime.jsonsafe import JSONResponse
from realtime.limits.refusals import Kind
from realtime.limits.setup import limits_of
from realtime.mail import messages
from realtime.mail.mailer import Mailer

INVITATION, PASSWORD_RESET = "invitation", "password_reset"
REQUESTED = ("If an active account has this e-mail address, a link to reset its password is "
             "on its way.")


@dataclass(slots=True)
class MailDesk:
    """The mail parts, kept on `app.state.mail`."""

    mailer: Mailer
    resets: PasswordResets
    public_url: str


def mail_of(conn: HTTPConnection) -> MailDesk:
    desk: MailDesk = conn.app.state.mail
    return desk


async def invite(
    conn: HTTPConnection, user: dict[str, Any], token: str | None, expires_at: float
) -> dict[str, Any]:
    """What an answer carrying a new activation token says: the token itself (shown once)
    without SMTP, else the delivery of the e-mail carrying it."""
    desk = mail_of(conn)
    if token is None or not desk.mailer.configured:
        return {"activation_token": token, "activation_expires_at": expires_at,
                "invitation": None}
    message = messages.invitation(desk.public_url, user["email"], user["full_name"], token,
                                  expires_at)
    delivery = await desk.mailer.queue(INVITATION, user["id"], message)
    return {"activation_token": None, "activation_expires_at": expires_at,
            "invitation": delivery}


async def with_invitations(
    conn: HTTPConnection, users: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each invited user with the delivery of its latest invitation e-mail (or None)."""
    invited = [u["id"] for u in users if u.get("status") == INVITED]
    latest = await mail_of(conn).mailer.latest(invited, INVITATION)
    for user in users:
        user["invitation"] = latest.get(user["id"])
    return users


def _text(body: Any, key: str) -> str:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value or len(value) > 512:
        raise BadRequest(f"'{key}' is required (a string of at most 512 characters)")
    return value


async def request_password_reset(request: Request) -> Response:
    """
    summary: E-mail a password-reset link (the answer never says whether the account exists)
    requestBody:
      content:
        application/json:
          schema: {type: object, required: [email], properties: {email: {type: string}}}
    responses:
      202: {description: "{message}: the same for every address"}
      429: {description: Too many attempts from this address}
      404: {description: E-mail is not set up here (REALTIME_SMTP_HOST)}
    """
    desk = mail_of(request)
    if not desk.mailer.configured:
        # 404, not 503: nothing is down, the feature does not exist on this deployment
        raise NotFound("password reset by e-mail is not set up here; ask an administrator")
    limits_of(request).addresses.take(Kind.LOGIN, request)  # each request spends an attempt
    email = _text(await json_body(request), "email")
    found = await desk.resets.request(Ctx("anonymous", client_ip(request)), email)
    if found is not None:
        user, token, expires = found
        message = messages.password_reset(desk.public_url, user["email"], user["full_name"],
                                          token, expires)
        await desk.mailer.queue(PASSWORD_RESET, user["id"], message)
    return JSONResponse({"message": REQUESTED}, status_code=202)


async def confirm_password_reset(request: Request) -> Response:
    """
    summary: Set a new password with the token of a reset link (single use)
    requestBody:
      content:
        application/json:
          schema: {type: object, required: [token, password],
                   properties: {token: {type: string}, password: {type: string}}}
    responses:
      200: {description: The user (signed out everywhere)}
      404: {description: Unknown or used link}
      409: {description: Expired link}
    """
    body = await json_body(request)
    token, password = _text(body, "token"), _text(body, "password")
    user = await mail_of(request).resets.confirm(
        Ctx("anonymous", client_ip(request)), token, password
    )
    identity_of(request).auth.forget()  # its logins were revoked: no cached answer survives
    return JSONResponse(user)


routes = [
    Route("/api/v1/auth/password-reset", request_password_reset, methods=["POST"]),
    Route("/api/v1/auth/password-reset/confirm", confirm_password_reset, methods=["POST"]),
]
