"""HTTP and WebSocket glue: who is calling (token, cookie + CSRF, IP), denials, live re-checks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection, Request
from starlette.websockets import WebSocket

from realtime.auth.permissions import Permission
from realtime.auth.principal import Principal
from realtime.auth.tokens import TokenAuthenticator, same_secret
from realtime.config import Settings
from realtime.errors import CloseCode, ErrorCode, Forbidden, Unauthorized
from realtime.hub.hub import Outlet
from realtime.identity import scope
from realtime.identity.audit import AuditLog, Ctx
from realtime.identity.authenticator import IdentityAuthenticator
from realtime.identity.service import IdentityService
from realtime.proxies import proxies_of

log = logging.getLogger(__name__)

TOKEN_COOKIE = "realtime_token"
CSRF_COOKIE = "realtime_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(slots=True)
class Identity:
    """The identity layer's parts, kept on `app.state.identity`."""

    service: IdentityService
    audit: AuditLog
    auth: IdentityAuthenticator
    settings: Settings


def identity_of(conn: HTTPConnection) -> Identity:
    identity: Identity = conn.app.state.identity
    return identity


def client_ip(conn: HTTPConnection) -> str:
    """The caller's address ("" if unknown); forwarded headers count only from trusted
    proxies (`realtime.proxies`)."""
    return proxies_of(conn).host(conn)


def csrf_for(secret: str, token: str) -> str:
    """The CSRF token bound to a login token (double submit: cookie + header must carry it)."""
    return hmac.new(secret.encode(), b"csrf:" + token.encode(), hashlib.sha256).hexdigest()


def ctx_of(principal: Principal) -> Ctx:
    return Ctx(principal.actor, principal.extra.get("ip", ""))


# `with_ip` per principal object and address, as made last: a login token's principal is one
# object for as long as the authenticator keeps it (a second), the bootstrap token's always, so
# a busy caller's requests share it (`dataclasses.replace` was ~10 us of every request).
_WITH_IP: dict[tuple[int, str], tuple[Principal, Principal]] = {}
_WITH_IP_MAX = 4096


def with_ip(principal: Principal, ip: str) -> Principal:
    key = (id(principal), ip)
    found = _WITH_IP.get(key)
    if found is not None and found[0] is principal:  # (held here: its id is not reused)
        return found[1]
    made = dataclasses.replace(principal, extra={**principal.extra, "ip": ip})
    if len(_WITH_IP) >= _WITH_IP_MAX:
        _WITH_IP.clear()
    _WITH_IP[key] = (principal, made)
    return made


def request_token(conn: HTTPConnection) -> tuple[str, bool]:
    """(token, from_cookie). A bearer header wins over the cookie."""
    header = conn.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip(), False
    return conn.cookies.get(TOKEN_COOKIE, ""), True


async def authenticate_request(
    request: Request, auth: TokenAuthenticator, settings: Settings,
    permission: Permission | None = None,
) -> Principal:
    """The caller of a REST request; 401 without valid credentials, 403 (audited) if refused."""
    token, from_cookie = request_token(request)
    if not token:
        raise Unauthorized("a bearer staff token or a login cookie is required")
    ip = client_ip(request)
    principal = await auth.staff(token)
    if principal is None:
        raise Unauthorized("invalid or expired token")
    principal = with_ip(principal, ip)
    identity: Identity | None = getattr(request.app.state, "identity", None)
    if from_cookie and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        expected = csrf_for(settings.secret_key, token)
        if not (sent and same_secret(sent, cookie) and same_secret(sent, expected)):
            if identity is not None:
                await identity.audit.record(
                    ctx_of(principal), "permission_denied", "", reason="csrf",
                    method=request.method, path=request.url.path,
                )
            raise Forbidden("missing or wrong X-CSRF-Token header")
    if permission is not None and not scope.grants(principal, permission):
        if identity is not None:
            await identity.audit.record(
                ctx_of(principal), "permission_denied", "", permission=permission.value,
                method=request.method, path=request.url.path,
            )
        raise Forbidden(scope.refusal(principal, permission))
    return principal


def websocket_origin_ok(websocket: WebSocket, settings: Settings, from_cookie: bool) -> bool:
    """Cookie-authenticated sockets must come from an allowed origin, or this very host."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    if settings.allowed_origins:
        return origin in settings.allowed_origins
    if not from_cookie:
        return True
    return urlsplit(origin).netloc.lower() == websocket.headers.get("host", "").lower()


async def authenticate_websocket(
    websocket: WebSocket, auth: TokenAuthenticator, settings: Settings
) -> tuple[Principal | None, str, int]:
    """(principal, token, close code if refused) for a staff socket."""
    token, from_cookie = request_token(websocket)
    if not token:
        token = websocket.query_params.get("token", "")
        from_cookie = False
    if not websocket_origin_ok(websocket, settings, from_cookie):
        return None, token, CloseCode.FORBIDDEN
    principal = await auth.staff(token) if token else None
    if principal is None:
        return None, token, CloseCode.UNAUTHORIZED
    if principal.kind != "staff":
        return None, token, CloseCode.FORBIDDEN
    return with_ip(principal, client_ip(websocket)), token, 0


def _rights(p: Principal) -> tuple[object, ...]:
    return (p.kind, p.permissions, p.groups, p.unrestricted)


async def _recheck(
    conn: Outlet, auth: TokenAuthenticator, token: str, principal: Principal,
    interval: float,
) -> None:
    while not conn.closing:
        await asyncio.sleep(interval)
        try:
            current = await auth.staff(token)
        except Exception:
            log.exception("re-checking a staff token failed; trying again")
            continue
        if current is None:
            conn.send({"type": "error", "code": str(ErrorCode.UNAUTHORIZED),
                       "message": "your login ended (logged out, expired or deactivated)"})
            conn.close(CloseCode.UNAUTHORIZED, "credentials revoked")
            return
        if _rights(current) != _rights(principal):
            conn.send({"type": "error", "code": str(ErrorCode.FORBIDDEN),
                       "message": "your roles or groups changed; reconnect"})
            conn.close(CloseCode.FORBIDDEN, "permissions changed")
            return


@contextlib.asynccontextmanager
async def credential_watch(
    conn: Outlet, auth: TokenAuthenticator, token: str, principal: Principal,
    interval: float,
) -> AsyncIterator[None]:
    """Close the socket or stream (4401/4403) once its token is revoked or its rights change."""
    task = asyncio.create_task(_recheck(conn, auth, token, principal, interval),
                               name="ws-credentials")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
