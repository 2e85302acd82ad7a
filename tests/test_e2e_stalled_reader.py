"""A candidate that stops reading its socket is cut off by the send deadline, end to end.

A real uvicorn server, a real candidate page that keeps reading, and a hostile one that opens
its session, then never reads again (a tiny receive buffer, reading paused) while it keeps
sending pongs so the heartbeat sees it alive. Staff push notices to it through the REST API.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack
import pytest
from clients import MSGPACK, Api, LiveCandidate, eventually, open_candidate
from server import ServerProcess
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

SEND_TIMEOUT = 1.0  # the server's deadline for a send in this test
TCP_ESTABLISHED = 1  # tcpi_state in struct tcp_info (linux/tcp.h)
NOTICE_TEXT = "Please stay seated until the end of the exam. " * 40  # 1,840 characters per command
MAX_NOTICES = 4000  # bound of the push loop (the stalled socket is cut off long before)


@pytest.fixture(scope="module")
def stalling_server() -> Iterator[ServerProcess]:
    process = ServerProcess(send_timeout=SEND_TIMEOUT)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def api(stalling_server: ServerProcess) -> AsyncIterator[Api]:
    client = Api(stalling_server.url)
    yield client
    await client.close()


class StalledReader(asyncio.Protocol):
    """A candidate page that reads until its session is open and never again."""

    def __init__(self, url: str) -> None:
        self.ws = ClientProtocol(parse_uri(url), subprotocols=[Subprotocol(MSGPACK)])
        self.transport: Any = None
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.opened: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.lost = asyncio.Event()

    @classmethod
    async def open(cls, ws_url: str, access_code: str) -> StalledReader:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        host, port = ws_url.removeprefix("ws://").split(":")
        await loop.sock_connect(sock, (host, int(port)))
        url = f"{ws_url}/ws/candidate"
        _, peer = await loop.create_connection(lambda: cls(url), sock=sock)
        await asyncio.wait_for(peer.handshake, 10)
        peer.send({"type": "open", "access_code": access_code})
        await asyncio.wait_for(peer.opened, 10)
        peer.transport.pause_reading()  # from now on nothing is read: the window closes
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                message = msgpack.unpackb(bytes(event.data), raw=False)
                if message["type"] == "opened" and not self.opened.done():
                    self.opened.set_result(message)
            elif isinstance(event, Response) and not self.handshake.done():
                if self.ws.handshake_exc is not None:
                    self.handshake.set_exception(self.ws.handshake_exc)
                else:
                    self.handshake.set_result(None)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send_binary(msgpack.packb(message, use_bin_type=True))
        self._flush()

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            for data in self.ws.data_to_send():
                if data:
                    self.transport.write(data)

    @property
    def session_id(self) -> str:
        opened = self.opened.result()
        return str(opened["session"]["id"])

    def tcp_open(self) -> bool:
        """The TCP connection is still established (the server has not cut it off)."""
        if self.lost.is_set():
            return False
        sock = self.transport.get_extra_info("socket")
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return bool(struct.unpack("B", info[:1])[0] == TCP_ESTABLISHED)

    async def keep_answering_pings(self) -> None:
        """Send a pong every so often: to the heartbeat, the page looks alive."""
        while not self.lost.is_set():
            self.send({"type": "pong", "t": 0})
            await asyncio.sleep(0.3)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def test_a_candidate_that_stops_reading_is_cut_off_and_shown_disconnected(
    stalling_server: ServerProcess, api: Api
) -> None:
    """Past the send deadline the stalled socket is closed, its session disconnected (listed
    and in its history), commands to it are queued rather than 'sent', others carry on."""
    exam = await api.create_exam()
    stalled_session, other_session = await api.create_sessions(exam["id"], 2)
    other_client, other_opened = await open_candidate(
        stalling_server.ws_url, other_session["access_code"]
    )
    other = LiveCandidate(other_client, other_opened)
    stalled = await StalledReader.open(stalling_server.ws_url, stalled_session["access_code"])
    pongs = asyncio.create_task(stalled.keep_answering_pings())
    try:
        deliveries: list[str] = []
        for _ in range(MAX_NOTICES):
            result = await api.command(
                exam["id"], action="notice", target=stalled.session_id, text=NOTICE_TEXT
            )
            [applied] = result["applied"]
            deliveries.append(applied["delivery"])
            if applied["delivery"] != "sent":
                break
        assert deliveries[-1] == "queued", f"still 'sent' after {len(deliveries)} notices"

        await eventually(lambda: not stalled.tcp_open(), timeout=30)

        async def listed_disconnected() -> bool:
            response = await api.http.get(f"/api/v1/exams/{exam['id']}/sessions")
            state = {s["id"]: s for s in response.json()["sessions"]}
            return (
                state[stalled.session_id]["connected"] is False
                and state[other.session_id]["connected"] is True
            )

        await eventually(listed_disconnected, timeout=10)
        history = await api.history(exam["id"], stalled.session_id)
        assert [e["details"] for e in history if e["kind"] == "disconnected"] == [
            {"reason": "close 4008", "incidents": ["dropped"]}  # cut off: a drop for staff
        ]
        metrics = (await api.http.get("/metrics")).text
        assert "realtime_send_deadline_aborts 1.0" in metrics

        result = await api.command(
            exam["id"], action="notice", target=other.session_id, text="still here"
        )
        assert [a["delivery"] for a in result["applied"]] == ["sent"]
        await eventually(
            lambda: [c for c in other.commands("notice") if c["session"]["notice"] == "still here"]
        )
        assert not other.closed
    finally:
        pongs.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pongs
        stalled.close()
        await other.close()
