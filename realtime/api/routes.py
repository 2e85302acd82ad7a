"""REST under `/api/v1` (JSON). Each endpoint's docstring is its OpenAPI operation (YAML)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from realtime.api.exam_query import status_of
from realtime.api.history_query import next_link, parse_history_filter, parse_range
from realtime.api.reports import ActorNames, natural_key
from realtime.api.shared_parameters import with_shared_parameters
from realtime.auth.permissions import Permission
from realtime.auth.principal import Principal
from realtime.commands import parse_command, parse_target
from realtime.db.exam_records import exam_record
from realtime.db.history import HistoryFilter
from realtime.errors import BadRequest, Forbidden
from realtime.identity import scope
from realtime.identity.web import authenticate_request
from realtime.jsonsafe import JSONResponse, loads
from realtime.runtime import runtime_of
from realtime.sessions import Target
from realtime.state.model import (
    DEFAULT_INDICATORS,
    INDICATORS,
    Exam,
    ExamSettings,
    public_view,
)

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_BULK_SESSIONS = 10_000
# Lengths of a candidate's fields; an access code longer than `open` accepts could never be used.
CANDIDATE_FIELDS = {"candidate_id": (1, 128), "name": (0, 200), "group": (0, 128),
                    "access_code": (0, 64)}


def candidate_problem(candidate: Any) -> str | None:
    """What is wrong with one candidate of a bulk creation or a roster row, or None."""
    if not isinstance(candidate, dict) or not isinstance(candidate.get("candidate_id"), str):
        return "each candidate needs a string 'candidate_id'"
    for key, (low, high) in CANDIDATE_FIELDS.items():
        if key not in candidate:
            continue
        value = candidate[key]
        if not isinstance(value, str) or not low <= len(value) <= high:
            return f"candidate '{key}' must be a string of {low}..{high} characters"
    return None


async def principal_of(request: Request, permission: Permission | None = None) -> Principal:
    """The caller (bearer token, or login cookie + CSRF header); refusals are audited."""
    runtime = runtime_of(request)
    return await authenticate_request(request, runtime.auth, runtime.settings, permission)


async def visible_session(
    request: Request, principal: Principal
) -> tuple[Exam, dict[str, Any]]:
    """The exam and session named in the path; out of scope answers as if unknown (404)."""
    return await runtime_of(request).service.session_in_scope(
        request.path_params["exam_id"], request.path_params["session_id"], principal
    )


async def visible_exam(request: Request, principal: Principal) -> Exam:
    """The exam named in the path; out of scope answers as if unknown (404)."""
    return await runtime_of(request).service.exam_in_scope(
        request.path_params["exam_id"], principal
    )


async def managed_exam(request: Request, principal: Principal) -> Exam:
    """The exam named in the path, to change: 404 if out of scope, 403 if only seen through
    its candidates (changing an exam needs one of its groups)."""
    exam = await visible_exam(request, principal)
    if not scope.manages(principal, exam.groups):
        raise Forbidden("changing this exam needs one of its groups")
    return exam


async def visible_sessions(request: Request, principal: Principal) -> list[dict[str, Any]]:
    """The exam's sessions in the caller's scope, filtered by the query (status, group,
    search), in natural order of candidate names; 404 for an exam out of scope."""
    service = runtime_of(request).service
    exam = await visible_exam(request, principal)
    sessions = await service.list_sessions(exam.id, _filter_from_query(request))
    visible = [s for s in sessions if scope.sees_session(principal, exam.groups, s["group"])]
    visible.sort(key=lambda s: (natural_key(s["candidate_name"]), s["id"]))
    return visible


async def json_body(request: Request) -> Any:
    """The JSON body, checked by `jsonsafe.loads` like every WebSocket message (finite,
    safe numbers; no NUL; bounded nesting): one place for every endpoint's input. Its size
    was limited while it streamed in (`realtime.limits.body`, 413)."""
    raw = await request.body()
    return loads(raw or b"null")


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


MAX_EPOCH = 32_503_680_000  # 3000-01-01: later is a typo or an attack
MAX_GRACE = 24 * 3600  # an exam's resume grace, seconds


def _opt_float(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 <= value <= MAX_EPOCH
    ):
        raise BadRequest(f"'{key}' must be a number of seconds since the epoch, 0..{MAX_EPOCH}")
    return float(value)


def _bool(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be true or false")
    return value


def parse_settings(raw: Any, base: ExamSettings | None = None) -> ExamSettings:
    base = base or ExamSettings()
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise BadRequest("'settings' must be an object")
    unknown = set(raw) - {"requires_authorization", "lock_sessions", "allow_guests", "lab_networks",
                          "drop_alert_count", "drop_alert_window_seconds", "indicators",
                          "resume_grace_seconds"}
    if unknown:
        raise BadRequest(f"unknown settings: {sorted(unknown)}")
    networks = raw.get("lab_networks", base.lab_networks)
    if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
        raise BadRequest("'lab_networks' must be a list of CIDR strings")
    import ipaddress

    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as exc:
            raise BadRequest(f"invalid network {network!r}") from exc
    grace = raw.get("resume_grace_seconds", base.resume_grace_seconds)
    if grace is not None and (
        not isinstance(grace, int) or isinstance(grace, bool) or not 0 <= grace <= MAX_GRACE
    ):
        raise BadRequest(
            f"'resume_grace_seconds' must be an integer 0..{MAX_GRACE} (0: strict, no resume "
            "without an unlock) or null (the deployment's REALTIME_RESUME_GRACE)"
        )
    return ExamSettings(
        requires_authorization=_bool(raw, "requires_authorization", base.requires_authorization),
        lock_sessions=_bool(raw, "lock_sessions", base.lock_sessions),
        allow_guests=_bool(raw, "allow_guests", base.allow_guests),
        lab_networks=list(networks),
        drop_alert_count=_int_in(raw, "drop_alert_count", base.drop_alert_count,
                                 0, MAX_DROP_ALERT_COUNT),
        drop_alert_window_seconds=_int_in(raw, "drop_alert_window_seconds",
                                          base.drop_alert_window_seconds, 1,
                                          MAX_DROP_ALERT_WINDOW),
        indicators=parse_indicators(raw.get("indicators"), base.indicators),
        resume_grace_seconds=grace,
    )


MAX_DROP_ALERT_COUNT = 100_000
MAX_DROP_ALERT_WINDOW = 3600
MAX_INDICATOR = 10_000_000


def _int_in(raw: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"'{key}' must be an integer {low}..{high}")
    return value


def parse_indicators(
    raw: Any, base: dict[str, dict[str, float | None]]
) -> dict[str, dict[str, float | None]]:
    """Row indicator thresholds, merged into `base` per indicator and level: `{"rtt_ms":
    {"warning": 500, "danger": 2000}, "offline_seconds": {...}, "alerts": {...}}`. A level is
    a number 0..10,000,000 or null (off); warning must not exceed danger."""
    merged = {name: dict(base.get(name) or DEFAULT_INDICATORS[name]) for name in INDICATORS}
    if raw is None:
        return merged
    if not isinstance(raw, dict):
        raise BadRequest("'indicators' must be an object")
    unknown = set(raw) - set(INDICATORS)
    if unknown:
        raise BadRequest(f"unknown indicators: {sorted(unknown)}; expected {list(INDICATORS)}")
    for name, levels in raw.items():
        if not isinstance(levels, dict) or set(levels) - {"warning", "danger"}:
            raise BadRequest(f"'indicators.{name}' must be an object with 'warning' and/or "
                             "'danger'")
        for level, value in levels.items():
            if value is not None and (
                not isinstance(value, int | float) or isinstance(value, bool)
                or not 0 <= value <= MAX_INDICATOR
            ):
                raise BadRequest(f"'indicators.{name}.{level}' must be a number "
                                 f"0..{MAX_INDICATOR} or null")
            merged[name][level] = value
        warning, danger = merged[name].get("warning"), merged[name].get("danger")
        if warning is not None and danger is not None and warning > danger:
            raise BadRequest(f"'indicators.{name}': warning must not exceed danger")
    return merged


def parse_exam(body: Any) -> Exam:
    body = _object(body)
    exam_id = body.get("id") or f"exam-{int(time.time() * 1000):x}"
    if not isinstance(exam_id, str) or not ID_PATTERN.match(exam_id):
        raise BadRequest("'id' must be 1..64 characters of letters, digits, '_', '.', '-'")
    title = body.get("title")
    if not isinstance(title, str) or not title.strip() or len(title) > 200:
        raise BadRequest("'title' is required (1..200 characters)")
    groups = body.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise BadRequest("'groups' must be a list of strings")
    duration = body.get("duration_minutes", 60)
    if not isinstance(duration, int) or isinstance(duration, bool) or not 1 <= duration <= 1440:
        raise BadRequest("'duration_minutes' must be an integer 1..1440")
    starts_at, ends_at = _opt_float(body, "starts_at"), _opt_float(body, "ends_at")
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        raise BadRequest("'ends_at' must be after 'starts_at'")
    return Exam(
        id=exam_id,
        title=title.strip(),
        groups=groups,
        starts_at=starts_at,
        ends_at=ends_at,
        duration_minutes=duration,
        settings=parse_settings(body.get("settings")),
    )


async def healthz(request: Request) -> Response:
    """
    summary: Liveness and readiness, with the history backlog
    description: >
      503 when the state store does not answer (nothing can be served) or this process's
      event subscription is down (`events.subscribed` false: it would not hear commands for
      its sockets; it is re-made and what was missed read back by itself). SQL being down is
      "degraded" but still 200: commands and candidates keep working from the state store and
      the history catches up when SQL is back; `history_backlog` says how far behind it is.
    responses:
      200: {description: "The state store answers (status ok, or degraded when SQL is down)"}
      503: {description: The state store does not answer}
    """
    runtime = runtime_of(request)
    backend = "redis" if runtime.settings.redis_url else "memory"
    checks: dict[str, str] = {}
    for name, probe in (
        ("state", runtime.store.get_exam("__healthz__")),
        ("database", runtime.db.get_exam("__healthz__")),
    ):
        try:
            await asyncio.wait_for(probe, 2.0)
            checks[name] = "ok"
        except Exception as exc:  # a backend that does not answer makes us unready
            checks[name] = f"error: {type(exc).__name__}"
    drainer = runtime.drainer
    backlog: dict[str, Any] = {"events": None, "oldest_age_s": None}
    if checks["state"] == "ok":
        with contextlib.suppress(Exception):
            await asyncio.wait_for(drainer.refresh_backlog(), 2.0)
            backlog = {"events": drainer.backlog.events,
                       "oldest_age_s": round(drainer.oldest_age(), 3),
                       "exams": drainer.backlog.exams}
    backlog["drain_failures"] = drainer.failures
    if drainer.last_error:
        backlog["last_error"] = drainer.last_error
    events = runtime.store.subscription_health()
    healthy = all(v == "ok" for v in checks.values()) and events["subscribed"]
    body = {"status": "ok" if healthy else "degraded", "state_backend": backend, **checks,
            "events": events, "history_backlog": backlog}
    # Deaf (not hearing committed events) is as unready as a state store that does not
    # answer: this process's pages would miss commands, so a balancer should avoid it.
    ready = checks["state"] == "ok" and events["subscribed"]
    return JSONResponse(body, status_code=200 if ready else 503)


async def create_exam(request: Request) -> Response:
    """
    summary: Create an exam
    requestBody:
      content:
        application/json:
          schema: {$ref: "#/components/schemas/ExamInput"}
    responses:
      201: {description: The exam}
      400: {description: Invalid input}
      403: {description: "Missing exams.manage, or a group that is not the caller's"}
      409: {description: The id exists}
    """
    principal = await principal_of(request, Permission.MANAGE_EXAMS)
    exam = parse_exam(await json_body(request))
    scope.check_exam_groups(principal, [], exam.groups)
    await runtime_of(request).service.create_exam(exam)
    return JSONResponse(exam.to_dict(), status_code=201)


async def get_exam(request: Request) -> Response:
    """
    summary: One exam, with its status and a count of its sessions (those in the caller's scope)
      per status
    responses:
      200: {description: The exam}
      404: {description: Unknown exam}
    """
    principal = await principal_of(request, Permission.VIEW_SESSIONS)
    runtime = runtime_of(request)
    exam = await visible_exam(request, principal)
    counts: dict[str, int] = {}
    for session in await runtime.service.list_sessions(exam.id):
        if scope.sees_session(principal, exam.groups, session["group"]):
            counts[session["status"]] = counts.get(session["status"], 0) + 1
    extra: dict[str, Any] = {}
    record = await exam_record(runtime.db, exam.id)
    if record is not None:  # SQL down: the live fields still answer
        extra = {"status": status_of(record, time.time()).value,
                 "created_at": record.created_at, "archived_at": record.archived_at}
    return JSONResponse({**exam.to_dict(), **extra, "counts": counts})


async def update_exam(request: Request) -> Response:
    """
    summary: Change an exam's title, window, duration, groups or settings (e.g. lock_sessions)
    responses:
      200: {description: The updated exam}
      403: {description: "Missing exams.manage, an exam without the caller's groups, or a group
        change outside them"}
      404: {description: Unknown exam (or out of scope)}
    """
    principal = await principal_of(request, Permission.MANAGE_EXAMS)
    service = runtime_of(request).service
    exam = await managed_exam(request, principal)
    body = _object(await json_body(request))
    editable = {"title", "starts_at", "ends_at", "duration_minutes", "settings", "groups"}
    unknown = set(body) - editable
    if unknown:
        raise BadRequest(f"cannot change {sorted(unknown)}")
    merged = {**exam.to_dict(), **{k: v for k, v in body.items() if k != "settings"}}
    updated = parse_exam(merged)
    updated.settings = parse_settings(body.get("settings"), exam.settings)
    scope.check_exam_groups(principal, exam.groups, updated.groups)
    await service.update_exam(updated)
    runtime_of(request).hub.exam_changed(updated.id, updated.groups)
    return JSONResponse(updated.to_dict())


async def create_sessions(request: Request) -> Response:
    """
    summary: Create sessions in bulk; returns each session's access code and candidate token
    requestBody:
      content:
        application/json:
          schema: {$ref: "#/components/schemas/SessionsInput"}
    responses:
      201: {description: "{sessions: [{id, candidate_id, access_code, token}]}"}
      403: {description: "Missing sessions.create, or an exam without the caller's groups"}
      404: {description: Unknown exam (or out of scope)}
      409: {description: A candidate or access code already exists; nothing was created}
    """
    principal = await principal_of(request, Permission.CREATE_SESSIONS)
    runtime = runtime_of(request)
    exam_id = (await managed_exam(request, principal)).id
    body = _object(await json_body(request))
    candidates = body.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise BadRequest("'candidates' must be a non-empty list")
    if len(candidates) > MAX_BULK_SESSIONS:
        raise BadRequest(f"at most {MAX_BULK_SESSIONS} sessions per request")
    for candidate in candidates:
        problem = candidate_problem(candidate)
        if problem:
            raise BadRequest(problem)
    sessions = await runtime.service.create_sessions(exam_id, candidates, principal.actor)
    out = [
        {
            "id": s["id"],
            "candidate_id": s["candidate_id"],
            "candidate_name": s["candidate_name"],
            "group": s["group"],
            "access_code": s["access_code"],
            "token": runtime.auth.issue_candidate_token(exam_id, s["id"]),
        }
        for s in sessions
    ]
    return JSONResponse({"sessions": out}, status_code=201)


def _filter_from_query(request: Request) -> Target | None:
    query = request.query_params
    raw: dict[str, Any] = {}
    statuses = query.getlist("status")
    if statuses:
        raw["status"] = [s for part in statuses for s in part.split(",") if s]
    for key in ("group", "search"):
        if query.get(key):
            raw[key] = query[key]
    return parse_target(raw) if raw else None


async def list_sessions(request: Request) -> Response:
    """
    summary: List an exam's sessions, filtered by status, group or candidate search
    parameters:
      - {name: status, in: query, schema: {type: string}, description: "comma separated"}
      - {name: group, in: query, schema: {type: string}}
      - {name: search, in: query, schema: {type: string}}
    responses:
      200: {description: "{sessions: [Session]}"}
    """
    principal = await principal_of(request, Permission.VIEW_SESSIONS)
    visible = [public_view(s) for s in await visible_sessions(request, principal)]
    return JSONResponse({"sessions": visible})


async def list_alerts(request: Request) -> Response:
    """
    summary: The exam's active hall-wide drop alert (none or one)
    description: >
      An alert is active from the drop that raised it until ten minutes after the latest drop
      counted towards it; dashboards get it with their snapshot and as a `drop_alert` event.
      Listed only when the caller sees the session whose drop raised it (as its event).
    responses:
      200: {description: "{alerts: [{id, count, window_seconds, sessions, groups, group, ...}]}"}
      404: {description: Unknown exam}
    """
    principal = await principal_of(request, Permission.VIEW_SESSIONS)
    seen = {s["id"] for s in await visible_sessions(request, principal)}
    exam_id = request.path_params["exam_id"]
    alerts = await runtime_of(request).store.active_alerts(exam_id)
    return JSONResponse({"alerts": [a for a in alerts if a.get("session_id") in seen]})


async def get_session(request: Request) -> Response:
    """
    summary: One session's live state
    responses:
      200: {description: The session}
      404: {description: Unknown session}
    """
    principal = await principal_of(request, Permission.VIEW_SESSIONS)
    _, session = await visible_session(request, principal)
    return JSONResponse(public_view(session))


async def post_command(request: Request) -> Response:
    """
    summary: Apply a command to one session, a list, a filter or the whole exam
    requestBody:
      content:
        application/json:
          schema: {$ref: "#/components/schemas/Command"}
    responses:
      200: {description: "{command_id, action, applied: [...], skipped: [...]}"}
      400: {description: Invalid command}
      403: {description: Not allowed}
    """
    principal = await principal_of(request)
    action, target, params = parse_command(await json_body(request))
    result = await runtime_of(request).service.command(
        request.path_params["exam_id"], action, target, principal, params
    )
    return JSONResponse(result.to_dict())


async def session_history(request: Request) -> Response:
    """
    summary: A page of a session's history, oldest first, with a link to the next page
    parameters:
      - {shared: history_page}
    responses:
      200: {description: "{events: [Event], next: URL of the next page or null}"}
      400: {description: A malformed filter}
    """
    principal = await principal_of(request, Permission.VIEW_HISTORY)
    flt = parse_history_filter(request.query_params)
    exam, session = await visible_session(request, principal)
    return await history_answer(request, exam.id, session["id"], flt,
                                lambda _sid: str(session["candidate_name"]))


async def history_answer(
    request: Request,
    exam_id: str,
    session_id: str | None,
    flt: HistoryFilter,
    candidate_name: Callable[[str], str],
    visible: Callable[[str], bool] = lambda _sid: True,
) -> Response:
    """A page of history as JSON: events with their actors named, and the next page's link."""
    runtime = runtime_of(request)
    events, more = await runtime.service.history_page(exam_id, session_id, flt)
    shown = [public_event(e.to_dict()) for e in events if visible(e.session_id)]
    await ActorNames(runtime.db).name_all(shown, candidate_name)
    link = next_link(request.url, flt, events[0].seq, events[-1].seq) if more else None
    return JSONResponse({"events": shown, "next": link})


def public_event(data: dict[str, Any]) -> dict[str, Any]:
    data["changes"] = public_view(data.get("changes") or {})
    return data


async def report_irregularity(request: Request) -> Response:
    """
    summary: Report an irregularity on a session (category, note)
    description: >
      `category` must name a leaf of the deployment's category tree
      (`GET /api/v1/reason-categories`), e.g. `examinee/behaviour` or `other`.
    responses:
      201: {description: The history event}
      400: {description: "Unknown category, or a note over 4000 characters"}
    """
    principal = await principal_of(request, Permission.REPORT_IRREGULARITY)
    body = _object(await json_body(request))
    service = runtime_of(request).service
    category, note = body.get("category"), body.get("note", "")
    if category is None:
        raise BadRequest("'category' is required, e.g. 'technical/network' "
                         "(GET /api/v1/reason-categories)")
    service.reasons.check(category)
    if not isinstance(note, str) or len(note) > 4000:
        raise BadRequest("'note' must be a string of at most 4000 characters")
    exam, session = await visible_session(request, principal)
    event = await service.report_irregularity(exam.id, session["id"], principal, category, note)
    return JSONResponse(public_event(event.to_dict()), status_code=201)


async def list_irregularities(request: Request) -> Response:
    """
    summary: The irregularities reported in an exam (on sessions in the caller's scope), oldest
      first
    parameters:
      - {shared: range}
    responses:
      200: {description: "{irregularities: [...]}"}
    """
    principal = await principal_of(request, Permission.VIEW_HISTORY)
    since, until = parse_range(request.query_params)
    runtime = runtime_of(request)
    exam = await visible_exam(request, principal)
    rows = await runtime.service.irregularities(exam.id, since, until)
    if not scope.manages(principal, exam.groups):
        groups = await runtime.service.candidate_groups(exam.id)
        rows = [
            r for r in rows
            if scope.sees_session(principal, exam.groups, groups.get(r["session_id"], ""))
        ]
    await ActorNames(runtime.db).name_all(rows, lambda _sid: "")
    return JSONResponse({"irregularities": rows})


async def reason_categories(request: Request) -> Response:
    """
    summary: The reason categories of this deployment, and which commands must name one
    description: >
      `categories` is the tree staff pick from (irregularities always, commands' optional
      `reason_category`); a category is named by its path, `<id>/<sub id>` or `<id>` for one
      without subcategories. `required` lists the actions whose commands need a
      `reason_category` (REALTIME_REASON_CATEGORY_REQUIRED).
    responses:
      200: {description: "{categories: [{id, label, categories?}], required: [action]}"}
    """
    await principal_of(request, Permission.VIEW_SESSIONS)
    return JSONResponse(runtime_of(request).service.reasons.to_dict())


COMPONENTS: dict[str, Any] = {
    "schemas": {
        "ExamInput": {
            "type": "object",
            "required": ["title"],
            "properties": {
                "id": {"type": "string"},
                "title": {"type": "string"},
                "groups": {"type": "array", "items": {"type": "string"}},
                "starts_at": {"type": "number"},
                "ends_at": {"type": "number"},
                "duration_minutes": {"type": "integer"},
                "settings": {
                    "type": "object",
                    "properties": {
                        "requires_authorization": {"type": "boolean"},
                        "lock_sessions": {"type": "boolean"},
                        "allow_guests": {"type": "boolean"},
                        "lab_networks": {"type": "array", "items": {"type": "string"}},
                        "resume_grace_seconds": {
                            "type": "integer", "nullable": True, "minimum": 0,
                            "maximum": 24 * 3600,
                            "description": "0: strict; null: REALTIME_RESUME_GRACE",
                        },
                    },
                },
            },
        },
        "SessionsInput": {
            "type": "object",
            "required": ["candidates"],
            "properties": {
                "candidates": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["candidate_id"],
                        "properties": {
                            "candidate_id": {"type": "string"},
                            "name": {"type": "string"},
                            "group": {"type": "string"},
                            "access_code": {"type": "string"},
                        },
                    },
                }
            },
        },
        "Command": {
            "type": "object",
            "required": ["action", "target"],
            "properties": {
                "action": {
                    "type": "string",
                    "enum": ["authorize", "pause", "resume", "lock", "unlock", "terminate",
                             "extend", "notice", "reduce", "reopen"],
                },
                "target": {
                    "description": "\"all\", a session id, a list of ids, or "
                    "{session_ids, status, group, search, all}",
                },
                "reason": {"type": "string", "description": "required by reopen"},
                "reason_category": {
                    "type": "string",
                    "description": "a category path (GET /api/v1/reason-categories)",
                },
                "minutes": {"type": "integer", "description": "extend and reduce only"},
                "text": {"type": "string", "description": "notice only"},
                "command_id": {"type": "string"},
            },
        },
    }
}

schemas = SchemaGenerator(
    {
        "openapi": "3.0.3",
        "info": {"title": "realtime", "version": "1"},
        "components": COMPONENTS,
    }
)


PATH_PARAMETER = re.compile(r"{([^}:]+)(?::[^}]*)?}")


def with_path_parameters(document: dict[str, Any]) -> dict[str, Any]:
    """Declare every `{name}` of every path as a required string parameter.

    Starlette's generator only copies the docstrings; without these a client generator or a
    fuzzer (schemathesis) cannot call the operation at all.
    """
    for path, operations in document.get("paths", {}).items():
        names = PATH_PARAMETER.findall(path)
        if not names:
            continue
        for operation in operations.values():
            declared = operation.setdefault("parameters", [])
            have = {p.get("name") for p in declared if p.get("in") == "path"}
            declared.extend(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in names
                if name not in have
            )
    return document


async def openapi(request: Request) -> Response:
    """
    summary: This OpenAPI document
    responses:
      200: {description: OpenAPI 3 JSON}
    """
    document = with_shared_parameters(schemas.get_schema(routes=request.app.routes))
    return JSONResponse(with_path_parameters(document))


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/api/v1/openapi.json", openapi, methods=["GET"]),
    Route("/api/v1/exams", create_exam, methods=["POST"]),
    Route("/api/v1/exams/{exam_id}", get_exam, methods=["GET"]),
    Route("/api/v1/exams/{exam_id}", update_exam, methods=["PATCH"]),
    Route("/api/v1/exams/{exam_id}/sessions", list_sessions, methods=["GET"]),
    Route("/api/v1/exams/{exam_id}/sessions", create_sessions, methods=["POST"]),
    Route("/api/v1/exams/{exam_id}/sessions/{session_id}", get_session, methods=["GET"]),
    Route("/api/v1/exams/{exam_id}/alerts", list_alerts, methods=["GET"]),
    Route(
        "/api/v1/exams/{exam_id}/sessions/{session_id}/history", session_history, methods=["GET"]
    ),
    Route(
        "/api/v1/exams/{exam_id}/sessions/{session_id}/irregularities",
        report_irregularity,
        methods=["POST"],
    ),
    Route("/api/v1/exams/{exam_id}/irregularities", list_irregularities, methods=["GET"]),
    Route("/api/v1/exams/{exam_id}/commands", post_command, methods=["POST"]),
    Route("/api/v1/reason-categories", reason_categories, methods=["GET"]),
]
