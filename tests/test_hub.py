"""The hub's fan-out on fake sockets: bounded queues, slow consumers, ordering, resync."""

from __future__ import annotations

import asyncio
import gc
import json
from collections import deque
from typing import Any, cast

import pytest
from starlette.websockets import WebSocket

from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal
from realtime.channels.codec import CODECS, JSON, MSGPACK, Codec, Spliced, Template
from realtime.hub.connection import Connection
from realtime.hub.hub import CandidateLink, CommandFrames, Hub, Watcher, candidate_command
from realtime.state.model import Event


class FakeSocket:
    """Records frames; `stuck` makes every send hang like a client that stopped reading."""

    def __init__(self, stuck: bool = False) -> None:
        self.frames: list[bytes | str] = []
        self.closed: tuple[int, str] | None = None
        self.stuck = stuck
        self.unstuck = asyncio.Event()  # set: a stuck socket's pending send goes out
        self.got_frame = asyncio.Event()
        self.got_close = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data)

    async def send_text(self, data: str) -> None:
        await self._send(data)

    async def _send(self, data: bytes | str) -> None:
        if self.stuck:
            await self.unstuck.wait()
        self.frames.append(data)
        self.got_frame.set()

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)
        self.got_close.set()


class FakeTransport:
    """The server's transport under a stuck socket: `buffered` bytes the peer has not read;
    each look at the buffer finds `reads` fewer (a peer reading slowly), and after `release_after`
    looks the socket's pending send goes out."""

    def __init__(self, socket: FakeSocket, reads: int = 0, release_after: int = 0) -> None:
        self.socket = socket
        self.buffered = 1_000_000
        self.reads = reads
        self.release_after = release_after
        self.looks = 0
        self.aborted = asyncio.Event()

    def get_write_buffer_size(self) -> int:
        self.looks += 1
        self.buffered -= self.reads
        if self.looks == self.release_after:
            self.socket.unstuck.set()
        return self.buffered

    def abort(self) -> None:
        self.aborted.set()


def connection(
    socket: FakeSocket,
    codec: str = JSON,
    queue: int = 8,
    send_timeout: float = 0.0,
    transport: FakeTransport | None = None,
) -> Connection:
    conn = Connection(cast(WebSocket, socket), CODECS[codec], queue, send_timeout, transport)
    conn.start()
    return conn


def event(seq: int, kind: str = "pause", session: str = "s1", **changes: Any) -> Event:
    return Event(
        exam_id="e1",
        session_id=session,
        kind=kind,
        actor="staff:p",
        at=1.0,
        seq=seq,
        changes=changes,
        details={"command_id": f"c{seq}"},
    )


STAFF = Principal(id="p", name="p", kind="staff", permissions=ALL_PERMISSIONS)


async def test_a_slow_dashboard_is_dropped_and_never_delays_the_others() -> None:
    """A watcher whose socket stopped reading overflows its queue and is closed with 4008."""
    hub = Hub()
    slow_socket, fast_socket = FakeSocket(stuck=True), FakeSocket()
    slow = Watcher(connection(slow_socket, queue=4), "e1", STAFF, [])
    fast = Watcher(connection(fast_socket, queue=64), "e1", STAFF, [])
    for watcher in (slow, fast):
        hub.add_watcher(watcher)
        watcher.activate(0)
    for seq in range(1, 11):
        hub.on_event(event(seq))
        hub.flush()  # one delta per flush, as when events trickle in
    assert slow.conn.closing and slow.conn.close_code == 4008
    async with asyncio.timeout(5):
        while len(fast_socket.frames) < 10:
            fast_socket.got_frame.clear()
            await fast_socket.got_frame.wait()
    assert len(fast_socket.frames) == 10
    await slow.conn.stop()
    await fast.conn.stop()


async def test_a_peer_that_reads_nothing_within_the_send_deadline_is_aborted() -> None:
    """A send that waits while the peer reads nothing: past the deadline the transport is
    aborted, the connection closed as slow (4008) and told to stop reading."""
    socket = FakeSocket(stuck=True)
    transport = FakeTransport(socket)
    conn = connection(socket, send_timeout=0.02, transport=transport)
    before = Connection.send_timeouts
    assert conn.send({"type": "ping"})
    await asyncio.wait_for(transport.aborted.wait(), 5)
    assert (conn.stopped, conn.closing, conn.close_code) == (True, True, 4008)
    assert Connection.send_timeouts == before + 1
    assert not conn.send({"type": "ping"})
    await conn.stop()
    assert socket.frames == []


async def test_a_peer_that_reads_slowly_is_not_cut_off() -> None:
    """While the peer takes bytes off the buffer, each deadline is renewed until the send
    goes out; nothing is aborted."""
    socket = FakeSocket(stuck=True)
    transport = FakeTransport(socket, reads=1000, release_after=5)
    conn = connection(socket, send_timeout=0.02, transport=transport)
    assert conn.send({"type": "ping"})
    await asyncio.wait_for(socket.got_frame.wait(), 5)
    await conn.stop()
    assert not transport.aborted.is_set() and not conn.closing
    assert transport.looks >= 5


async def test_a_pending_close_gets_one_deadline_however_slowly_the_peer_reads() -> None:
    """A close queued behind a stuck send is not renewed by a trickle of reads: the socket
    is aborted at the second deadline at the latest (each deadline looks twice: when it is
    armed and when it expires)."""
    socket = FakeSocket(stuck=True)
    transport = FakeTransport(socket, reads=1000)
    conn = connection(socket, send_timeout=0.02, transport=transport)
    assert conn.send({"type": "ping"})
    conn.close(4010, "resync")
    await asyncio.wait_for(transport.aborted.wait(), 5)
    assert transport.looks <= 4 and conn.close_code == 4008
    await conn.stop()


async def test_without_the_servers_transport_a_stalled_peer_still_stops_being_read() -> None:
    """Under a server whose transport the app cannot reach, the deadline cancels the reader
    waiting for the peer's next frame, so the endpoint runs its disconnect path."""
    socket = FakeSocket(stuck=True)
    conn = Connection(cast(WebSocket, socket), CODECS[JSON], 8, 0.02, None)

    waiting = asyncio.Event()

    async def read_forever() -> None:
        conn.start()
        conn.in_receive = True
        waiting.set()
        await asyncio.Event().wait()  # the peer sends nothing

    reader = asyncio.create_task(read_forever())
    await waiting.wait()
    assert conn.send({"type": "ping"})
    await asyncio.wait_for(asyncio.gather(reader, return_exceptions=True), 5)
    assert reader.cancelled()
    assert conn.stopped and conn.close_code == 4008
    await conn.stop()


async def test_a_broadcast_is_encoded_once_per_codec() -> None:
    """Many watchers on two codecs share two encodings of the same delta."""
    hub = Hub()
    sockets = [FakeSocket() for _ in range(6)]
    watchers = [
        Watcher(connection(s, MSGPACK if i % 2 else JSON), "e1", STAFF, [])
        for i, s in enumerate(sockets)
    ]
    for watcher in watchers:
        hub.add_watcher(watcher)
        watcher.activate(0)
    hub.on_event(event(1))
    hub.flush()
    await asyncio.gather(*(asyncio.wait_for(s.got_frame.wait(), 5) for s in sockets))
    frames = [s.frames[0] for s in sockets]
    assert len({id(f) for f in frames}) == 2  # the same objects, not equal copies
    for watcher in watchers:
        await watcher.conn.stop()


async def test_watcher_buffers_until_its_snapshot_then_drops_what_it_already_has() -> None:
    """Events that arrive before the snapshot is sent are delivered after it, without dupes."""
    socket = FakeSocket()
    watcher = Watcher(connection(socket), "e1", STAFF, [])
    for seq in (1, 2, 3):
        watcher.handle(event(seq), _encoded(seq))
    assert socket.frames == []
    watcher.activate(2)  # the snapshot included seq 1 and 2
    await asyncio.wait_for(socket.got_frame.wait(), 5)
    [frame] = socket.frames
    assert isinstance(frame, str) and '"seq":3' in frame and '"seq":2' not in frame
    await watcher.conn.stop()


async def test_a_gap_in_sequence_numbers_closes_the_dashboard_for_resync() -> None:
    """Missing seq numbers mean this process missed events: the client must catch up (4010)."""
    socket = FakeSocket()
    watcher = Watcher(connection(socket), "e1", STAFF, [])
    watcher.activate(5)
    watcher.handle(event(6), _encoded(6))
    watcher.handle(event(9), _encoded(9))
    await asyncio.wait_for(socket.got_close.wait(), 5)
    assert socket.closed == (4010, "resync")
    assert socket.frames == ['{"seq":6}']  # the encoded message of the in-order event


async def test_scoped_watcher_sees_only_its_groups() -> None:
    """A proctor of group A gets no delta about a candidate of group B."""
    proctor = Principal(
        id="a",
        name="a",
        kind="staff",
        permissions=ALL_PERMISSIONS,
        groups=frozenset({"A"}),
        unrestricted=False,
    )
    socket = FakeSocket()
    watcher = Watcher(connection(socket), "e1", proctor, ["exam-group"])
    watcher.groups.update({"sa": "A", "sb": "B"})
    watcher.activate(0)
    watcher.handle(event(1, session="sb"), _encoded(1))
    watcher.handle(event(2, session="sa"), _encoded(2))
    await asyncio.wait_for(socket.got_frame.wait(), 5)
    assert socket.frames == ['{"seq":2}']
    await watcher.conn.stop()


async def test_candidate_link_supersede_and_terminate() -> None:
    """A newer holder supersedes the link (4100); a terminate is told, then closed (4101)."""
    hub = Hub()
    first, second = FakeSocket(), FakeSocket()
    old = CandidateLink(connection(first), "e1", "s1", "conn-old")
    current = CandidateLink(connection(second), "e1", "s1", "conn-new")
    for link in (old, current):
        hub.add_candidate(link)
        link.activate(1)
    hub.on_event(event(1, kind="opened", conn_id="conn-new", version=2))
    await asyncio.wait_for(first.got_close.wait(), 5)
    assert first.closed == (4100, "superseded")
    hub.on_event(event(2, kind="terminate", status="terminated", version=3))
    await asyncio.wait_for(second.got_close.wait(), 5)
    assert second.closed == (4101, "terminated")
    assert '"action":"terminate"' in str(second.frames[-1])


def _encoded(seq: int) -> Any:
    from realtime.channels.codec import Encoded

    return Encoded({"seq": seq})


async def test_a_burst_reaches_each_dashboard_as_one_batch() -> None:
    """A bulk command's events go out as one event_batch per dashboard, encoded once."""
    hub = Hub()
    sockets = [FakeSocket(), FakeSocket()]
    watchers = [Watcher(connection(s, queue=2), "e1", STAFF, []) for s in sockets]
    for watcher in watchers:
        hub.add_watcher(watcher)
        watcher.activate(0)
    for seq in range(1, 2001):  # far more events than the queue holds
        hub.on_event(event(seq, session=f"s{seq}"))
    hub.flush()
    await asyncio.gather(*(asyncio.wait_for(s.got_frame.wait(), 5) for s in sockets))
    assert sockets[0].frames[0] is sockets[1].frames[0]
    batch = json.loads(sockets[0].frames[0])
    assert batch["type"] == "event_batch" and batch["seq"] == 2000
    assert [e["seq"] for e in batch["events"]] == list(range(1, 2001))
    assert not any(w.conn.closing for w in watchers)
    for watcher in watchers:
        await watcher.conn.stop()


async def test_candidate_traffic_reaches_dashboards_paced_and_in_order() -> None:
    """Progress reports, acks and client events of a steady flow reach a dashboard at most
    once per pace, together (one frame per event and dashboard was most of what such a
    message cost the server); the first after a quiet spell goes at once, and any other event
    takes what waits with it at once, in seq order."""
    hub = Hub(delta_pace=3600.0)  # nothing held here is sent by the pace itself
    socket = FakeSocket()
    watcher = Watcher(connection(socket, queue=64), "e1", STAFF, [])
    hub.add_watcher(watcher)
    watcher.activate(0)
    hub.on_event(event(1, kind="progress"))
    await asyncio.wait_for(socket.got_frame.wait(), 5)  # the first goes at once
    assert json.loads(socket.frames[0])["event"]["seq"] == 1
    socket.got_frame.clear()
    hub.on_event(event(2, kind="progress", session="s2"))
    hub.on_event(event(3, kind="delivered"))
    hub.on_event(event(4, kind="client_event", session="s3"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(socket.frames) == 1  # held for the pace
    hub.on_event(event(5, kind="pause"))  # a staff command does not wait: nor what waits
    await asyncio.wait_for(socket.got_frame.wait(), 5)
    assert len(socket.frames) == 2
    batch = json.loads(socket.frames[1])
    assert batch["type"] == "event_batch" and [e["seq"] for e in batch["events"]] == [2, 3, 4, 5]
    assert watcher.last_seq == 5
    await watcher.conn.stop()


async def test_paced_candidate_traffic_is_sent_when_the_pace_allows() -> None:
    """A held progress report is not left waiting for another event: the pace sends it."""
    hub = Hub(delta_pace=0.01)
    socket = FakeSocket()
    watcher = Watcher(connection(socket, queue=64), "e1", STAFF, [])
    hub.add_watcher(watcher)
    watcher.activate(0)
    hub.on_event(event(1, kind="progress"))
    hub.on_event(event(2, kind="progress", session="s2"))  # the same turn: one frame
    await asyncio.wait_for(socket.got_frame.wait(), 5)
    socket.got_frame.clear()
    hub.on_event(event(3, kind="progress", session="s3"))  # within the pace: held, then sent
    async with asyncio.timeout(5):
        while watcher.last_seq < 3:
            await socket.got_frame.wait()
            socket.got_frame.clear()
    seqs = []
    for frame in socket.frames:
        message = json.loads(frame)
        seqs += [e["seq"] for e in message.get("events", [message.get("event")])]
    assert seqs == [1, 2, 3]
    await watcher.conn.stop()


async def test_after_a_lost_subscription_everyone_resynchronises() -> None:
    """Dashboards are closed with 4010 (they catch up by seq); candidates get their state."""

    async def fetch(exam_id: str, session_id: str) -> dict[str, Any]:
        return {"id": session_id, "status": "paused", "version": 7, "resume_hash": "secret"}

    hub = Hub(fetch_session=fetch)
    dashboard_socket, page_socket = FakeSocket(), FakeSocket()
    watcher = Watcher(connection(dashboard_socket), "e1", STAFF, [])
    link = CandidateLink(connection(page_socket), "e1", "s1", "conn")
    hub.add_watcher(watcher)
    watcher.activate(3)
    hub.add_candidate(link)
    link.activate(5)
    hub.resynchronise()
    await asyncio.wait_for(dashboard_socket.got_close.wait(), 5)
    await asyncio.wait_for(page_socket.got_frame.wait(), 5)
    assert dashboard_socket.closed == (4010, "resync")
    state = json.loads(page_socket.frames[0])
    assert state == {"type": "state", "session": {"id": "s1", "status": "paused", "version": 7}}
    assert link.version == 7
    await link.conn.stop()


async def test_own_commits_reach_the_candidate_at_once_and_the_echo_is_not_sent_again() -> None:
    """`on_committed` (the store's answer) sends a page its versioned change; the same event
    arriving through the fan-out later is not sent twice; unversioned events wait for it."""
    hub = Hub()
    page = FakeSocket()
    link = CandidateLink(connection(page), "e1", "s1", "conn-1")
    hub.add_candidate(link)
    link.activate(1)
    pause = event(5, kind="pause", status="paused", version=2)
    note = event(6, kind="notice")  # no version: left to the fan-out
    hub.on_committed([pause, note])
    await asyncio.wait_for(page.got_frame.wait(), 5)
    assert len(page.frames) == 1 and '"action":"pause"' in str(page.frames[0])
    page.got_frame.clear()
    hub.on_event(pause)  # the echo
    hub.on_event(note)
    await asyncio.wait_for(page.got_frame.wait(), 5)
    assert len(page.frames) == 2 and '"action":"notice"' in str(page.frames[1])
    await link.conn.stop()


async def test_a_connection_lets_go_of_its_send_queue_once_it_is_drained() -> None:
    """The queue of sends waiting behind a slow one is made when needed and dropped after:
    thousands of idle sockets keep none (docs/performance.md)."""
    socket = FakeSocket(stuck=True)
    conn = connection(socket, queue=8)

    def holds_a_deque() -> bool:
        return any(isinstance(o, deque) for o in gc.get_referents(conn))

    assert not holds_a_deque()
    for n in range(3):
        assert conn.send({"n": n})
    assert holds_a_deque()  # the first send waits, the other two queue behind it
    socket.unstuck.set()
    while len(socket.frames) < 3:
        socket.got_frame.clear()
        await asyncio.wait_for(socket.got_frame.wait(), 5)
    assert [json.loads(f)["n"] for f in socket.frames] == [0, 1, 2]
    assert not holds_a_deque()
    socket.stuck = False
    assert conn.send({"n": 3})  # and a send after that goes straight out, as before
    assert json.loads(socket.frames[-1])["n"] == 3


# -- a bulk command's candidate messages: encoded once, spliced per session ----------------------


def bulk_event(seq: int, session: str, version: int, kind: str = "pause", at: float = 1.5,
               **changes: Any) -> Event:
    """One session's event of a bulk command: the same command, action, time and details for
    every session; the changes as the machine makes them, plus the session's version."""
    fields = {"status": "paused", "paused_at": at, "status_command_id": "bulk-1", **changes}
    return Event(exam_id="e1", session_id=session, kind=kind, actor="staff:p", at=at, seq=seq,
                 changes={**fields, "version": version},
                 details={"command_id": "bulk-1", "reason": "fire alarm"})


def decode(frame: bytes | str) -> dict[str, Any]:
    return CODECS[MSGPACK if isinstance(frame, bytes) else JSON].decode(frame)


def count_encodes(monkeypatch: Any) -> dict[str, int]:
    """Counts whole-message encodings per codec from now on."""
    calls: dict[str, int] = {MSGPACK: 0, JSON: 0}
    encode = Codec.encode

    def counted(self: Codec, message: dict[str, Any]) -> bytes | str:
        calls[self.name] += 1
        return encode(self, message)

    monkeypatch.setattr(Codec, "encode", counted)
    return calls


async def test_a_bulk_commands_candidates_get_their_own_messages_encoded_once(
    monkeypatch: Any,
) -> None:
    """Each candidate of a bulk command gets its own session's message (its version), on
    either codec, while the message is encoded once per codec (as a template) rather than
    once per candidate."""
    calls = count_encodes(monkeypatch)
    hub = Hub()
    sockets: dict[str, FakeSocket] = {}
    for i in range(60):
        socket = sockets[f"s{i}"] = FakeSocket()
        link = CandidateLink(connection(socket, MSGPACK if i % 2 else JSON, queue=4),
                             "e1", f"s{i}", f"conn-{i}")
        hub.add_candidate(link)
        link.activate(10 + i)
    events = [bulk_event(i + 1, f"s{i}", 11 + i) for i in range(60)]
    for e in events:
        hub.on_event(e)
    for e in events:
        [frame] = sockets[e.session_id].frames
        assert decode(frame) == candidate_command(e)
        assert decode(frame)["session"]["version"] == e.changes["version"]
    # the first message whole (for its codec), then the template (once per codec): not 60
    assert calls == {JSON: 2, MSGPACK: 1}


def test_spliced_frames_equal_the_whole_encoding_byte_for_byte() -> None:
    """Runs with one hole (the version), two (a resume's version and deadline), messages all
    alike, and runs broken by an event of another shape: every frame is the bytes the whole
    message encodes to."""
    resume = {"status": "active", "paused_at": None, "status_command_id": "bulk-1"}
    runs = [
        [bulk_event(i, f"s{i}", 100 + i) for i in range(10)],
        [bulk_event(i, f"s{i}", 7) for i in range(10)],  # alike: one message
        [bulk_event(i, f"s{i}", 100 + i, kind="resume", **resume, deadline=5000.25 + i)
         for i in range(10)],
        [bulk_event(i, f"s{i}", 100 + i, **({"alerts": 2} if i == 4 else {}))
         for i in range(10)],
        [bulk_event(i, f"s{i}", 100 + i, **({"status": "active"} if i in (3, 7) else {}))
         for i in range(10)],
        [bulk_event(i, f"s{i}", 100 + i, at=1.5 + (i == 5)) for i in range(10)],
        [bulk_event(i, f"s{i}", 100 + i, device=f"d{i}") for i in range(10)],  # hidden: whole
        [bulk_event(i, f"s{i}", [i, {"x": i / 3}], note="é\"") for i in range(5)],
    ]
    frames = CommandFrames()
    kinds = set()
    for run in runs:
        for e in run:
            message = frames.message(e)
            kinds.add(type(message).__name__)
            assert message.message == candidate_command(e)
            for codec in CODECS.values():
                assert message.frame(codec) == codec.encode(candidate_command(e))
    assert kinds == {"Encoded", "Spliced"}


def test_a_message_that_contains_the_placeholder_text_is_encoded_whole() -> None:
    """A template finds its holes by encoding placeholders; a message whose own text holds a
    placeholder cannot be split safely and is encoded whole, still correctly."""
    placeholder = "\x00\x01realtime-splice-0\x01\x00"
    template = Template({"type": "command", "details": {"reason": placeholder},
                         "session": {"version": 1}}, "session", ("version",))
    for codec in CODECS.values():
        assert template.parts(codec) is None
        assert Spliced(template, (42,)).frame(codec) == codec.encode(template.fill((42,)))


def test_pack_keeps_working_after_a_value_it_cannot_pack() -> None:
    """The shared msgpack packer starts afresh after an error (no half-packed leftovers)."""
    codec = CODECS[MSGPACK]
    with pytest.raises(TypeError):
        codec.encode({"type": "x", "bad": object()})
    assert codec.decode(codec.encode({"type": "ok", "n": 1})) == {"type": "ok", "n": 1}


async def test_the_hub_says_which_holders_it_has_open() -> None:
    """The sweeper asks the hub whether an open connection here holds a session: only a link
    that is live (opened, not yet removed) with that very conn id counts."""
    hub = Hub()
    socket = FakeSocket()
    link = CandidateLink(connection(socket), "e1", "s1", "conn-1")
    hub.add_candidate(link)
    assert not hub.holds_session("s1", "conn-1")  # not opened yet
    link.activate(1)
    assert hub.holds_session("s1", "conn-1")
    assert not hub.holds_session("s1", "conn-2")  # another holder (elsewhere)
    assert not hub.holds_session("s2", "conn-1")
    hub.remove_candidate(link)
    assert not hub.holds_session("s1", "conn-1")
    await link.conn.stop()


# -- a Redis store's own bulk commit: one `on_committed` batch, taken first, written after -----


async def test_a_committed_batch_reaches_every_link_in_order_with_closes_after_frames() -> None:
    """`on_committed` takes a batch's events first and writes the frames after; each page
    still gets exactly its frames, in order: two commands of one session in one batch, a
    session held by two links, a terminate (its frame, then the close), a new holder (the
    frame before it, then `superseded` and the close), unversioned events left to the echo,
    a page not yet opened (held until it is), and a page whose socket fails (the others
    still get theirs)."""
    hub = Hub()
    sockets: dict[str, FakeSocket] = {}
    links: dict[str, CandidateLink] = {}
    for name, session in (("a", "s1"), ("b", "s2"), ("c1", "s3"), ("c2", "s3"), ("d", "s4"),
                          ("e", "s5"), ("f", "s6"), ("g", "s7"), ("h", "s8")):
        sockets[name] = FakeSocket()
        links[name] = CandidateLink(connection(sockets[name], queue=8), "e1", session, name)
        hub.add_candidate(links[name])
        if name != "f":
            links[name].activate(1)

    class Broken(FakeSocket):
        async def send_bytes(self, data: bytes) -> None:
            raise RuntimeError("the peer went away")

        async def send_text(self, data: str) -> None:
            raise RuntimeError("the peer went away")

    links["g"].conn.websocket = cast(WebSocket, Broken())
    batch = [
        event(1, "pause", "s1", status="paused", version=2),
        event(2, "pause", "s2", status="paused", version=2),
        event(3, "lock", "s1", locked=True, version=3),  # the same page, in one batch
        event(4, "pause", "s3", status="paused", version=2),  # held twice
        event(5, "pause", "s4", status="paused", version=2),
        event(6, "terminate", "s4", status="terminated", version=3),
        event(7, "pause", "s4", status="paused", version=4),  # after the terminate: nothing
        event(8, "pause", "s5", status="paused", version=2),
        event(9, "opened", "s5", conn_id="elsewhere", version=3),  # a new holder
        event(10, "notice", "s2"),  # unversioned: left to the echo
        event(11, "pause", "s6", status="paused", version=2),  # not opened yet
        event(12, "pause", "s7", status="paused", version=2),  # its socket fails
        event(13, "pause", "s8", status="paused", version=2),
    ]
    hub.on_committed(batch)
    for _ in range(5):
        await asyncio.sleep(0)

    def actions(name: str) -> list[str]:
        return [json.loads(frame).get("action", json.loads(frame)["type"])
                for frame in sockets[name].frames]

    assert actions("a") == ["pause", "lock"]
    assert actions("b") == ["pause"]
    assert actions("c1") == actions("c2") == ["pause"]
    assert actions("d") == ["pause", "terminate"] and sockets["d"].closed == (4101, "terminated")
    assert actions("e") == ["pause", "superseded"] and sockets["e"].closed == (4100, "superseded")
    assert actions("f") == [] and [e.seq for e in links["f"].early] == [11]
    assert links["g"].conn.closing  # gone
    assert actions("h") == ["pause"]
    assert links["a"].version == 3 and links["a"].view["status"] == "paused"
    links["f"].activate(1)
    assert actions("f") == ["pause"]
    for link in links.values():
        await link.conn.stop()


async def test_a_committed_batch_larger_than_what_is_taken_at_once_reaches_every_page() -> None:
    """Frames are taken `TAKEN_MAX` at a time: a batch of more (spliced messages, the
    sessions at different versions) still gives every page exactly its own message, once."""
    from realtime.hub.hub import TAKEN_MAX

    hub = Hub()
    sockets: dict[str, FakeSocket] = {}
    count = 2 * TAKEN_MAX + 3
    for i in range(count):
        socket = sockets[f"s{i}"] = FakeSocket()
        link = CandidateLink(connection(socket, MSGPACK if i % 2 else JSON), "e1", f"s{i}",
                             f"conn-{i}")
        hub.add_candidate(link)
        link.activate(10 + i % 7)
    events = [bulk_event(i + 1, f"s{i}", 11 + i % 7) for i in range(count)]
    hub.on_committed(events)
    for e in events:
        [frame] = sockets[e.session_id].frames
        assert decode(frame) == candidate_command(e)
