"""Real WebSocket and HTTP clients for end-to-end tests, speaking both subprotocols."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from typing import Any

import httpx
import msgpack
from server import STAFF_TOKEN
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

MSGPACK = "realtime.v1.msgpack"
JSON = "realtime.v1.json"
TIMEOUT = 10.0
TCP_ESTABLISHED = 1  # tcpi_state in struct tcp_info (linux/tcp.h)


class Api:
    def __init__(self, base_url: str, token: str = STAFF_TOKEN) -> None:
        # uvicorn closes a keep-alive connection idle for 5 s, and httpx keeps one for 5 s
        # too: a request sent on it just then meets the server's close ("Server disconnected
        # without sending a response", seen in a browser test between two steps). The client
        # lets go first.
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            limits=httpx.Limits(keepalive_expiry=1.0),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def create_exam(self, **fields: Any) -> dict[str, Any]:
        body = {"title": "Test exam", **fields}
        response = await self.http.post("/api/v1/exams", json=body)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    async def create_sessions(self, exam_id: str, count: int, **extra: Any) -> list[dict[str, Any]]:
        candidates = [
            {"candidate_id": f"cand-{i}", "name": f"Candidate {i}", **extra} for i in range(count)
        ]
        response = await self.http.post(
            f"/api/v1/exams/{exam_id}/sessions", json={"candidates": candidates}
        )
        assert response.status_code == 201, response.text
        sessions: list[dict[str, Any]] = response.json()["sessions"]
        return sessions

    async def command(self, exam_id: str, **body: Any) -> dict[str, Any]:
        response = await self.http.post(f"/api/v1/exams/{exam_id}/commands", json=body)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def session(self, exam_id: str, session_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/v1/exams/{exam_id}/sessions/{session_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def history(self, exam_id: str, session_id: str) -> list[dict[str, Any]]:
        """The session's whole history, following the pages (1,000 events each)."""
        events: list[dict[str, Any]] = []
        url: str | None = f"/api/v1/exams/{exam_id}/sessions/{session_id}/history"
        while url:
            response = await self.http.get(url)
            assert response.status_code == 200, response.text
            page = response.json()
            events += page["events"]
            url = page.get("next")
        return events


class WsClient:
    """A WebSocket peer that decodes frames and waits for messages by type."""

    def __init__(self, ws: ClientConnection, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.received: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []  # unpacked deltas not yet looked at

    @classmethod
    async def connect(cls, url: str, protocol: str = MSGPACK, **kwargs: Any) -> WsClient:
        ws = await connect(url, subprotocols=[protocol], max_size=4 * 1024 * 1024, **kwargs)  # type: ignore[list-item]
        return cls(ws, protocol)

    def encode(self, message: dict[str, Any]) -> bytes | str:
        if self.protocol == MSGPACK:
            return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]
        return json.dumps(message)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(self.encode(message))

    async def send_raw(self, frame: bytes | str) -> None:
        await self.ws.send(frame)

    async def recv_any(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        if self._pending:
            return self._pending.pop(0)
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(frame, bytes):
            assert self.protocol == MSGPACK, "binary frame on the JSON subprotocol"
            message = msgpack.unpackb(frame, raw=False)
        else:
            assert self.protocol == JSON, "text frame on the msgpack subprotocol"
            message = json.loads(frame)
        self.received.append(message)
        return message  # type: ignore[no-any-return]

    async def recv(self, *types: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next message of one of `types`; others (pings, unrelated events) are kept aside."""
        skipped: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await self.recv_any(timeout)
                    if message["type"] in types:
                        return message
                    if message["type"] == "ping":
                        # The server may have closed since (e.g. after `superseded`): the
                        # frames it sent before its close are still to be read, so a pong
                        # that cannot go out is no reason to stop reading.
                        with contextlib.suppress(ConnectionClosed):
                            await self.send({"type": "pong", "t": message["t"]})
                        continue
                    skipped.append(message)
        finally:
            self._pending = skipped + self._pending

    async def recv_event(
        self, kind: str, session_id: str | None = None, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The next dashboard delta of `kind` (for `session_id`), skipping other deltas.

        Deltas come one by one (`event`) or in bursts (`event_batch`); both are unpacked."""
        async with asyncio.timeout(timeout):
            while True:
                if not self._events:
                    message = await self.recv("event", "event_batch", timeout=timeout)
                    if message["type"] == "event":
                        self._events.append(message["event"])
                    else:
                        self._events.extend(message["events"])
                event: dict[str, Any] = self._events.pop(0)
                if event["kind"] == kind and session_id in (None, event["session_id"]):
                    return event

    async def wait_closed(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes; returns the close code."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
        return None

    async def close(self) -> None:
        await self.ws.close()


async def open_candidate(
    ws_url: str, access_code: str, protocol: str = MSGPACK, *, timeout: float = TIMEOUT,
    **fields: Any
) -> tuple[WsClient, dict[str, Any]]:
    """Connect and open; returns the client and the `opened` or `refused` reply (waited for
    up to `timeout` seconds)."""
    client = await WsClient.connect(f"{ws_url}/ws/candidate", protocol)
    await client.send({"type": "open", "access_code": access_code, **fields})
    reply = await client.recv("opened", "refused", timeout=timeout)
    return client, reply


async def watch(
    ws_url: str,
    exam_id: str,
    protocol: str = MSGPACK,
    last_seq: int | None = None,
    token: str = STAFF_TOKEN,
) -> tuple[WsClient, dict[str, Any]]:
    client = await WsClient.connect(
        f"{ws_url}/ws/proctor", protocol, additional_headers={"Authorization": f"Bearer {token}"}
    )
    message: dict[str, Any] = {"type": "subscribe", "exam_id": exam_id}
    if last_seq is not None:
        message["last_seq"] = last_seq
    await client.send(message)
    reply = await client.recv("snapshot", "events", "error")
    return client, reply


# -- helpers for fault tests: polling, live candidates and dashboards that keep reading ----------


async def eventually(check: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll `check()` (sync or async) until it returns something truthy; return that value.

    Bounded: fails with the last value (or exception) after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
            if last:
                return last
        except AssertionError as exc:
            last = exc
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last: {last!r}")
        await asyncio.sleep(interval)


async def metric(base_url: str, name: str) -> float:
    """One plain (unlabelled) sample of a server's /metrics."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        for line in (await http.get("/metrics")).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def healthz(base_url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        response = await http.get("/healthz")
        return response.status_code, response.json()


class LiveCandidate:
    """An open candidate page that keeps reading: answers pings, acks commands (optionally),
    and records every message and how the socket ended."""

    def __init__(self, client: WsClient, opened: dict[str, Any], ack: bool = True) -> None:
        self.client = client
        self.opened = opened
        self.ack = ack
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.closed = False
        self._task = asyncio.create_task(self._run())

    @property
    def resume_token(self) -> str:
        return str(self.opened["resume_token"])

    @property
    def session_id(self) -> str:
        return str(self.opened["session"]["id"])

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def commands(self, action: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.of_type("command") if action in (None, m["action"])]

    async def _run(self) -> None:
        try:
            while True:
                message = await self.client.recv_any(timeout=3600)
                self.messages.append(message)
                # A send fails once the server's close frame is in, while frames sent before it
                # (e.g. `superseded`) may still wait to be read: keep reading until recv fails.
                with contextlib.suppress(ConnectionClosed):
                    if message["type"] == "ping":
                        await self.client.send({"type": "pong", "t": message["t"]})
                    elif message["type"] == "command" and self.ack:
                        await self.client.send(
                            {"type": "ack", "command_id": message["command_id"]}
                        )
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
        finally:
            self.closed = True

    async def send(self, message: dict[str, Any]) -> None:
        await self.client.send(message)

    async def close(self) -> None:
        await self.client.close()
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


class LiveDashboard:
    """A dashboard that records every delta (event and event_batch) in arrival order."""

    def __init__(self, client: WsClient, first: dict[str, Any]) -> None:
        self.client = client
        self.first = first
        self.start_seq = int(first["seq"])
        self.events: list[dict[str, Any]] = []
        self.other: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.closed = False
        self._task = asyncio.create_task(self._run())

    @classmethod
    async def watch(cls, ws_url: str, exam_id: str) -> LiveDashboard:
        client, first = await watch(ws_url, exam_id)
        assert first["type"] == "snapshot", first
        return cls(client, first)

    @property
    def seqs(self) -> list[int]:
        return [int(e["seq"]) for e in self.events]

    @property
    def last_seq(self) -> int:
        return self.events[-1]["seq"] if self.events else self.start_seq

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]

    async def _run(self) -> None:
        try:
            while True:
                message = await self.client.recv_any(timeout=3600)
                if message["type"] == "event":
                    self.events.append(message["event"])
                elif message["type"] == "event_batch":
                    self.events.extend(message["events"])
                else:
                    self.other.append(message)
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
        finally:
            self.closed = True

    async def close(self) -> None:
        await self.client.close()
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


class PausedReader(asyncio.Protocol):
    """A candidate page (msgpack) that stops reading once its session is open: a raw socket
    with a tiny receive window, websockets' sans-io client on it, reading paused after
    `opened` until `transport.resume_reading()`. It records the messages it reads."""

    def __init__(self, url: str) -> None:
        self.ws = ClientProtocol(parse_uri(url), subprotocols=[Subprotocol(MSGPACK)])
        self.transport: Any = None
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.opened: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.messages: list[dict[str, Any]] = []
        self.lost = asyncio.Event()

    @classmethod
    async def open(cls, ws_url: str, access_code: str) -> PausedReader:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        host, port = ws_url.removeprefix("ws://").split(":")
        await loop.sock_connect(sock, (host, int(port)))
        url = f"{ws_url}/ws/candidate"
        _, peer = await loop.create_connection(lambda: cls(url), sock=sock)
        await asyncio.wait_for(peer.handshake, TIMEOUT)
        peer.send({"type": "open", "access_code": access_code})
        await asyncio.wait_for(peer.opened, TIMEOUT)
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
                self.messages.append(message)
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

    def commands(self, action: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages
                if m["type"] == "command" and action in (None, m["action"])]

    def tcp_open(self) -> bool:
        """The TCP connection is still established (the server has not cut it off)."""
        if self.lost.is_set():
            return False
        sock = self.transport.get_extra_info("socket")
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return bool(struct.unpack("B", info[:1])[0] == TCP_ESTABLISHED)

    async def keep_answering(self, pong: dict[str, Any]) -> None:
        """Send `pong` every so often, so the server's heartbeat sees the page alive while it
        does not read."""
        while not self.lost.is_set():
            self.send(pong)
            await asyncio.sleep(0.3)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
