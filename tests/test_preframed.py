"""Pre-framed writes (realtime.channels.direct): on uvicorn's websockets-sansio protocol a frame
is written to the transport directly when that is safe, and through the ASGI send otherwise.

Here on uvicorn's real protocol object and websockets' real client protocol, joined by a
transport that keeps what is written: the bytes of both paths, and each guard. The same end to
end, over real sockets, is in tests/test_e2e_preframed.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from realtime.channels import direct
from realtime.channels.codec import CODECS, JSON, MSGPACK, Encoded, Spliced, Template
from realtime.hub.connection import FRAMES, Connection


class KeptTransport(asyncio.Transport):
    """A socket's transport that keeps what is written; the protocol's flow control is
    driven by hand (`pause_writing` / `resume_writing`, as a full buffer would)."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closing = False
        self.protocol: Any = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing, "written after close"
        self.data += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return len(self.data)

    def take(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        return data


class Socket:
    """uvicorn's protocol serving one WebSocket, the app's end of it (a Starlette WebSocket,
    accepted), and a websockets client reading what the server writes."""

    def __init__(self, protocol: Any, transport: KeptTransport, client: ClientProtocol,
                 websocket: WebSocket, state: ServerState) -> None:
        self.protocol = protocol
        self.transport = transport
        self.client = client
        self.websocket = websocket
        self.state = state

    async def close(self) -> None:
        """The connection is lost; the app sees the disconnect and ends."""
        self.protocol.connection_lost(None)
        await asyncio.wait_for(asyncio.gather(*self.state.tasks), 5)

    def frames(self) -> list[Frame]:
        """What the server wrote since the last look, as the client parses it."""
        self.client.receive_data(self.transport.take())
        return [e for e in self.client.events_received() if isinstance(e, Frame)]

    def connection(self, codec: str, direct_writes: bool = True) -> Connection:
        transport = self.transport
        return Connection(self.websocket, CODECS[codec], 8, 0.0, transport,
                          direct.sansio_protocol(transport) if direct_writes else None)


async def open_socket(protocol_class: Any = WebSocketsSansIOProtocol, deflate: bool = False,
                      subprotocol: str = MSGPACK) -> Socket:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[WebSocket] = loop.create_future()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept(subprotocol=subprotocol)
        accepted.set_result(websocket)
        while (await receive())["type"] != "websocket.disconnect":
            pass

    config = uvicorn.Config(app, ws_per_message_deflate=deflate, log_level="warning",
                            lifespan="off", ws_ping_interval=None)
    config.load()
    state = ServerState()
    protocol = protocol_class(config, state, {}, _loop=loop)
    transport = KeptTransport()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    client = ClientProtocol(
        parse_uri("ws://127.0.0.1:8000/ws"), subprotocols=[Subprotocol(subprotocol)],
        extensions=[ClientPerMessageDeflateFactory()] if deflate else None)
    client.send_request(client.connect())
    protocol.data_received(b"".join(client.data_to_send()))
    websocket = await asyncio.wait_for(accepted, 5)
    client.receive_data(transport.take())
    [response] = client.events_received()
    assert isinstance(response, Response) and response.status_code == 101
    return Socket(protocol, transport, client, websocket, state)


@pytest.fixture
async def socket() -> AsyncIterator[Socket]:
    opened = await open_socket()
    yield opened
    await opened.close()


def counts() -> tuple[int, int]:
    return FRAMES.direct, FRAMES.asgi


def moved(before: tuple[int, int]) -> tuple[int, int]:
    """(direct, asgi) frames written since `before`."""
    return FRAMES.direct - before[0], FRAMES.asgi - before[1]


def bulk_messages() -> list[Encoded]:
    """Messages as a fan-out sends them: one whole, and spliced ones (a bulk command)."""
    command = {"type": "command", "command_id": "bulk-1", "action": "pause",
               "details": {"reason": "fire alarm ✓"}, "session": {"status": "paused", "version": 0},
               "at": 1.5}
    template = Template(command, "session", ("version",))
    return [Encoded(command), *(Spliced(template, (v,)) for v in (7, 300, 70_000))]


@pytest.mark.parametrize("codec", [MSGPACK, JSON])
async def test_a_direct_write_is_byte_for_byte_what_the_asgi_send_writes(
    socket: Socket, codec: str
) -> None:
    """The same messages written both ways: identical bytes on the wire, each a whole,
    unmasked binary (msgpack) or text (JSON) frame carrying the message's encoding."""
    through_asgi, directly = socket.connection(codec, False), socket.connection(codec)
    for message in bulk_messages():
        before = counts()
        assert through_asgi.send_encoded(message)
        asgi_bytes = socket.transport.take()
        assert moved(before) == (0, 1)
        before = counts()
        assert directly.send_encoded(message)
        direct_bytes = socket.transport.take()
        assert moved(before) == (1, 0)
        assert direct_bytes == asgi_bytes
        socket.transport.data += direct_bytes
        [frame] = socket.frames()
        assert frame.fin and not frame.rsv1
        payload = message.frame(CODECS[codec])
        if codec == MSGPACK:
            assert frame.opcode is Opcode.BINARY and frame.data == payload
        else:
            assert frame.opcode is Opcode.TEXT and frame.data == str(payload).encode()
        assert CODECS[codec].decode(payload) == message.message
    # a message going to many sockets is framed once per codec
    shared = Encoded({"type": "ping", "t": 1.0})
    assert shared.wire(CODECS[codec]) is shared.wire(CODECS[codec])


@pytest.mark.parametrize("codec", [MSGPACK, JSON])
def test_spliced_frames_get_websockets_own_framing_at_every_length(codec: str) -> None:
    """A bulk command's messages are framed from a header kept per payload length: the same
    bytes as websockets' serialisation of each, across its three header sizes (payloads
    under 126 bytes, under 65,536, larger) and back."""
    template = Template({"type": "command", "session": {"notice": "", "version": 1}},
                        "session", ("notice",))
    for size in (1, 30, 90, 200, 65_500, 65_536, 70_000, 90, 200, 70_000):
        message = Spliced(template, ("é" * size,))
        payload = message.frame(CODECS[codec])
        assert message.wire(CODECS[codec]) == direct.framed(payload)
        assert message.wire(CODECS[codec]) == direct.framed(payload)  # from the kept header


async def test_while_the_transport_pushes_back_frames_queue_in_order_then_go_direct_again(
    socket: Socket,
) -> None:
    """Paused writing: the frame goes through the ASGI send (which waits), the next one queues
    behind it, neither is written directly; once writing resumes both go out in order, and
    the frame after them is written directly again."""
    conn = socket.connection(MSGPACK)
    before = counts()
    socket.protocol.pause_writing()  # what the transport does above its high-water mark
    assert not direct.writable(socket.protocol)
    assert conn.send({"type": "notice", "n": 1})
    assert conn.send({"type": "notice", "n": 2})
    assert socket.transport.data == b""  # both wait
    assert moved(before) == (0, 2)
    socket.protocol.resume_writing()
    writer = conn._writer
    assert writer is not None
    await asyncio.wait_for(writer, 5)
    assert conn._writer is None
    assert direct.writable(socket.protocol)
    assert conn.send({"type": "notice", "n": 3})
    assert moved(before) == (1, 2)
    codec = CODECS[MSGPACK]
    assert [codec.decode(bytes(f.data))["n"] for f in socket.frames()] == [1, 2, 3]


async def test_a_frame_behind_a_queued_one_is_not_written_directly(socket: Socket) -> None:
    """Writable again, but the connection's own writer still holds a frame: the next one
    goes behind it, not past it."""
    conn = socket.connection(JSON)
    socket.protocol.pause_writing()
    assert conn.send({"type": "notice", "n": 1})
    socket.protocol.writable.set()  # writable, but the writer task has not run yet
    assert direct.writable(socket.protocol)
    before = counts()
    assert conn.send({"type": "notice", "n": 2})
    assert moved(before) == (0, 1)
    writer = conn._writer
    assert writer is not None
    await asyncio.wait_for(writer, 5)
    assert [CODECS[JSON].decode(bytes(f.data).decode())["n"] for f in socket.frames()] == [1, 2]


async def test_the_servers_close_after_direct_writes_is_a_proper_close_frame(
    socket: Socket,
) -> None:
    conn = socket.connection(MSGPACK)
    before = counts()
    assert conn.send({"type": "command", "action": "terminate"})
    conn.close(4101, "terminated")
    assert moved(before) == (1, 0)
    assert socket.protocol.close_sent
    assert not direct.writable(socket.protocol)
    assert not conn.send({"type": "late"})  # closing: nothing more
    first, close = socket.frames()
    assert CODECS[MSGPACK].decode(bytes(first.data)) == {"type": "command", "action": "terminate"}
    assert close.opcode is Opcode.CLOSE
    assert socket.client.close_rcvd is not None and socket.client.close_rcvd.code == 4101
    assert socket.client.close_rcvd.reason == "terminated"


async def test_a_socket_closed_behind_the_connections_back_gets_no_direct_write(
    socket: Socket,
) -> None:
    """uvicorn sent a close the connection does not know of (the app closed the socket
    itself): the next frame goes to the ASGI send, which refuses it; nothing follows the
    close frame on the wire."""
    conn = socket.connection(MSGPACK)
    await socket.websocket.close(1000)
    socket.transport.take()
    before = counts()
    assert conn.send({"type": "late"})
    assert moved(before) == (0, 1)
    assert conn.closing  # the ASGI send refused: gone
    assert socket.transport.data == b""


@pytest.mark.parametrize("state", [
    "paused", "close_sent", "disconnected", "transport_closing", "pending_writes",
    "fragment_open", "debug", "http_response",
])
async def test_each_guard_alone_keeps_frames_off_the_direct_path(
    socket: Socket, state: str
) -> None:
    protocol, ws = socket.protocol, socket.protocol.conn
    assert direct.writable(protocol)
    if state == "debug":
        ws.debug = True  # websockets logs every frame it sends
    elif state == "http_response":
        protocol.initial_response = (403, [], b"")
    else:
        break_guard(socket, state)
    assert not direct.writable(protocol)


PER_FRAME_GUARDS = ["paused", "close_sent", "disconnected", "transport_closing",
                    "pending_writes", "fragment_open"]


def break_guard(socket: Socket, state: str) -> None:
    """Make one of `direct.open_now`'s conditions false, as uvicorn or websockets would."""
    protocol, ws = socket.protocol, socket.protocol.conn
    if state == "paused":
        protocol.pause_writing()
    elif state == "close_sent":
        protocol.close_sent = True
    elif state == "disconnected":
        protocol.disconnected = True
    elif state == "transport_closing":
        socket.transport.closing = True
    elif state == "pending_writes":
        ws.send_ping(b"ping")  # in websockets' buffer, not yet taken by uvicorn
    elif state == "fragment_open":
        ws.send_binary(b"part", fin=False)
        ws.data_to_send()


@pytest.mark.parametrize("state", PER_FRAME_GUARDS)
async def test_a_connection_reads_each_per_frame_guard_at_every_frame(
    socket: Socket, state: str
) -> None:
    """The connection checks the per-frame guards itself (`direct.open_now`, inlined) on the
    objects it took from uvicorn's protocol when it was made: one frame goes directly, then
    with any one of them false the next goes through the ASGI send, never the transport."""
    conn = socket.connection(MSGPACK)
    before = counts()
    assert conn.send({"type": "notice", "n": 1})
    assert moved(before) == (1, 0)
    socket.transport.take()
    break_guard(socket, state)
    assert not direct.open_now(socket.protocol, socket.protocol.conn, socket.protocol.writable,
                               socket.transport)
    before = counts()
    conn.send({"type": "notice", "n": 2})
    assert moved(before) == (0, 1)
    if state == "pending_writes":  # uvicorn's send writes websockets' ping, then the frame
        frames = socket.frames()
        assert [f.opcode for f in frames] == [Opcode.PING, Opcode.BINARY]


@pytest.mark.parametrize("state", ["debug", "http_response", "handshake_incomplete"])
async def test_what_cannot_change_after_the_handshake_is_settled_when_the_connection_is_made(
    socket: Socket, state: str
) -> None:
    """Frame logging, a denial response or an unfinished handshake (and an extension: the
    deflate test below) are read once, when the connection is made: such a connection never
    writes directly, every frame goes through uvicorn's send."""
    protocol = socket.protocol
    if state == "debug":
        protocol.conn.debug = True
    elif state == "http_response":
        protocol.initial_response = (403, [], b"")
    else:
        protocol.handshake_complete = False
    assert not direct.settled(protocol)
    conn = socket.connection(MSGPACK)
    assert conn._direct is None
    before = counts()
    conn.send({"type": "notice"})
    assert moved(before) == (0, 1)
    protocol.conn.debug = False  # let the fixture's close run as usual
    protocol.handshake_complete = True
    protocol.initial_response = None


async def test_permessage_deflate_keeps_every_frame_on_the_asgi_send() -> None:
    """Negotiated deflate (REALTIME_WS_DEFLATE): the protocol is uvicorn's, but its frames are
    compressed by websockets, so none is written directly; the client inflates them."""
    opened = await open_socket(deflate=True)
    try:
        assert opened.protocol.conn.extensions and opened.client.extensions
        conn = opened.connection(MSGPACK)
        assert conn._direct is None  # settled at the handshake: never written to directly
        before = counts()
        for message in bulk_messages():
            assert conn.send_encoded(message)
        assert moved(before) == (0, 4)
        frames = opened.frames()
        assert [f.data for f in frames] == [m.frame(CODECS[MSGPACK]) for m in bulk_messages()]
    finally:
        await opened.close()


async def test_only_uvicorns_websockets_sansio_protocol_is_written_to_directly() -> None:
    """wsproto, a look-alike of another class, a transport without its protocol, a protocol
    missing an attribute the guard reads: none gets direct writes (fail closed)."""
    wsproto = await open_socket(WSProtocol)
    try:
        assert direct.sansio_protocol(wsproto.transport) is None
        conn = wsproto.connection(MSGPACK)
        before = counts()
        assert conn.send({"type": "x"})
        assert moved(before) == (0, 1)
        [frame] = wsproto.frames()
        assert CODECS[MSGPACK].decode(bytes(frame.data)) == {"type": "x"}
    finally:
        await wsproto.close()

    opened = await open_socket()
    try:
        protocol, transport = opened.protocol, opened.transport
        assert direct.sansio_protocol(transport) is opened.protocol
        assert direct.sansio_protocol(None) is None
        assert direct.sansio_protocol(object()) is None

        class WebSocketsSansIOProtocol:  # same name, same attributes, another module
            def __init__(self) -> None:
                self.__dict__.update(protocol.__dict__)

        transport.protocol = WebSocketsSansIOProtocol()
        assert direct.sansio_protocol(transport) is None
        transport.protocol = protocol
        protocol.transport = KeptTransport()  # not the socket's transport
        assert direct.sansio_protocol(transport) is None
        protocol.transport = transport
        for missing in ("writable", "close_sent", "conn"):
            value = protocol.__dict__.pop(missing)
            assert direct.sansio_protocol(transport) is None, missing
            protocol.__dict__[missing] = value
        writes = protocol.conn.__dict__.pop("writes")
        assert direct.sansio_protocol(transport) is None
        protocol.conn.writes = writes
        assert direct.sansio_protocol(transport) is opened.protocol
    finally:
        await opened.close()


async def test_a_committed_batch_reads_the_guards_at_each_frames_write() -> None:
    """A Redis store's own bulk commit (`Hub.on_committed`) is taken whole first, its frames
    written after: the per-frame guards are still read at each write. A socket whose
    transport pushes back once the batch's first frame to it is written gets its second
    frame through the ASGI send (queued, in order, out once writing resumes); the other
    sockets' frames go directly; every frame carries its own message."""
    from realtime.hub.hub import CandidateLink, Hub, candidate_command
    from realtime.state.model import Event

    opened = [await open_socket() for _ in range(3)]
    try:
        hub = Hub()
        for index, socket in enumerate(opened):
            link = CandidateLink(socket.connection(MSGPACK), "e1", f"s{index}", f"c{index}")
            hub.add_candidate(link)
            link.activate(1)
        full = opened[0]
        write = full.transport.write

        def filling(data: Any) -> None:  # the buffer is over its high-water mark after this
            write(data)
            full.protocol.pause_writing()

        full.transport.write = filling  # type: ignore[method-assign]

        def command(seq: int, session: str, kind: str, version: int) -> Event:
            return Event(exam_id="e1", session_id=session, kind=kind, actor="staff:p", at=1.5,
                         seq=seq, details={"command_id": f"k{seq}"},
                         changes={"status": "paused", "version": version})

        batch = [command(1, "s0", "pause", 2), command(2, "s1", "pause", 2),
                 command(3, "s2", "pause", 2), command(4, "s0", "lock", 3)]
        before = counts()
        hub.on_committed(batch)
        assert moved(before) == (3, 1)  # the full socket's second frame waits
        codec = CODECS[MSGPACK]

        def received(socket: Socket) -> list[dict[str, Any]]:
            return [codec.decode(bytes(frame.data)) for frame in socket.frames()]

        assert received(opened[1]) == [candidate_command(batch[1])]
        assert received(opened[2]) == [candidate_command(batch[2])]
        assert received(full) == [candidate_command(batch[0])]
        full.transport.write = write  # type: ignore[method-assign]
        full.protocol.resume_writing()
        for link in [links[0] for links in hub.candidates.values()]:
            if link.conn._writer is not None:
                await asyncio.wait_for(link.conn._writer, 5)
        assert received(full) == [candidate_command(batch[3])]
    finally:
        for socket in opened:
            await socket.close()
