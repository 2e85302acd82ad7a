"""Strict JSON in and out, and the one check every client value passes.

Out: `dumps` never writes a non-standard token (`NaN`, `Infinity`): a non-finite float becomes
`null`, so nothing already stored can make an answer fail or a JSON client choke. In: `loads`
and `check_value` refuse what no valid message carries, whatever the codec (msgpack can carry
NaN, 2**64, bytes and NUL as well as JSON can): non-finite or unsafe numbers, NUL characters
(PostgreSQL cannot store them), deep nesting, non-string keys and non-JSON types.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse

from realtime.errors import BadRequest, ErrorCode

MAX_SAFE_INTEGER = 2**53 - 1  # the largest integer a JavaScript client reads exactly
MAX_DEPTH = 32  # lists and maps inside each other; real messages nest 3 deep


def dumps(value: Any) -> bytes:
    """Standard JSON (UTF-8). Non-finite floats become null; unknown types their `str`."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):  # e.g. an integer beyond 64 bits
        text = json.dumps(_finite(value), default=str, allow_nan=False, separators=(",", ":"))
        return text.encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


def loads(data: bytes | str) -> Any:
    """Parse standard JSON and `check_value` it.

    Raises BadRequest: `malformed` for text that is not JSON, `invalid` for a non-standard
    number token (NaN, Infinity, 1e400) or a value `check_value` refuses.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # Only on the error path: tell a bad number (invalid) from text that is not JSON.
        try:
            lenient = json.loads(data, parse_constant=_refuse_constant)
            non_finite = _finite(lenient) != lenient  # 1e400 parses as inf here
        except _NonFinite:
            non_finite = True
        except Exception:
            non_finite = False
        if non_finite:
            raise BadRequest("numbers must be finite", ErrorCode.INVALID) from None
        raise BadRequest(f"not valid JSON: {exc}", ErrorCode.MALFORMED) from None
    check_value(value)
    return value


def check_value(value: Any, depth: int = 0) -> None:
    """Raise BadRequest(invalid) unless `value` is plain JSON data a client may send.

    Numbers finite and within ±(2**53 - 1), strings without NUL, map keys strings, at most
    MAX_DEPTH levels of lists and maps, and no other types (no bytes or msgpack extensions).
    """
    if isinstance(value, str):
        if "\x00" in value:
            raise BadRequest("strings must not contain NUL characters")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise BadRequest(f"integers must be within ±{MAX_SAFE_INTEGER}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest("numbers must be finite")
        if abs(value) > MAX_SAFE_INTEGER:
            raise BadRequest(f"numbers must be within ±{MAX_SAFE_INTEGER}")
    elif isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise BadRequest(f"values nest at most {MAX_DEPTH} levels deep")
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadRequest("map keys must be strings")
            if "\x00" in key:
                raise BadRequest("strings must not contain NUL characters")
            check_value(item, depth + 1)
    elif isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise BadRequest(f"values nest at most {MAX_DEPTH} levels deep")
        for item in value:
            check_value(item, depth + 1)
    else:
        raise BadRequest(f"values must be JSON data, not {type(value).__name__}")


class JSONResponse(StarletteJSONResponse):
    """Every JSON answer of the API: strict standard JSON (see `dumps`), and fast (orjson)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
