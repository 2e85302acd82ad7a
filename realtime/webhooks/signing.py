"""Signatures of webhook deliveries: `X-Realtime-Signature: t=<unix>,v1=<hex>`.

`v1` is HMAC-SHA256, keyed with the subscription's secret, over `"<t>.<body>"` (the raw body
bytes). The timestamp is signed with the body, so a receiver that refuses old timestamps
refuses replays; it is renewed on every attempt. Receivers verify as `verify` does
(docs/webhooks.md shows the same in a few lines of standard-library Python).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SIGNATURE_HEADER = "X-Realtime-Signature"
DELIVERY_HEADER = "X-Realtime-Delivery"
EVENT_HEADER = "X-Realtime-Event"
TOLERANCE = 300  # seconds a receiver should accept between `t` and its own clock


def new_secret() -> str:
    """A fresh subscription secret (256 bits)."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, now: float, tolerance: float = TOLERANCE
) -> bool:
    """Whether `header` signs `body` with `secret` at a time within `tolerance` of `now`."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    return hmac.compare_digest(expected, parts.get("v1", ""))
