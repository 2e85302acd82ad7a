"""Where a bulk command's per-frame CPU goes in the hub's fan-out, with real sockets.

    python -m loadtests.hub_fanout --sessions 5000 --rounds 7
    python -m loadtests.hub_fanout --sessions 5000 --rounds 7 --versions mixed
    perf record -D -1 --control fifo:ctl,ack -g -- python -m loadtests.hub_fanout --perf-ctl ctl,ack

This process serves `--sessions` WebSockets under uvicorn (websockets-sansio, msgpack), each
registered with a `Hub` as a candidate link exactly as the candidate endpoint registers it
(`direct.sansio_protocol`, `Connection`, `CandidateLink`), without the rest of the app; a
child process holds the sockets and reads every frame (`loadtests.wsclient`). Each round
hands the hub one bulk command's events (a pause, then a resume, ...: one per session, the
shape of `machine.apply`'s, with `--versions same` all at the same version like the
fanout_cpu harness's hall, `mixed` at four) through `Hub.on_event` (`--entry committed`: in
one `Hub.on_committed` call, as a Redis store hands its own commit), and times the CPU of
this process (`time.process_time`) in four variants, alternated round by round:

* `hub`: the fan-out as it runs (our Python, uvloop's `transport.write`, the kernel's send,
  which on loopback includes the receiving side's TCP work);
* `hub, no-op transport`: the same with every socket's transport swapped for a Python object
  whose `write` keeps nothing (our Python alone, plus one Python call per frame);
* `transport.write`: the same frames (`Encoded.wire`) written with bare `transport.write`
  calls (uvloop and the kernel alone);
* `no-op write`: bare calls of the no-op transport's `write` (the last two's loop).

Per frame: each variant's median over rounds, divided by the sessions. Young collections
come as often as in the server (`gcpolicy.GEN0_THRESHOLD`). `--perf-ctl CTL,ACK`
switches a `perf record -D -1 --control fifo:CTL,ACK` on around the `hub` variant only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from typing import Any

from loadtests.common import MSGPACK, raise_nofile, ws_url

EXAM = "hubfanout"
VARIANTS = ("hub", "hub, no-op transport", "transport.write", "no-op write")


class NoopTransport:
    """Stands for a socket's transport: `write` keeps nothing, never closing."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


async def hold(url: str, count: int) -> None:
    from loadtests.wsclient import connect

    frames = [0]

    def on_message(peer: Any, message: dict[str, Any]) -> None:
        frames[0] += 1

    limit = asyncio.Semaphore(200)
    peers = []

    async def one(_: int) -> None:
        async with limit:
            peers.append(await connect(url, on_message, protocol=MSGPACK, timeout=120))

    await asyncio.gather(*(one(i) for i in range(count)))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


class PerfControl:
    """perf record's control FIFOs (`--control fifo:ctl,ack`): enable / disable, acknowledged."""

    def __init__(self, spec: str) -> None:
        ctl, ack = spec.split(",")
        self.ctl = open(ctl, "w")  # noqa: SIM115  # open for the whole run
        self.ack = open(ack)  # noqa: SIM115

    def send(self, command: str) -> None:
        self.ctl.write(command + "\n")
        self.ctl.flush()
        self.ack.readline()


def events_for(links: list[Any], action: str, command_id: str, at: float) -> list[Any]:
    from realtime.state.model import Event

    status = "paused" if action == "pause" else "active"
    before = "active" if action == "pause" else "paused"
    return [
        Event(exam_id=EXAM, session_id=link.session_id, kind=action, actor="staff:bench", at=at,
              before=before, after=status, details={"command_id": command_id, "reason": "bench"},
              changes={"status": status, "status_command_id": command_id,
                       "paused_at": at if action == "pause" else None,
                       "version": link.version + 1})
        for link in links
    ]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from starlette.websockets import WebSocket

    from loadtests.inprocess import serve_in_process
    from loadtests.servers import free_port
    from realtime.channels import direct
    from realtime.channels.codec import CODECS
    from realtime.gcpolicy import GEN0_THRESHOLD
    from realtime.hub.connection import FRAMES, Connection
    from realtime.hub.hub import CandidateLink, Hub, command_frames

    hub = Hub()
    codec = CODECS[MSGPACK]
    registered: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        websocket = WebSocket(scope, receive, send)
        await websocket.accept(subprotocol=MSGPACK)
        transport = send.__self__.transport
        protocol = direct.sansio_protocol(transport)
        direct.forget_handshake(protocol)
        conn = Connection(websocket, codec, 64, 0.0, transport, protocol)
        conn.start()
        index = len(registered)
        link = CandidateLink(conn, EXAM, f"s{index}", f"conn{index}")
        hub.add_candidate(link)
        link.activate(index % 4 if args.versions == "mixed" else 0, {"status": "active"})
        registered.append((link, protocol, transport))
        while (await receive())["type"] != "websocket.disconnect":
            pass
        hub.remove_candidate(link)

    port = free_port()
    server, task = await serve_in_process(app, port)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.hub_fanout", "--hold",
        ws_url(f"http://127.0.0.1:{port}", "/ws"), "--sessions", str(args.sessions),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    line = await child.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"holder failed: {line!r}")
    for _ in range(200):
        if len(registered) == args.sessions:
            break
        await asyncio.sleep(0.05)
    assert all(protocol is not None for _, protocol, _ in registered), "not websockets-sansio"
    links = [link for link, _, _ in registered]
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)  # as the server runs (`gcpolicy`)
    perf = PerfControl(args.perf_ctl) if args.perf_ctl else None
    noop = NoopTransport()
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    action_index = 0
    for rnd in range(args.rounds + 1):  # the first round warms up
        order = VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]
        for name in order:
            action = "pause" if action_index % 2 == 0 else "resume"
            action_index += 1
            command_id = f"b{rnd}-{name}"
            events = events_for(links, action, command_id, time.time())
            wires: list[bytes] = []
            if name in ("transport.write", "no-op write"):  # the frames the hub would write
                wires = [command_frames.message(event).wire(codec) for event in events]
            if name == "hub, no-op transport" or name == "no-op write":
                for link, protocol, _ in registered:
                    protocol.transport = noop
                    if hasattr(link.conn, "_direct_transport"):  # the connection's copy
                        link.conn._direct_transport = noop
            await asyncio.sleep(0.3)  # the child has read the last round
            gc.collect()
            if perf is not None and name == "hub":
                perf.send("enable")
            direct_before = FRAMES.direct
            started = time.process_time()
            if name.startswith("hub") and args.entry == "committed":
                hub.on_committed(events)
            elif name.startswith("hub"):
                on_event = hub.on_event
                for event in events:
                    on_event(event)
            elif name == "transport.write":
                for (_, _, transport), wire in zip(registered, wires, strict=True):
                    transport.write(wire)
            else:
                for wire in wires:
                    noop.write(wire)
            took = time.process_time() - started
            if perf is not None and name == "hub":
                perf.send("disable")
            for link, protocol, transport in registered:
                protocol.transport = transport
                if hasattr(link.conn, "_direct_transport"):
                    link.conn._direct_transport = transport
            if name.startswith("hub") and FRAMES.direct - direct_before != len(links):
                raise RuntimeError(f"{name}: {FRAMES.direct - direct_before} of {len(links)} "
                                   "frames written directly")
            if rnd:
                samples[name].append(1e6 * took / args.sessions)
    per_frame = {name: round(statistics.median(values), 2) for name, values in samples.items()}
    for name in VARIANTS:
        print(f"{name:>22}: {per_frame[name]:6.2f} us/frame "
              f"({', '.join(f'{v:.2f}' for v in samples[name])})", flush=True)
    child.stdin.close()
    child.kill()
    await child.wait()
    server.should_exit = True
    await asyncio.wait_for(task, 10)
    return {"sessions": args.sessions, "rounds": args.rounds, "versions": args.versions,
            "entry": args.entry,
            "us_per_frame": per_frame}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--versions", choices=["same", "mixed"], default="same")
    parser.add_argument("--entry", choices=["event", "committed"], default="event",
                        help="how the hub gets the events: `Hub.on_event` per event (the "
                        "memory store's hand-off, the Redis echo) or `Hub.on_committed` "
                        "with the batch (a Redis store's own commit)")
    parser.add_argument("--perf-ctl", default="", help="perf record's control FIFOs: CTL,ACK")
    parser.add_argument("--hold", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_nofile()
    import uvloop

    if args.hold:
        uvloop.run(hold(args.hold, args.sessions))
        return 0
    print(json.dumps(uvloop.run(measure(args))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
