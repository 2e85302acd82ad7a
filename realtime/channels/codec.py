"""Wire codecs, one per WebSocket subprotocol. A message is a dict with a `type`."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import msgpack

from realtime.channels.direct import framed
from realtime.errors import BadRequest, ErrorCode
from realtime.jsonsafe import check_value, dumps, loads

MSGPACK = "realtime.v1.msgpack"
JSON = "realtime.v1.json"
SUBPROTOCOLS = (MSGPACK, JSON)


_local = threading.local()


def pack(value: Any) -> bytes:
    """`msgpack.packb(value, use_bin_type=True)`, with a `Packer` kept per thread: `packb`
    builds a new one per call, which costs more than packing a small message (~2.5 us)."""
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(value)  # type: ignore[no-any-return]  # resets itself, even on errors


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    binary: bool

    def encode(self, message: dict[str, Any]) -> bytes | str:
        if self.binary:
            return pack(message)
        return dumps(message).decode()  # strict: never NaN or Infinity

    def encode_value(self, value: Any) -> bytes | str:
        """One value as `encode` writes it inside a message: both encodings are context-free
        (no indentation, no shared state), so a message's frame is its parts joined."""
        if self.binary:
            return pack(value)
        return dumps(value).decode()

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
    """A message encoded at most once per codec, however many sockets it goes to; and framed
    (`wire`) at most once per codec, for the sockets it is written to directly."""

    __slots__ = ("_frames", "_message", "_wires")

    def __init__(self, message: dict[str, Any]) -> None:
        self._message = message
        self._frames: dict[str, bytes | str] = {}
        self._wires: dict[str, bytes] | None = None  # made by the first `wire`

    @property
    def message(self) -> dict[str, Any]:
        return self._message

    def frame(self, codec: Codec) -> bytes | str:
        frame = self._frames.get(codec.name)
        if frame is None:
            frame = codec.encode(self._message)
            self._frames[codec.name] = frame
        return frame

    def wire(self, codec: Codec) -> bytes:
        """The whole WebSocket frame carrying `frame(codec)`, as the server would write it
        (`realtime.channels.direct.framed`)."""
        wires = self._wires
        if wires is None:
            wires = self._wires = {}
        else:
            data = wires.get(codec.name)
            if data is not None:
                return data
        data = wires[codec.name] = framed(self.frame(codec))
        return data


# Stands for a hole's value while a template is encoded; never part of a real message.
_SENTINEL = "\x00\x01realtime-splice-{}\x01\x00"


class Template:
    """Messages that differ only in a few values of one inner map (say every candidate's
    `command` of a bulk command, which differ in the session's `version`): encoded once per
    codec with holes at those values, so each message's frame is the parts joined with its
    own values encoded (`Spliced`). A frame built this way decodes to the same message as
    the message encoded whole (the values are encoded by the same encoder; maps keep the
    template's key order)."""

    __slots__ = ("_heads", "_parts", "keys", "message", "where")

    def __init__(self, message: dict[str, Any], where: str, keys: tuple[str, ...]) -> None:
        self.message = message  # any of the messages: its values at the holes are not used
        self.where = where  # the key of the inner map holding the holes
        self.keys = keys  # the keys of the holes in it
        # codec name -> (the frame's parts around the holes, which hole each gap takes);
        # None where the holes could not be found exactly once: encode whole.
        self._parts: dict[str, tuple[list[Any], tuple[int, ...]] | None] = {}
        # (binary, payload length) -> the WebSocket frame's header for such a payload: the
        # messages differ in a few values, so their frames in a few lengths (`wire`)
        self._heads: dict[tuple[bool, int], bytes] = {}

    def wire(self, payload: bytes | str) -> bytes:
        """`direct.framed(payload)`, websockets' serialisation made once per payload length
        (and kind): a server's unmasked data frame is a header that depends on nothing else,
        then the payload."""
        data = payload if isinstance(payload, bytes) else payload.encode()
        key = (data is payload, len(data))
        head = self._heads.get(key)
        if head is not None:
            return head + data
        whole = framed(payload)
        self._heads[key] = whole[: len(whole) - len(data)]
        return whole

    def fill(self, values: tuple[Any, ...]) -> dict[str, Any]:
        """The whole message with these values in its holes."""
        message = dict(self.message)
        inner = message[self.where] = dict(message[self.where])
        for key, value in zip(self.keys, values, strict=True):
            inner[key] = value
        return message

    def parts(self, codec: Codec) -> tuple[list[Any], tuple[int, ...]] | None:
        try:
            return self._parts[codec.name]
        except KeyError:
            pass
        sentinels = tuple(_SENTINEL.format(i) for i in range(len(self.keys)))
        frame = codec.encode(self.fill(sentinels))
        found: list[tuple[int, int, int]] = []  # (where, length, hole)
        for hole, sentinel in enumerate(sentinels):
            token = codec.encode_value(sentinel)
            at = frame.find(token)  # type: ignore[arg-type]  # both bytes or both str
            if at < 0 or frame.find(token, at + 1) >= 0:  # type: ignore[arg-type]
                found = []
                break
            found.append((at, len(token), hole))
        result: tuple[list[Any], tuple[int, ...]] | None = None
        if found:
            found.sort()
            parts, start = [], 0
            for at, length, _ in found:
                parts.append(frame[start:at])
                start = at + length
            parts.append(frame[start:])
            result = (parts, tuple(hole for _, _, hole in found))
        self._parts[codec.name] = result
        return result


class Spliced(Encoded):
    """One message of a `Template`: its frame is the template's parts joined with this
    message's own values, without building or encoding the message."""

    __slots__ = ("_template", "_values")

    def __init__(self, template: Template, values: tuple[Any, ...]) -> None:
        # No frame cache (nor the base class's message): one of these goes to one socket.
        self._template = template
        self._values = values

    @property
    def message(self) -> dict[str, Any]:  # built only when asked for (tests, event streams)
        return self._template.fill(self._values)

    def frame(self, codec: Codec) -> bytes | str:
        found = self._template.parts(codec)
        if found is None:
            return codec.encode(self.message)
        parts, holes = found
        values, encode = self._values, codec.encode_value
        if len(holes) == 1:
            return parts[0] + encode(values[holes[0]]) + parts[1]  # type: ignore[no-any-return]
        pieces = [parts[0]]
        for gap, hole in enumerate(holes, 1):
            pieces += (encode(values[hole]), parts[gap])
        return pieces[0][:0].join(pieces)  # type: ignore[no-any-return]

    def wire(self, codec: Codec) -> bytes:
        return self._template.wire(self.frame(codec))  # one socket: nothing to keep
