"""Parsing a staff command (REST body or WebSocket message) into action, target and params.

Pure validation shared by both transports, so both give the same errors for the same input.
"""

from __future__ import annotations

from typing import Any

from realtime.errors import BadRequest, ErrorCode
from realtime.reasons import MAX_CATEGORY_LENGTH
from realtime.sessions import Target
from realtime.state.machine import MAX_EXTEND_MINUTES
from realtime.state.model import Action, Status

MAX_TARGET_IDS = 20_000
MAX_TEXT = 2000


def _str_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"'{name}' must be a string or a list of strings")
    return list(value)


def parse_target(raw: Any) -> Target:
    """Targets: "all", a session id, a list of ids, or a filter object.

    Filter object keys: `session_ids`, `status` (one or a list), `group`, `search`, `all`.
    """
    if raw == "all":
        return Target(all=True)
    if isinstance(raw, str):
        return Target(session_ids=[raw])
    if isinstance(raw, list):
        ids = _str_list(raw, "target")
        if not ids:
            raise BadRequest("'target' lists no sessions")
        if len(ids) > MAX_TARGET_IDS:
            raise BadRequest(f"at most {MAX_TARGET_IDS} sessions per command")
        return Target(session_ids=ids)
    if not isinstance(raw, dict):
        raise BadRequest("'target' must be \"all\", a session id, a list of ids or a filter")
    unknown = set(raw) - {"session_ids", "session_id", "status", "group", "search", "all"}
    if unknown:
        raise BadRequest(f"unknown target keys: {sorted(unknown)}")
    target = Target()
    if "session_id" in raw:
        target.session_ids = _str_list(raw["session_id"], "session_id")
    if "session_ids" in raw:
        target.session_ids = _str_list(raw["session_ids"], "session_ids")
    if "status" in raw:
        statuses = _str_list(raw["status"], "status")
        valid = {s.value for s in Status}
        bad = [s for s in statuses if s not in valid]
        if bad:
            raise BadRequest(f"unknown status {bad}; expected one of {sorted(valid)}")
        target.status = statuses
    for key in ("group", "search"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise BadRequest(f"'{key}' must be a string")
            setattr(target, key, raw[key])
    if "all" in raw:
        if not isinstance(raw["all"], bool):
            raise BadRequest("'all' must be true or false")
        target.all = raw["all"]
    if target.session_ids is None and not target.is_filter:
        raise BadRequest('the target selects nothing: give ids, a filter or "all"')
    return target


def parse_action(raw: Any) -> Action:
    try:
        return Action(raw)
    except ValueError:
        raise BadRequest(
            f"unknown action {raw!r}; expected one of {[a.value for a in Action]}",
            ErrorCode.UNKNOWN_ACTION,
        ) from None


def parse_command(body: Any) -> tuple[Action, Target, dict[str, Any]]:
    if not isinstance(body, dict):
        raise BadRequest("a command must be an object")
    if "action" not in body:
        raise BadRequest("a command needs an 'action'")
    if "target" not in body:
        raise BadRequest("a command needs a 'target'")
    action = parse_action(body["action"])
    target = parse_target(body["target"])
    params: dict[str, Any] = {}
    reason = body.get("reason")
    if reason is not None:
        if not isinstance(reason, str) or len(reason) > MAX_TEXT:
            raise BadRequest(f"'reason' must be a string of at most {MAX_TEXT} characters")
        params["reason"] = reason
    if action is Action.REOPEN and not params.get("reason", "").strip():
        raise BadRequest("reopen needs a 'reason' (kept in the session's history and the audit)")
    category = body.get("reason_category")
    if category is not None:
        # Checked against the deployment's tree by the service (`realtime.reasons`).
        if not isinstance(category, str) or not 1 <= len(category) <= MAX_CATEGORY_LENGTH:
            raise BadRequest(
                f"'reason_category' must be a string of 1..{MAX_CATEGORY_LENGTH} characters"
            )
        params["reason_category"] = category
    if action in (Action.EXTEND, Action.REDUCE):
        minutes = body.get("minutes")
        if (
            not isinstance(minutes, int)
            or isinstance(minutes, bool)
            or not 1 <= minutes <= MAX_EXTEND_MINUTES
        ):
            raise BadRequest(
                f"{action.value} needs an integer 'minutes' 1..{MAX_EXTEND_MINUTES}"
            )
        params["minutes"] = minutes
    if action is Action.NOTICE:
        text = body.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            raise BadRequest(f"notice needs a 'text' of 1..{MAX_TEXT} characters")
        params["text"] = text
    command_id = body.get("command_id")
    if command_id is not None:
        if not isinstance(command_id, str) or not 1 <= len(command_id) <= 64:
            raise BadRequest("'command_id' must be a string of 1..64 characters")
        params["command_id"] = command_id
    return action, target, params
