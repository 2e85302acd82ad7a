"""What the locust users, the set-up step and the benchmark share: codecs, token, small maths."""

from __future__ import annotations

import json
import math
import os
import resource
from collections.abc import Sequence
from typing import Any

import msgpack

MSGPACK = "realtime.v1.msgpack"
JSON = "realtime.v1.json"


def staff_token(explicit: str | None = None) -> str:
    """The staff token: given, else $REALTIME_STAFF_TOKEN (the server's bootstrap token)."""
    token = explicit or os.environ.get("REALTIME_STAFF_TOKEN", "")
    if not token:
        raise SystemExit("a staff token is needed: --staff-token or REALTIME_STAFF_TOKEN")
    return token


def encode(message: dict[str, Any], protocol: str = MSGPACK) -> bytes | str:
    if protocol == MSGPACK:
        blob: bytes = msgpack.packb(message, use_bin_type=True)
        return blob
    return json.dumps(message, separators=(",", ":"))


def decode(frame: bytes | str) -> dict[str, Any]:
    """A frame of either subprotocol (binary = msgpack, text = JSON)."""
    if isinstance(frame, str):
        message: dict[str, Any] = json.loads(frame)
    else:
        message = msgpack.unpackb(frame, raw=False)
    return message


def ws_url(http_url: str, path: str) -> str:
    """`http://h:p` + `/ws/candidate` -> `ws://h:p/ws/candidate` (https -> wss)."""
    base = http_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):] + path
    if base.startswith("http://"):
        return "ws://" + base[len("http://"):] + path
    return base + path


def split_hosts(raw: str | Sequence[str] | None) -> list[str]:
    if not raw:
        return []
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    return [item.strip().rstrip("/") for item in items if item.strip()]


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (pct in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def raise_nofile(wanted: int = 1_048_576) -> int:
    """Raise this process's open-files soft limit as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft
