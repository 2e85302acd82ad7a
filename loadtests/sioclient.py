"""A lean socket.io client for the benchmark's peer: engine.io v4 over the websocket transport.

`/socket.io/?EIO=4&transport=websocket`, text frames only: the server opens with
`0{"sid", "pingInterval", ...}`, the client connects the default namespace with `40{auth}`
(answer `40{"sid"}`, or `44{...}` when refused), events are `42["name", data]`, the server
pings with `2` and the client answers `3`. Built on `loadtests.wsclient.WsPeer`: no task and no
queue per socket, so one process holds thousands of them; `reader` (a shared
`loadtests.wsclient.ReadFirst`) stamps each chunk as it is read and parses it later, as for
the real server's candidates.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from loadtests.wsclient import ReadFirst, WsPeer

OnEvent = Callable[["SioPeer", str, Any], None]
OnClose = Callable[["SioPeer"], None]
PATH = "/socket.io/?EIO=4&transport=websocket"


def _ignore(peer: WsPeer, message: dict[str, Any]) -> None:
    return None


class SioPeer(WsPeer):
    """One socket.io client socket; `on_event(peer, name, data)` per event, pings answered."""

    def __init__(self, url: str, on_event: OnEvent, auth: dict[str, Any],
                 on_close: OnClose | None = None, deflate: bool = False,
                 reader: ReadFirst | None = None) -> None:
        super().__init__(url, "", _ignore, on_close=on_close,  # type: ignore[arg-type]
                         deflate=deflate, reader=reader)
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        self.ws = ClientProtocol(parse_uri(url), max_size=256 * 1024 * 1024,
                                 extensions=extensions)
        self.on_event = on_event
        self.auth = auth
        self.connected: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pings = 0

    def on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT:
            self.received += 1
            self._packet(bytes(frame.data).decode())

    def _lost(self, exc: Exception | None, at: float) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(f"connection lost: {exc!r}"))
        super()._lost(exc, at)

    def _packet(self, text: str) -> None:
        kind = text[:1]
        if kind == "2":  # engine.io ping
            self.pings += 1
            self.send_raw("3")
            self.on_event(self, "ping", None)
        elif kind == "4":  # engine.io message = a socket.io packet
            sio_kind, body = text[1:2], text[2:]
            if sio_kind == "2":  # EVENT
                name, *rest = json.loads(body)
                self.on_event(self, name, rest[0] if rest else None)
            elif sio_kind == "0":  # CONNECT answered
                if not self.connected.done():
                    self.connected.set_result(json.loads(body).get("sid", "") if body else "")
            elif sio_kind == "4":  # CONNECT_ERROR
                if not self.connected.done():
                    self.connected.set_exception(ConnectionRefusedError(body))
            elif sio_kind == "1":  # DISCONNECT
                self.close()
        elif kind == "0":  # engine.io open: connect the default namespace
            self.send_raw("40" + json.dumps(self.auth, separators=(",", ":")))
        elif kind == "1":  # engine.io close
            self.close()

    def send_raw(self, text: str) -> bool:
        if self.closed or self.ws.state is not State.OPEN:
            return False
        self.ws.send_text(text.encode())
        self.sent += 1
        self._flush()
        return True

    def emit(self, name: str, data: Any) -> bool:
        return self.send_raw("42" + json.dumps([name, data], separators=(",", ":")))

    def send(self, message: dict[str, Any]) -> bool:
        """A realtime-style message `{"type": t, ...}` as the socket.io event `t`."""
        body = {k: v for k, v in message.items() if k != "type"}
        return self.emit(str(message.get("type", "message")), body)


async def connect_sio(
    base_url: str,
    on_event: OnEvent,
    auth: dict[str, Any],
    *,
    on_close: OnClose | None = None,
    deflate: bool = False,
    timeout: float = 30.0,
    reader: ReadFirst | None = None,
) -> SioPeer:
    """Open `base_url` (`http://host:port`) and connect the default namespace with `auth`."""
    parts = urlsplit(base_url)
    url = f"ws://{parts.hostname}:{parts.port or 80}{PATH}"
    loop = asyncio.get_running_loop()
    peer = SioPeer(url, on_event, auth, on_close=on_close, deflate=deflate, reader=reader)
    async with asyncio.timeout(timeout):
        await loop.create_connection(lambda: peer, parts.hostname or "127.0.0.1", parts.port or 80)
        await peer.handshake
        await peer.connected
    return peer
