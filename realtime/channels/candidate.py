"""`WS /ws/candidate`: a candidate's browser opens (or resumes) its session and lives there.

The first message must be `open`. After `opened`, the page sends progress, client events,
command acks, pongs and finally `submit`; the server pushes commands, pings and, when another
connection takes the session over, `superseded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket

from realtime.auth.candidate_tokens import token_refusal
from realtime.auth.principal import Principal
from realtime.channels.common import (
    accept,
    error_message,
    forget_request_headers,
    messages,
    non_negative_int,
    optional_number,
    optional_str,
    required_str,
)
from realtime.errors import (
    BadRequest,
    CloseCode,
    ErrorCode,
    NotFound,
    RateLimited,
    RealtimeError,
    backend_down,
)
from realtime.hub.connection import Connection
from realtime.hub.hub import ACK_FIELDS, CandidateLink
from realtime.identity.web import client_ip
from realtime.limits.refusals import Kind
from realtime.limits.setup import limits_of
from realtime.runtime import Runtime, runtime_of
from realtime.sessions import FastPath, OpenRefused
from realtime.state import machine
from realtime.state.model import RefusalReason, SkipReason, Status, candidate_view

log = logging.getLogger(__name__)
MAX_USER_AGENT = 256  # enough to tell devices apart; history rows stay small

# A pong echoes a ping's `t` (this server's clock): one further in the past than this, or in
# the future, answers no ping of ours and must not become a round trip.
MAX_PONG_AGE = 3600.0
MAX_PONG_AHEAD = 60.0


async def candidate_endpoint(websocket: WebSocket) -> None:
    runtime = runtime_of(websocket)
    conn = await accept(websocket, runtime.settings)
    if conn is None:
        return
    held: list[CandidateLink] = []  # filled once the session is open, whatever happens after
    try:
        await _serve(websocket, conn, runtime, held)
    except TimeoutError:
        conn.abort(CloseCode.PING_TIMEOUT, "no answer to pings")
    except asyncio.CancelledError:
        if not conn.stopped:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the server cut off a silent or stalled peer: clean up below
    except Exception:
        log.exception("candidate connection failed")
        conn.abort(1011, "internal error")
    finally:
        for link in held:
            runtime.hub.remove_candidate(link)
            task = link.progress_task
            if task is not None and not task.done():  # the last progress goes before the drop
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(task), 2.0)
            if not link.superseded and not link.ended:
                reason, dropped = _how_it_ended(conn)
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        runtime.service.disconnect(
                            link.exam_id, link.session_id, link.conn_id, reason, dropped
                        )
                    )
        await conn.stop()


# Peer close codes of a page that closed on purpose (left, reloaded, closed its socket).
# Uvicorn reports a connection lost without a close frame as 1005 (or 1006): a drop.
_CLEAN_CLOSES = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY})
# The server cut the peer off because it went silent or stopped reading.
_SILENT_CUTS = frozenset({CloseCode.PING_TIMEOUT, CloseCode.SLOW_CONSUMER})


def _how_it_ended(conn: Connection) -> tuple[str, bool]:
    """The disconnect reason for history, and whether the connection was lost without a close
    (no close frame from the peer, or cut off by the server for silence): an incident."""
    if conn.close_code is not None:
        return f"close {conn.close_code}", conn.close_code in _SILENT_CUTS
    peer = conn.peer_close_code
    if peer is None or peer in _CLEAN_CLOSES:  # None: the server ended it (an error)
        return "closed", False
    return f"lost {peer}", True


async def _resolve(
    websocket: WebSocket, runtime: Runtime, message: dict[str, Any]
) -> tuple[str, str]:
    """(exam id, session id) from an access code, a session token, or a candidate's
    login token plus `exam_id` (the session is then created on first open).

    Access codes are short enough to guess, so each address has a budget of wrong ones
    (REALTIME_ACCESS_CODE_RATE/BURST); a code that exists costs nothing. Raises RateLimited
    when the budget is spent (before the code is looked at, so guessing learns nothing)."""
    code = optional_str(message, "access_code", 64)
    token = optional_str(message, "token", 2048)
    if token:
        principal = await runtime.auth.candidate(token)
        if principal is not None:
            await _check_session_token(runtime, principal)
            return principal.exam_id, principal.session_id
        exam_id = optional_str(message, "exam_id", 128)
        person = await runtime.auth.staff(token)  # a login token, of any kind of user
        if person is None or person.kind != "candidate":
            raise NotFound("invalid candidate token")
        if not exam_id:
            raise BadRequest("opening with a login token needs an 'exam_id'")
        session_id = await runtime.service.session_for_candidate(exam_id, person)
        return exam_id, session_id
    if code:
        addresses = limits_of(websocket).addresses
        key = addresses.take(Kind.ACCESS_CODE, websocket)
        try:
            exam_id, session_id = await runtime.service.resolve_code(code.strip().upper())
        except NotFound:
            raise  # a wrong code: the attempt counts
        except BaseException:
            addresses.give_back(Kind.ACCESS_CODE, key)  # e.g. Redis down: not the client's fault
            raise
        addresses.give_back(Kind.ACCESS_CODE, key)
        return exam_id, session_id
    raise BadRequest("open needs an 'access_code' or a 'token'")


async def _check_session_token(runtime: Runtime, principal: Principal) -> None:
    """NotFound (refused `not_found`, with why) for a revoked or expired session token."""
    session = await runtime.service.get_session(principal.exam_id, principal.session_id)
    exam = await runtime.service.get_exam(principal.exam_id)
    try:
        generation = int(principal.extra.get("token_gen", "0"))
        issued_at = float(principal.extra.get("issued_at", "0"))
    except ValueError:
        raise NotFound("invalid candidate token") from None
    reason = token_refusal(generation=generation, issued_at=issued_at, session=session,
                           exam_ends_at=exam.ends_at, ttl=runtime.settings.candidate_token_ttl,
                           now=time.time())
    if reason is not None:
        raise NotFound(reason)


async def _open(
    websocket: WebSocket, conn: Connection, runtime: Runtime, message: dict[str, Any]
) -> CandidateLink | None:
    try:
        exam_id, session_id = await _resolve(websocket, runtime, message)
        resume_token = optional_str(message, "resume_token", 256)
        client_id = optional_str(message, "client_id", 128) or ""
    except RateLimited as exc:
        retry = max(1, math.ceil(exc.retry_after))
        conn.send(error_message(exc.code, exc.message, request="open", retry_after=retry))
        conn.close(CloseCode.RATE_LIMITED, "too many attempts")
        return None
    except NotFound as exc:
        conn.send({"type": "refused", "reason": RefusalReason.NOT_FOUND, "message": exc.message})
        conn.close(CloseCode.REFUSED, RefusalReason.NOT_FOUND)
        return None
    except OpenRefused as exc:
        conn.send({"type": "refused", "reason": exc.reason, "message": exc.message})
        conn.close(CloseCode.REFUSED, exc.reason)
        return None
    remote = client_ip(websocket)
    link = CandidateLink(conn, exam_id, session_id, runtime.presence.new_conn_id())
    try:
        await runtime.hub.attach_candidate(link)  # before the open: no event after it is missed
        opened = await runtime.service.open(
            exam_id, session_id, link.conn_id, "", resume_token, client_id, remote,
            user_agent=websocket.headers.get("user-agent", "")[:MAX_USER_AGENT],
        )
    except OpenRefused as exc:
        runtime.hub.remove_candidate(link)
        conn.send({"type": "refused", "reason": exc.reason, "message": exc.message})
        conn.close(CloseCode.REFUSED, exc.reason)
        return None
    except BaseException:
        runtime.hub.remove_candidate(link)
        raise
    exam = await runtime.service.get_exam(exam_id)
    conn.send(
        {
            "type": "opened",
            "session": candidate_view(opened.session),
            "exam": {
                "id": exam.id,
                "title": exam.title,
                "duration_minutes": exam.duration_minutes,
                "requires_authorization": exam.settings.requires_authorization,
            },
            "resume_token": opened.resume_token,
            "relocked": opened.relocked,
            "server_time": time.time(),
        }
    )
    link.actor = machine.candidate_actor(opened.session)
    link.activate(opened.session["version"], opened.session)
    conn.watched = True  # from now on the heartbeat notices silence
    forget_request_headers(websocket)  # all read by now; an idle socket need not keep them
    return link


async def _serve(
    websocket: WebSocket, conn: Connection, runtime: Runtime, held: list[CandidateLink]
) -> None:
    settings = runtime.settings
    link: CandidateLink | None = None
    limiter = limits_of(websocket).message_limiter(Kind.CANDIDATE_MESSAGE, websocket)
    async for message in messages(websocket, conn, settings, settings.ping_timeout, limiter):
        kind = message["type"]
        try:
            if link is None:
                if kind == "open":
                    link = await _open(websocket, conn, runtime, message)
                    if link is None:
                        return
                    held.append(link)
                elif kind != "pong":
                    conn.send(error_message(ErrorCode.OUT_OF_ORDER, f"send 'open' before '{kind}'"))
                continue
            if link.superseded or link.ended:
                continue
            await _handle(conn, runtime, link, message)
            if link.ended:
                return
        except RealtimeError as exc:
            conn.send(error_message(exc.code, exc.message, request=kind))
        except Exception as exc:
            if not backend_down(exc):
                raise
            # The state store (or SQL) is unreachable: nothing was applied. The socket stays
            # open — closing it would send the page into reconnects that cannot succeed now,
            # and its session would look abandoned afterwards.
            log.warning("candidate %s: %s not applied, backend down: %r",
                        link.session_id if link else "-", kind, exc)
            conn.send(error_message(ErrorCode.UNAVAILABLE,
                                    "the server cannot reach its state store; retry",
                                    request=kind))
            if link is None:  # not open yet: the page reconnects with backoff and tries again
                conn.close(CloseCode.TRY_AGAIN_LATER, "try again later")
                return


async def _handle(
    conn: Connection, runtime: Runtime, link: CandidateLink, message: dict[str, Any]
) -> None:
    kind = message["type"]
    service = runtime.service
    actor = link.actor
    now = time.time()
    conn_id = link.conn_id
    outcome: machine.Outcome
    if kind == "pong":
        sent = optional_number(message, "t")
        if sent is None:
            return
        if not -MAX_PONG_AHEAD <= now - sent <= MAX_PONG_AGE:
            raise BadRequest("'t' must echo the 't' of a recent ping")
        link.rtt_ms = max(0.0, round((now - sent) * 1000, 1))
        return
    if kind == "open":
        raise BadRequest("the session is already open on this connection", ErrorCode.OUT_OF_ORDER)
    if kind == "progress":
        position = non_negative_int(message, "position")
        answered = non_negative_int(message, "answered")
        # Not awaited: the latest report wins while one is on its way (coalescing), and the
        # socket goes on reading.
        link.pending_progress = (position, answered, link.rtt_ms, now)
        if link.progress_task is None or link.progress_task.done():
            link.progress_task = asyncio.create_task(_send_progress(conn, runtime, link))
        return
    elif kind == "client_event":
        name = required_str(message, "name", 64)
        detail = optional_str(message, "detail", 500) or ""
        outcome = await service.candidate_update(
            link.exam_id,
            link.session_id,
            lambda s: machine.client_event(s, conn_id, actor, name, detail, now),
            FastPath(link.view, {"conn_id": conn_id}),
        )
        if isinstance(outcome, machine.Transition):  # the next one counts on from here
            link.view["alerts"] = outcome.changes.get("alerts", link.view["alerts"])
    elif kind == "ack":
        command_id = required_str(message, "command_id", 64)
        guard = {"conn_id": conn_id}
        for key in ACK_FIELDS:
            if command_id == link.view.get(key):
                guard[key] = command_id  # clear it only if it is still this one
        outcome = await service.candidate_update(
            link.exam_id,
            link.session_id,
            lambda s: machine.acknowledge(s, conn_id, actor, command_id, now),
            FastPath(link.view, guard, live_only=False),
        )
    elif kind == "raise_hand":
        outcome = await service.candidate_update(
            link.exam_id, link.session_id, lambda s: machine.raise_hand(s, conn_id, actor, now)
        )
        if isinstance(outcome, machine.Transition):
            conn.send({"type": "hand_raised", "at": now})
    elif kind == "submit":
        outcome = await service.candidate_update(
            link.exam_id, link.session_id, lambda s: machine.submit(s, conn_id, actor, now)
        )
        if isinstance(outcome, machine.Transition):
            link.ended = True
            conn.send({"type": "submitted", "status": Status.COMPLETED.value})
            conn.close(CloseCode.COMPLETED, "completed")
            return
    else:
        raise BadRequest(f"unknown message type {kind!r}", ErrorCode.UNKNOWN_TYPE)
    if isinstance(outcome, machine.Rejection):
        code = (
            ErrorCode.INVALID_TRANSITION
            if outcome.reason != SkipReason.INVALID_PARAMS
            else ErrorCode.INVALID
        )
        conn.send(error_message(code, outcome.message, reason=outcome.reason, request=kind))


async def _send_progress(conn: Connection, runtime: Runtime, link: CandidateLink) -> None:
    """Commit the link's latest progress report until none is waiting (one at a time)."""
    delay = 0.5
    while link.pending_progress is not None and not link.superseded and not link.ended:
        report = link.pending_progress
        position, answered, rtt, now = report
        link.pending_progress = None
        try:
            outcome = await runtime.service.candidate_update(
                link.exam_id, link.session_id, _progress_decision(link, report),
                FastPath(link.view, {"conn_id": link.conn_id}),
            )
        except Exception as exc:
            if not backend_down(exc):
                log.exception("progress of %s failed", link.session_id)
                return
            if link.pending_progress is None:  # keep it unless a newer one came
                link.pending_progress = (position, answered, rtt, now)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        delay = 0.5
        if isinstance(outcome, machine.Rejection) and not (link.superseded or link.ended):
            code = (
                ErrorCode.INVALID_TRANSITION
                if outcome.reason != SkipReason.INVALID_PARAMS
                else ErrorCode.INVALID
            )
            conn.send(error_message(code, outcome.message, reason=outcome.reason,
                                    request="progress"))


def _progress_decision(
    link: CandidateLink, report: tuple[int, int, float | None, float]
) -> Callable[[dict[str, Any]], machine.Outcome]:
    position, answered, rtt, now = report
    conn_id, actor = link.conn_id, link.actor

    def decide(s: dict[str, Any]) -> machine.Outcome:
        outcome = machine.report_progress(s, conn_id, actor, position, answered, now)
        if isinstance(outcome, machine.Transition) and rtt is not None:
            outcome.changes["rtt_ms"] = rtt
        return outcome

    return decide
