"""The hub's own cost per frame of a bulk command, on uvicorn's real protocol objects over
transports that keep nothing: CPU time, or instructions under callgrind.

    python -m loadtests.hub_instructions --sockets 5000 --rounds 7 [--entry event] \\
        [--versions mixed]
    # instructions per frame: two runs that differ only in the rounds dispatched
    valgrind --tool=callgrind --callgrind-out-file=/tmp/hi.1 \\
        python -m loadtests.hub_instructions --sockets 300 --rounds 1 --made 6
    valgrind --tool=callgrind --callgrind-out-file=/tmp/hi.6 \\
        python -m loadtests.hub_instructions --sockets 300 --rounds 6 --made 6
    # (Ir of the second - Ir of the first) / (5 * 300), Ir from `callgrind_annotate` totals

`--sockets` uvicorn websockets-sansio protocols are handshaken in this process (no socket,
no child: `loadtests.hub_fanout` does the same over real sockets), each registered with a
`Hub` as the candidate endpoint registers it (`direct.sansio_protocol`, `Connection`,
`CandidateLink`); their transports' `write` and `is_closing` are builtins (`len`, `bool`), so
a frame costs what our path costs and nothing of a socket. Each round hands the hub one bulk
command's events (a pause, then a resume, ...; one per session, the shape of
`machine.apply`'s; `--versions mixed`: the sessions at four versions, spliced messages) through
`Hub.on_committed` (`--entry committed`: a Redis store's own commit, one call per batch) or
`Hub.on_event` per event (`--entry event`: the memory store's hand-off, the Redis echo).

All the rounds' events are made before the first is dispatched (`--made`, at least
`--rounds`), so two runs that differ only in `--rounds` differ only in the dispatching.
Prints the CPU per frame of each round (`time.process_time`) and their median; checks that
every frame was written directly and that each socket got exactly its frames.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from typing import Any

from loadtests.common import MSGPACK

EXAM = "hubinstr"


class DiscardingTransport(asyncio.Transport):
    """A socket's transport for the handshake; afterwards `write` and `is_closing` are
    builtins that keep nothing (`direct` calls them per frame)."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: Any = None
        self.data = bytearray()
        self.written = 0

    def write(self, data: Any) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

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

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def discard(self) -> None:
        """From now on nothing is kept: builtins, as cheap as uvloop's C methods."""
        self.data = bytearray()
        self.write = len  # type: ignore[method-assign, assignment]
        self.is_closing = bool  # type: ignore[method-assign, assignment]

    def count(self) -> None:
        """From now on frames are counted (the check after the timed rounds)."""
        self.written = 0

        def write(data: Any) -> None:
            self.written += 1
            self.data += data

        self.write = write  # type: ignore[method-assign]


async def open_sockets(count: int, versions: str) -> tuple[Any, list[Any], list[Any]]:
    import uvicorn
    from starlette.websockets import WebSocket
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from uvicorn.server import ServerState
    from websockets.client import ClientProtocol
    from websockets.typing import Subprotocol
    from websockets.uri import parse_uri

    from realtime.channels import direct
    from realtime.channels.codec import CODECS
    from realtime.hub.connection import Connection
    from realtime.hub.hub import CandidateLink, Hub

    loop = asyncio.get_running_loop()
    hub = Hub()
    links: list[Any] = []
    transports: list[DiscardingTransport] = []
    accepted: asyncio.Queue[WebSocket] = asyncio.Queue()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept(subprotocol=MSGPACK)
        await accepted.put(websocket)
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        except asyncio.CancelledError:  # the run is over
            return

    config = uvicorn.Config(app, ws_per_message_deflate=False, log_level="warning",
                            lifespan="off", ws_ping_interval=None)
    config.load()
    state = ServerState()
    for index in range(count):
        protocol = WebSocketsSansIOProtocol(config, state, {}, _loop=loop)
        transport = DiscardingTransport()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        client = ClientProtocol(parse_uri("ws://127.0.0.1:8000/ws"),
                                subprotocols=[Subprotocol(MSGPACK)])
        client.send_request(client.connect())
        protocol.data_received(b"".join(client.data_to_send()))
        websocket = await asyncio.wait_for(accepted.get(), 5)
        found = direct.sansio_protocol(transport)
        assert found is protocol, "not uvicorn's websockets-sansio protocol"
        direct.forget_handshake(found)
        transport.discard()
        conn = Connection(websocket, CODECS[MSGPACK], 64, 0.0, transport, found)
        link = CandidateLink(conn, EXAM, f"s{index}", f"conn{index}")
        hub.add_candidate(link)
        link.activate(index % 4 if versions == "mixed" else 0, {"status": "active"})
        links.append(link)
        transports.append(transport)
    return hub, links, transports


def make_events(links: list[Any], rounds: int, seq: int) -> list[list[Any]]:
    from realtime.state.model import Event

    batches = []
    for rnd in range(rounds):
        action = "pause" if rnd % 2 == 0 else "resume"
        status = "paused" if action == "pause" else "active"
        before = "active" if action == "pause" else "paused"
        command_id = f"bulk{rnd}"
        at = 1_800_000_000.0 + rnd
        batch = []
        for link in links:
            seq += 1
            batch.append(Event(
                exam_id=EXAM, session_id=link.session_id, kind=action, actor="staff:bench",
                at=at, before=before, after=status, seq=seq,
                details={"command_id": command_id, "reason": "bench"},
                changes={"status": status, "status_command_id": command_id,
                         "paused_at": at if action == "pause" else None,
                         "version": link.version + rnd + 1}))
        batches.append(batch)
    return batches


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from realtime.channels.codec import CODECS
    from realtime.gcpolicy import GEN0_THRESHOLD
    from realtime.hub.connection import FRAMES
    from realtime.hub.hub import candidate_command

    hub, links, transports = await open_sockets(args.sockets, args.versions)
    batches = make_events(links, max(args.made, args.rounds + 1), 0)
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)  # as the server runs (`gcpolicy`)
    gc.collect()
    gc.freeze()
    samples = []
    direct_before = FRAMES.direct
    for batch in batches[: args.rounds]:
        started = time.process_time()
        if args.entry == "committed":
            hub.on_committed(batch)
        else:
            on_event = hub.on_event
            for event in batch:
                on_event(event)
        samples.append(1e6 * (time.process_time() - started) / len(batch))
    written = FRAMES.direct - direct_before
    if written != args.rounds * len(links):
        raise RuntimeError(f"{written} of {args.rounds * len(links)} frames written directly")
    # one more round, counted and decoded: each socket got its own message, once
    for transport in transports:
        transport.count()
    check = batches[args.rounds]
    hub.on_committed(check)
    codec = CODECS[MSGPACK]
    for transport, event in zip(transports, check, strict=True):
        data = bytes(transport.data)
        length = data[1] & 0x7F  # an unmasked server frame: 2, 4 or 10 bytes of header
        payload = data[2:] if length < 126 else data[4:] if length == 126 else data[10:]
        if transport.written != 1 or codec.decode(payload) != candidate_command(event):
            raise RuntimeError(f"{event.session_id}: wrong frame")
    rounded = [round(s, 3) for s in samples]
    print(f"{args.entry}, {args.versions}: {rounded} us/frame", flush=True)
    return {"sockets": args.sockets, "rounds": args.rounds, "entry": args.entry,
            "versions": args.versions,
            "us_per_frame": round(statistics.median(samples[1:] or samples), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--made", type=int, default=0,
                        help="rounds of events made before the first is dispatched")
    parser.add_argument("--entry", choices=["committed", "event"], default="committed")
    parser.add_argument("--versions", choices=["same", "mixed"], default="same")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
