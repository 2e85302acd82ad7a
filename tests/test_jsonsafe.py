"""Strict JSON out, checked values in (`realtime.jsonsafe`), and the codecs built on it."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest

from realtime.channels.codec import CODECS, JSON, MSGPACK
from realtime.errors import BadRequest, ErrorCode
from realtime.jsonsafe import MAX_DEPTH, JSONResponse, check_value, dumps, loads


def strict(text: str | bytes) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"non-standard token {token!r}")

    return json.loads(text, parse_constant=refuse)


STORED = {"rtt_ms": math.inf, "low": -math.inf, "nan": math.nan, "big": 10**30,
          "nested": [{"x": math.inf}], "ok": 1.5}


def test_dumps_writes_non_finite_numbers_as_null() -> None:
    """Data already stored with Infinity or NaN encodes as standard JSON (null), never fails."""
    assert strict(dumps(STORED)) == {"rtt_ms": None, "low": None, "nan": None, "big": 10**30,
                                     "nested": [{"x": None}], "ok": 1.5}


def test_json_responses_and_json_frames_are_strict() -> None:
    """Every REST answer and every JSON WebSocket frame goes through the strict encoder."""
    assert strict(JSONResponse(STORED).body)["rtt_ms"] is None
    frame = CODECS[JSON].encode({"type": "event", **STORED})
    assert isinstance(frame, str)
    assert strict(frame)["nested"] == [{"x": None}]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('{"t": NaN}', ErrorCode.INVALID),
        ('{"t": Infinity}', ErrorCode.INVALID),
        ('{"t": -Infinity}', ErrorCode.INVALID),
        ('{"t": 1e400}', ErrorCode.INVALID),
        ('{"t": -1e308}', ErrorCode.INVALID),
        ('{"t": 9007199254740992}', ErrorCode.INVALID),
        ('{"t": "a\\u0000b"}', ErrorCode.INVALID),
        ('{"a\\u0000": 1}', ErrorCode.INVALID),
        ("[" * 40 + "]" * 40, ErrorCode.INVALID),
        ("[" * 5000 + "]" * 5000, ErrorCode.MALFORMED),
        ("{nope", ErrorCode.MALFORMED),
        ('"\\ud800"', ErrorCode.MALFORMED),
    ],
)
def test_loads_refuses_what_no_message_carries(text: str, code: ErrorCode) -> None:
    """Non-finite or unsafe numbers, NUL and deep nesting are `invalid`; non-JSON `malformed`."""
    with pytest.raises(BadRequest) as caught:
        loads(text)
    assert caught.value.code == code
    assert caught.value.message


def test_loads_accepts_ordinary_values() -> None:
    value = loads('{"t": 1795460149.924221, "n": -9007199254740991, "s": "é ☃", "l": [[]]}')
    assert value["n"] == -(2**53 - 1)
    check_value(json.loads("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)))


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -1e308, 2**63, -(2**63), b"bytes", msgpack.Timestamp(1, 0), "a\x00"],
)
def test_msgpack_frames_are_checked_like_json(value: Any) -> None:
    """msgpack carries NaN, 64-bit integers, bytes and extensions: all `invalid`."""
    frame = msgpack.packb({"type": "pong", "t": value}, use_bin_type=True, datetime=False)
    with pytest.raises(BadRequest) as caught:
        CODECS[MSGPACK].decode(frame)
    assert caught.value.code == ErrorCode.INVALID


def test_msgpack_map_keys_must_be_strings() -> None:
    frame = msgpack.packb({"type": "pong", b"t": 1}, use_bin_type=True)
    with pytest.raises(BadRequest) as caught:
        CODECS[MSGPACK].decode(frame)
    assert caught.value.code == ErrorCode.INVALID
