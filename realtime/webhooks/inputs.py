"""What a subscription may say: checked before anything is stored (400 with the reason)."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from realtime.errors import BadRequest
from realtime.state.model import Action, EventKind

# Every kind of history event a subscription can ask for; `ping` is only sent by "send test".
EVENT_KINDS = tuple(sorted({k.value for k in EventKind} | {a.value for a in Action}))
MAX_URL = 2000
MAX_DESCRIPTION = 500
FIELDS = frozenset({"url", "exam_id", "kinds", "description", "active"})
CHANGEABLE = frozenset({"url", "kinds", "description", "active"})


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether `host` (as written in the URL) is one of `allowed`: names (case-insensitive)
    or CIDR networks that a literal address falls in. Empty `allowed`: any host."""
    if not allowed:
        return True
    host = host.lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in allowed:
        entry = entry.strip().lower()
        if address is not None and "/" in entry:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        elif host == entry:
            return True
    return False


def check_url(raw: Any, allowed: list[str]) -> str:
    """An absolute http(s) URL with a host (allowed by REALTIME_WEBHOOK_ALLOWED_HOSTS)."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("'url' must be an http:// or https:// URL")
    url = raw.strip()
    if len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in url):
        raise BadRequest(f"'url' must be a URL of at most {MAX_URL} characters, no spaces")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise BadRequest(f"'url' is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise BadRequest("'url' must be an http:// or https:// URL with a host")
    if not host_allowed(host, allowed):
        raise BadRequest(f"'url' names host {host!r}, which REALTIME_WEBHOOK_ALLOWED_HOSTS "
                         "does not allow")
    return url


def check_kinds(raw: Any) -> list[str]:
    """Event kinds to deliver, each known; empty: every kind."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
        raise BadRequest("'kinds' must be a list of event kinds (empty: every kind)")
    unknown = sorted(set(raw) - set(EVENT_KINDS))
    if unknown:
        raise BadRequest(f"unknown event kind(s) {unknown}; known: {list(EVENT_KINDS)}")
    return sorted(set(raw))


def parse_subscription(
    body: Any, allowed_hosts: list[str], *, partial: bool = False
) -> dict[str, Any]:
    """The fields of a new subscription (`partial`: the changes to one)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    known = CHANGEABLE if partial else FIELDS
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; allowed: {sorted(known)}")
    out: dict[str, Any] = {}
    if "url" in body or not partial:
        out["url"] = check_url(body.get("url"), allowed_hosts)
    if "kinds" in body or not partial:
        out["kinds"] = check_kinds(body.get("kinds"))
    if "description" in body or not partial:
        description = body.get("description", "")
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise BadRequest(f"'description' must be text of at most {MAX_DESCRIPTION} chars")
        out["description"] = description
    if "active" in body or not partial:
        active = body.get("active", True)
        if not isinstance(active, bool):
            raise BadRequest("'active' must be true or false")
        out["active"] = active
    if not partial:
        exam_id = body.get("exam_id")
        if exam_id is not None and (not isinstance(exam_id, str) or not exam_id):
            raise BadRequest("'exam_id' must be an exam id, or null for every exam")
        out["exam_id"] = exam_id
    return out
