"""Wire codecs, one per WebSocket subprotocol. A message is a dict with a `type`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from realtime.errors import BadRequest, ErrorCode
from realtime.jsonsafe import check_value, dumps, loads

MSGPACK = "realtime.v1.msgpack"
JSON = "realtime.v1.json"
SUBPROTOCOLS = (MSGPACK, JSON)


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    binary: bool

    def encode(self, message: dict[str, Any]) -> bytes | str:
        if self.binary:
            return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]
        return dumps(message).decode()  # strict: never NaN or Infinity

    def decode(self, frame: bytes | str) -> dict[str, Any]:
        """Decode one frame: BadRequest(malformed) for anything that isn't a message, and
        BadRequest(invalid) for values no message carries (`jsonsafe.check_value`)."""
        if isinstance(frame, str):
            if self.binary:
                raise BadRequest("expected a binary msgpack frame", ErrorCode.MALFORMED)
            message = loads(frame)
        else:
            if not self.binary:
                raise BadRequest("expected a text JSON frame", ErrorCode.MALFORMED)
            try:
                message = msgpack.unpackb(frame, raw=False, strict_map_key=True)
            except Exception as exc:
                raise BadRequest(f"cannot decode frame: {exc}", ErrorCode.MALFORMED) from exc
        if not isinstance(message, dict):
            raise BadRequest("a message must be a map", ErrorCode.MALFORMED)
        if not isinstance(message.get("type"), str):
            raise BadRequest("a message needs a string 'type'", ErrorCode.INVALID)
        if self.binary:
            check_value(message)  # JSON frames were checked by `loads`
        return message


CODECS = {MSGPACK: Codec(MSGPACK, binary=True), JSON: Codec(JSON, binary=False)}


def choose_codec(offered: list[str]) -> Codec | None:
    """The first supported subprotocol the client offered; msgpack when it offered none."""
    if not offered:
        return CODECS[MSGPACK]
    for name in offered:
        if name in CODECS:
            return CODECS[name]
    return None


class Encoded:
    """A message encoded at most once per codec, however many sockets it goes to."""

    __slots__ = ("_frames", "message")

    def __init__(self, message: dict[str, Any]) -> None:
        self.message = message
        self._frames: dict[str, bytes | str] = {}

    def frame(self, codec: Codec) -> bytes | str:
        frame = self._frames.get(codec.name)
        if frame is None:
            frame = codec.encode(self.message)
            self._frames[codec.name] = frame
        return frame
