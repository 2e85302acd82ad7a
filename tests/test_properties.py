"""Property-based tests of the session layer: random sequences of opens, takeovers, reconnects,
staff commands, acks, progress, client events, submissions, drops, heartbeats and sweeps, run
through the code the server runs (`SessionService`, the candidate channel's `_open` and
`_handle`, the `Hub` and its links) on the memory store and on a private Redis, and checked
after every step against a small reference model written here, and these invariants:

* final states stay final;
* a session never has two live holders (a locked one least of all);
* every change has exactly one history event: seqs consecutive per exam, versions consecutive
  per session, one event per version (an open that re-locks adds its `relocked`), the same
  events once drained to SQL;
* versions only grow.

Two service instances ("processes", each with its own hub and, on Redis, its own store
client) share the store; `race` runs a few changes of one session on both at once and accepts
any serial order of them that explains what was committed (linearisability).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from redis_server import RedisServer

from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal
from realtime.batching import CommitBatcher
from realtime.channels import candidate as channel
from realtime.channels.codec import CODECS, JSON
from realtime.config import Settings
from realtime.db.database import Database
from realtime.drainer import Drainer
from realtime.errors import CloseCode
from realtime.hub.connection import Connection
from realtime.hub.hub import CandidateLink, Hub, holding
from realtime.limits.setup import build_limits
from realtime.presence import NodePresence
from realtime.sessions import FastPath, OpenRefused, SessionService, Target
from realtime.state import machine
from realtime.state.memory import MemoryStore
from realtime.state.model import Action, Event, Exam, ExamSettings, Status
from realtime.state.redis import RedisStore
from realtime.state.store import Commit, CommitResult, StateStore

T = TypeVar("T")

STALE_AFTER, RESUME_GRACE = 15.0, 60.0
T0 = 1_800_000_000.0
SESSIONS = 3
FINAL = (Status.COMPLETED.value, Status.TERMINATED.value)
STAFF = Principal(id="p1", name="Proctor", kind="staff", permissions=ALL_PERMISSIONS)
SYNC_TIMEOUT = 10.0

# A session's fields the model predicts, and the name the store gives each.
COMPARED = (
    "status", "locked", "relock", "authorized", "connected", "reconnects", "notice_id",
    "extra_minutes", "position", "answered", "alerts", "version",
)


class Clock:
    """The one time of a test run: the service's clock and, patched in, the channel's."""

    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        return self.now


CLOCK = Clock()


# -- the reference model ---------------------------------------------------------------------


@dataclass
class Expected:
    """One session as the reference model expects it."""

    status: str = Status.READY.value
    locked: bool = False
    relock: bool = False
    authorized: bool = False
    connected: bool = False
    holder: str = ""  # the name of the connection holding it
    last_seen: float | None = None
    token: str = ""  # the name of the connection whose `opened` carried the valid resume token
    reconnects: int = 0
    notice_id: str = ""
    extra_minutes: int = 0
    started: bool = False  # became active once (a reopen then makes it paused, not ready)
    position: int = 0
    answered: int = 0
    alerts: int = 0
    version: int = 0
    kinds: list[str] = field(default_factory=lambda: ["created"])

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass
class Conn:
    session: int  # index of its session
    state: str = "live"  # live | superseded | ended | refused | gone
    process: int = 0


class Reference:
    """What the spec says should happen, step by step, written independently of
    `realtime.state.machine` (so the two can disagree)."""

    def __init__(self, requires_authorization: bool, lock_sessions: bool) -> None:
        self.requires_authorization = requires_authorization
        self.lock_sessions = lock_sessions
        self.now = T0
        self.sessions = [Expected() for _ in range(SESSIONS)]
        self.conns: dict[str, Conn] = {}

    def copy(self) -> Reference:
        return copy.deepcopy(self)

    def live(self, s: Expected) -> bool:
        return (
            s.connected
            and bool(s.holder)
            and s.last_seen is not None
            and self.now - s.last_seen < STALE_AFTER
        )

    def _bump(self, s: Expected, *kinds: str) -> None:
        s.version += 1
        s.kinds.extend(kinds)

    def open(self, index: int, name: str, token: str | None, process: int = 0) -> str:
        """A new connection `name` opens session `index`; "opened" or the refusal reason."""
        s = self.sessions[index]
        self.conns[name] = Conn(index, "refused", process)
        if s.final:
            s.kinds.append("refused")
            return "closed"
        live = self.live(s)
        token_ok = bool(token) and token == s.token
        recent = live or (s.last_seen is not None and self.now - s.last_seen <= RESUME_GRACE)
        if s.locked and not (token_ok and recent):
            self._bump(s, "refused")  # counts an incident: a change of its own
            return "already_open" if live else "locked"
        for other, conn in self.conns.items():
            if conn.session == index and conn.state == "live" and other != name:
                conn.state = "superseded"
        self.conns[name].state = "live"
        if s.status == Status.READY.value:
            waits = self.requires_authorization and not s.authorized
            s.status = Status.AWAITING.value if waits else Status.ACTIVE.value
            s.started = s.status == Status.ACTIVE.value
        s.connected, s.holder, s.last_seen, s.token = True, name, self.now, name
        kinds = ["reconnected" if token_ok else "opened"]
        if token_ok:
            s.reconnects += 1
        if self.lock_sessions or s.relock:
            if not s.locked:
                kinds.append("relocked")
            s.locked = s.relock = True
        self._bump(s, *kinds)
        return "opened"

    def command(self, action: Action, index: int, params: dict[str, Any]) -> tuple[str, str]:
        """("applied", "sent"|"queued") or ("skipped", reason)."""
        s = self.sessions[index]
        if action is Action.REOPEN:  # the one command for a final session (with a reason)
            if s.status != Status.TERMINATED.value:
                return ("skipped", "invalid_status")
            s.status = "paused" if s.started else "ready"
            s.locked = False
            self._bump(s, action.value)
            return ("applied", "queued")
        if s.final:
            return ("skipped", "final_status")
        was_connected = s.connected
        if action is Action.AUTHORIZE:
            if s.authorized or s.status in ("active", "paused"):
                return ("skipped", "already_authorized")
            s.authorized = True
            if s.status == "awaiting":
                s.status = "active"
                s.started = True
        elif action is Action.PAUSE:
            if s.status != "active":
                return ("skipped", "invalid_status")
            s.status = "paused"
        elif action is Action.RESUME:
            if s.status != "paused":
                return ("skipped", "invalid_status")
            s.status = "active"
        elif action is Action.LOCK:
            if s.locked:
                return ("skipped", "already_locked")
            s.locked = s.relock = True
        elif action is Action.UNLOCK:
            if not s.locked:
                return ("skipped", "not_locked")
            s.locked = False  # `relock` stays: the next open locks it again
        elif action is Action.TERMINATE:
            s.status, s.connected = "terminated", False
            for conn in self.conns.values():
                if conn.session == index and conn.state == "live":
                    conn.state = "ended"
        elif action is Action.EXTEND:
            s.extra_minutes += params["minutes"]
        elif action is Action.NOTICE:
            s.notice_id = params["command_id"]
        elif action is Action.ACKNOWLEDGE_HAND:
            # No rule here raises a hand (raise_hand is tested in test_e2e_alerts.py).
            return ("skipped", "hand_not_raised")
        self._bump(s, action.value)
        return ("applied", "sent" if was_connected else "queued")

    def _holds(self, name: str) -> Expected | None:
        s = self.sessions[self.conns[name].session]
        return s if s.holder == name else None

    def progress(self, name: str, position: int, answered: int) -> bool:
        s = self._holds(name)
        if s is None or s.final:
            return False
        s.position, s.answered, s.last_seen = position, answered, self.now
        s.kinds.append("progress")
        return True

    def client_event(self, name: str) -> bool:
        s = self._holds(name)
        if s is None or s.final:
            return False
        s.alerts += 1
        s.last_seen = self.now
        s.kinds.append("client_event")
        return True

    def ack(self, name: str, command_id: str) -> bool:
        s = self._holds(name)
        if s is None:
            return False
        if command_id == s.notice_id:
            s.notice_id = ""
        s.last_seen = self.now
        s.kinds.append("delivered")
        return True

    def submit(self, name: str) -> bool:
        s = self._holds(name)
        if s is None or s.final or s.status != "active":
            return False
        s.status, s.connected, s.last_seen = "completed", False, self.now
        self.conns[name].state = "ended"
        self._bump(s, "submitted")
        return True

    def drop(self, name: str) -> None:
        """The socket of `name` closed."""
        conn = self.conns[name]
        if conn.state == "live":
            s = self._holds(name)
            if s is not None and s.connected:
                s.connected, s.last_seen = False, self.now
                self._bump(s, "disconnected")
        conn.state = "gone"

    def sweep(self) -> None:
        for s in self.sessions:
            if s.connected and (s.last_seen is None or self.now - s.last_seen > STALE_AFTER):
                s.connected = False
                self._bump(s, "disconnected")

    def heartbeat(self, process: int) -> None:
        """One process refreshes the sessions its connections hold."""
        for name, conn in self.conns.items():
            live = conn.state == "live" and conn.process == process
            s = self._holds(name) if live else None
            if s is None:
                continue
            if s.connected:
                s.last_seen = self.now
            elif not s.final:
                s.connected, s.last_seen = True, self.now
                self._bump(s, "reconnected")


# -- the system under test -------------------------------------------------------------------


class Page:
    """A candidate's browser as the server's `Connection` sees its socket: records frames."""

    client = None  # no peer address
    headers: dict[str, str] = {}  # no User-Agent
    # the server's per-address and per-socket limits, as `realtime serve` builds them
    app = SimpleNamespace(state=SimpleNamespace(limits=build_limits(Settings())))

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.close_code: int | None = None
        # the socket's ASGI scope: its upgrade request's headers are let go once it is open
        self.scope: dict[str, Any] = {"type": "websocket", "headers": [(b"host", b"exam")]}

    async def send_text(self, data: str) -> None:
        self.frames.append(json.loads(data))

    async def send_bytes(self, data: bytes) -> None:  # pragma: no cover - JSON codec only
        raise AssertionError("the JSON codec sends text")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code = code

    def last(self, kind: str) -> dict[str, Any] | None:
        return next((f for f in reversed(self.frames) if f.get("type") == kind), None)


@dataclass
class Live:
    """One open candidate connection: its page, its server-side link and its process."""

    page: Page
    conn: Connection
    link: CandidateLink | None
    process: int


class Process:
    """What one server process holds: a store client, a session service and a hub."""

    def __init__(self, store: StateStore, db: Database, seen: Callable[[Event], None]) -> None:
        self.store = store
        liveness = machine.Liveness(stale_after=STALE_AFTER, resume_grace=RESUME_GRACE)
        self.service = SessionService(store, db, liveness, clock=CLOCK.time)
        self.hub = Hub(fetch_session=self.service.get_session, interest=store)
        self.runtime = SimpleNamespace(
            service=self.service, hub=self.hub, auth=None, presence=NodePresence(store)
        )
        # wired as `create_app` wires them
        store.add_commit_listener(self.hub.on_committed)
        store.add_listener(self.hub.on_event)
        store.add_listener(seen)
        self.seen = 0  # highest seq this process's subscription delivered

    def tasks(self) -> list[asyncio.Task[Any]]:
        pending = [*self.service._tasks, *self.hub._tasks, *self.service.batcher._tasks]
        for links in self.hub.candidates.values():
            pending.extend(link.progress_task for link in links if link.progress_task)
        return [t for t in pending if not t.done()]


class World:
    """Two processes on one store (one Redis, or one memory store) and one SQL database."""

    def __init__(self, redis_url: str | None, db: Database) -> None:
        self.redis_url = redis_url
        self.db = db
        self.prefix = f"p{uuid.uuid4().hex[:10]}:"
        self.processes: list[Process] = []
        self.exam_id = f"exam-{uuid.uuid4().hex[:8]}"
        self.ids: list[str] = []
        self.codes: list[str] = []
        self.drainer: Drainer | None = None

    async def start(self, exam: ExamSettings) -> None:
        shared: StateStore | None = None
        for index in range(2):
            store: StateStore
            if self.redis_url is None:
                store = shared = shared or MemoryStore()
            else:  # the first process commits 2 by 2 (chunks: `RedisStore.commit`)
                store = RedisStore(self.redis_url, prefix=self.prefix,
                                   commit_chunk=2 if index == 0 else 0)
            process = Process(store, self.db, self._seen_by(index))
            self.processes.append(process)
        for store in {id(p.store): p.store for p in self.processes}.values():
            await store.start()
        for process in self.processes:  # as if a dashboard watched it from every process
            await process.store.serve(self.exam_id)
        service = self.processes[0].service
        await service.create_exam(Exam(id=self.exam_id, title="Props", settings=exam))
        created = await service.create_sessions(
            self.exam_id, [{"candidate_id": f"c{i}"} for i in range(SESSIONS)], "staff:p1"
        )
        self.ids = [s["id"] for s in created]
        self.codes = [s["access_code"] for s in created]
        self.drainer = Drainer(self.processes[0].store, self.db)

    def _seen_by(self, index: int) -> Callable[[Event], None]:
        def seen(event: Event) -> None:
            process = self.processes[index]
            process.seen = max(process.seen, event.seq)

        return seen

    async def settle(self) -> None:
        """Wait until every process has received every committed event and finished what it
        started (background answers, progress tasks, resyncs): then the state is quiet."""
        async with asyncio.timeout(SYNC_TIMEOUT):
            while True:
                for process in self.processes:
                    while process.tasks():
                        await asyncio.gather(*process.tasks(), return_exceptions=True)
                _, seq = await self.processes[0].store.snapshot(self.exam_id, ("id",))
                if all(p.seen >= seq for p in self.processes) and not any(
                    p.tasks() for p in self.processes
                ):
                    return
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        for process in self.processes:
            for task in process.tasks():
                task.cancel()
            await asyncio.gather(*process.tasks(), return_exceptions=True)
            await process.service.batcher.close()
        for store in {id(p.store): p.store for p in self.processes}.values():
            await store.close()

    async def sessions(self) -> list[dict[str, Any]]:
        found = await self.processes[0].store.get_sessions(self.exam_id, self.ids)
        assert all(s is not None for s in found)
        return [s for s in found if s is not None]

    async def log(self) -> list[Event]:
        events = await self.processes[0].store.events_since(self.exam_id, 0)
        assert events is not None, "the event log must reach back to the first event"
        return events


# -- the state machine -------------------------------------------------------------------------


@dataclass
class Op:
    """One change in a race."""

    kind: str  # open | command | progress | client_event | ack | submit | drop | sweep | heartbeat
    process: int = 0
    name: str = ""  # the connection (new for an open)
    token: str | None = None  # an open's resume token (by the name it was issued to)
    action: Action | None = None
    params: dict[str, Any] = field(default_factory=dict)
    notice: str = ""  # an ack's command id




# `reduce` is left out: whether it applies depends on the deadline against the clock, which
# this model does not keep; it commits like `extend` (tests/test_state_machine.py has its rules).
ACTIONS = [a for a in Action if a is not Action.REDUCE]
PICK = st.integers(0, 15)  # which of the connections (or commands) there are, cyclically
# An open (with no token or the current one) or a staff command, on process 0 or 1:
# (is an open, process, token, action, minutes).
STAFF_OR_OPEN = st.tuples(
    st.booleans(), st.integers(0, 1), st.sampled_from(["none", "current"]),
    st.sampled_from(ACTIONS), st.integers(1, 30),
)


class SessionMachine(RuleBasedStateMachine):
    redis_url: str | None = None
    db: Database
    loop: asyncio.AbstractEventLoop

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None
        self.model: Reference | None = None
        self.live: dict[str, Live] = {}  # connection name -> what the test holds of it
        self.tokens: dict[str, str] = {}  # connection name -> the resume token it was given
        self.commands: list[tuple[Action, Target, dict[str, Any], dict[str, Any]]] = []
        self.versions = [0] * SESSIONS
        self.finals: dict[int, tuple[str, int]] = {}  # status, reopens so far
        self.counter = itertools.count(1)
        self.conn_numbers = itertools.count(1)

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def teardown(self) -> None:
        if self.world is not None:
            self.run(self.world.close())

    @property
    def w(self) -> World:
        assert self.world is not None
        return self.world

    @property
    def m(self) -> Reference:
        assert self.model is not None
        return self.model

    @initialize(requires_authorization=st.booleans(), lock_sessions=st.booleans())
    def start(self, requires_authorization: bool, lock_sessions: bool) -> None:
        CLOCK.now = T0
        self.world = World(self.redis_url, self.db)
        settings_ = ExamSettings(
            requires_authorization=requires_authorization, lock_sessions=lock_sessions
        )
        self.run(self.world.start(settings_))
        self.model = Reference(requires_authorization, lock_sessions)

    # -- helpers ---------------------------------------------------------------------------

    def names(self, *states: str) -> list[str]:
        return [n for n, c in self.m.conns.items() if c.state in states]

    def new_name(self) -> str:
        return f"k{next(self.conn_numbers)}"

    def token_for(self, index: int, which: str) -> str | None:
        if which == "none":
            return None
        if which == "current":
            return self.m.sessions[index].token or None
        issued = [n for n, c in self.m.conns.items() if c.session == index and n in self.tokens]
        older = [n for n in issued if n != self.m.sessions[index].token]
        return older[0] if older else None

    async def _open(self, index: int, name: str, token: str | None, process: int) -> str:
        """The candidate channel's own `_open`, on a recorded page."""
        page = Page()
        proc = self.w.processes[process]
        conn = Connection(page, CODECS[JSON], 1000)  # type: ignore[arg-type]
        message: dict[str, Any] = {"type": "open", "access_code": self.w.codes[index]}
        if token is not None:
            message["resume_token"] = self.tokens[token]
        link = await channel._open(page, conn, proc.runtime, message)  # type: ignore[arg-type]
        self.live[name] = Live(page, conn, link, process)
        if link is None:
            refused = page.last("refused")
            assert refused is not None and page.close_code == CloseCode.REFUSED, page.frames
            return str(refused["reason"])
        opened = page.last("opened")
        assert opened is not None and opened["session"]["id"] == self.w.ids[index]
        self.tokens[name] = opened["resume_token"]
        return "opened"

    async def _message(self, name: str, message: dict[str, Any]) -> None:
        """A frame from the page of `name`, handled as `_serve` handles it after `open`."""
        live = self.live[name]
        proc = self.w.processes[live.process]
        link = live.link
        assert link is not None and not link.superseded and not link.ended
        try:
            await channel._handle(live.conn, proc.runtime, link, message)  # type: ignore[arg-type]
        except Exception as exc:  # `_serve` answers a RealtimeError with an error frame
            raise AssertionError(f"{message} raised {exc!r}") from exc
        if link.progress_task is not None:
            await link.progress_task

    async def _drop(self, name: str) -> None:
        """The socket of `name` closed: the endpoint's `finally`."""
        live = self.live[name]
        link = live.link
        if link is None:
            return
        proc = self.w.processes[live.process]
        proc.hub.remove_candidate(link)
        if not link.superseded and not link.ended:
            await proc.service.disconnect(link.exam_id, link.session_id, link.conn_id, "closed")

    async def _command(
        self, process: int, action: Action, target: Target, params: dict[str, Any]
    ) -> dict[str, tuple[str, str]]:
        service = self.w.processes[process].service
        result = await service.command(self.w.exam_id, action, target, STAFF, dict(params))
        answer = result.to_dict()
        self.commands.append((action, target, params, answer))
        return self.outcomes(answer)

    def outcomes(self, answer: dict[str, Any]) -> dict[str, tuple[str, str]]:
        found = {a["session_id"]: ("applied", a["delivery"]) for a in answer["applied"]}
        found.update({s["session_id"]: ("skipped", s["reason"]) for s in answer["skipped"]})
        return found

    def params_for(self, action: Action, minutes: int) -> dict[str, Any]:
        params: dict[str, Any] = {"command_id": f"cmd-{next(self.counter)}"}
        if action is Action.EXTEND:
            params["minutes"] = minutes
        if action is Action.NOTICE:
            params["text"] = "Five minutes left"
        if action is Action.REOPEN:
            params["reason"] = "terminated by mistake"
        return params

    def settle(self) -> None:
        self.run(self.w.settle())

    # -- rules: candidates ----------------------------------------------------------------

    @rule(
        index=st.integers(0, SESSIONS - 1),
        token=st.sampled_from(["none", "current", "stale"]),
        process=st.integers(0, 1),
    )
    def open(self, index: int, token: str, process: int) -> None:
        """A page opens session `index` (a first open, a reconnect with its resume token, a
        takeover by another tab, or an old tab with a token that is no longer valid)."""
        name = self.new_name()
        presented = self.token_for(index, token)
        got = self.run(self._open(index, name, presented, process))
        expected = self.m.open(index, name, presented, process)
        assert got == expected, (got, expected)
        self.settle()

    def pick(self, names: list[str], which: int) -> str | None:
        """The `which`-th of `names` (cyclically), or None. Rules draw a plain number and pick
        here: what is live depends on how earlier races came out, and hypothesis needs each
        step to draw the same way whatever the state."""
        return names[which % len(names)] if names else None

    @rule(which=PICK, position=st.integers(0, 200), answered=st.integers(0, 200))
    def progress(self, which: int, position: int, answered: int) -> None:
        name = self.pick(self.names("live"), which)
        if name is None:
            return
        message = {"type": "progress", "position": position, "answered": answered}
        self.send_and_check(name, message, lambda: self.m.progress(name, position, answered))

    @rule(which=PICK)
    def client_event(self, which: int) -> None:
        name = self.pick(self.names("live"), which)
        if name is None:
            return
        message = {"type": "client_event", "name": "blur"}
        self.send_and_check(name, message, lambda: self.m.client_event(name))

    @rule(which=PICK, shown=st.booleans())
    def ack(self, which: int, shown: bool) -> None:
        """The page confirms a command: the notice it shows, or some other command."""
        name = self.pick(self.names("live"), which)
        if name is None:
            return
        link = self.live[name].link
        assert link is not None
        command_id = link.view["notice_id"] if shown else f"cmd-{next(self.counter)}"
        if not command_id:
            command_id = "cmd-0"
        message = {"type": "ack", "command_id": command_id}
        self.send_and_check(name, message, lambda: self.m.ack(name, command_id))

    @rule(which=PICK)
    def submit(self, which: int) -> None:
        name = self.pick(self.names("live"), which)
        if name is None:
            return
        accepted = self.send_and_check(name, {"type": "submit"}, lambda: self.m.submit(name))
        page = self.live[name].page
        if accepted:
            assert page.last("submitted") is not None and page.close_code == CloseCode.COMPLETED

    @rule(which=PICK)
    def drop(self, which: int) -> None:
        """A socket closes (the page went away, or the server closed it)."""
        name = self.pick(self.names("live", "superseded", "ended"), which)
        if name is None:
            return
        self.run(self._drop(name))
        self.m.drop(name)
        self.settle()

    def send_and_check(self, name: str, message: dict[str, Any],
                       model_step: Callable[[], bool]) -> bool:
        """Candidate `name` sends `message`, the model takes the same step (`model_step`, true
        when it accepts it); once settled, a refused change must have been answered with one
        error frame and an accepted one with none. Returns whether the model accepted it."""
        before = len(self.live[name].page.frames)
        self.run(self._message(name, message))
        accepted = model_step()
        self.settle()
        errors = [f for f in self.live[name].page.frames[before:] if f["type"] == "error"]
        assert len(errors) == (0 if accepted else 1), errors
        return accepted

    # -- rules: staff ---------------------------------------------------------------------

    @rule(
        action=st.sampled_from(ACTIONS),
        which=st.one_of(st.integers(0, SESSIONS - 1), st.just("all")),
        minutes=st.integers(1, 30),
        process=st.integers(0, 1),
    )
    def command(self, action: Action, which: int | str, minutes: int, process: int) -> None:
        params = self.params_for(action, minutes)
        if which == "all":
            target, indexes = Target(all=True), list(range(SESSIONS))
        else:
            assert isinstance(which, int)
            target, indexes = Target(session_ids=[self.w.ids[which]]), [which]
        got = self.run(self._command(process, action, target, params))
        expected = {self.w.ids[i]: self.m.command(action, i, params) for i in indexes}
        assert got == expected, (action, got, expected)
        self.settle()

    @rule(which=PICK, process=st.integers(0, 1))
    def retry(self, which: int, process: int) -> None:
        """A staff client retries a command (same command_id): nothing is applied twice and
        the answer is the first one."""
        if not self.commands:
            return
        action, target, params, answer = self.commands[which % len(self.commands)]
        service = self.w.processes[process].service
        again = self.run(service.command(self.w.exam_id, action, target, STAFF, dict(params)))
        assert again.to_dict() == answer
        self.settle()

    # -- rules: races ----------------------------------------------------------------------

    @rule(
        index=st.integers(0, SESSIONS - 1),
        first=STAFF_OR_OPEN,
        second=st.none() | STAFF_OR_OPEN,
        liveness=st.none() | st.tuples(st.sampled_from(["sweep", "heartbeat"]), st.integers(0, 1)),
        page=st.none() | st.sampled_from(["progress", "client_event", "ack", "submit", "drop"]),
    )
    def race(
        self,
        index: int,
        first: tuple[bool, int, str, Action, int],
        second: tuple[bool, int, str, Action, int] | None,
        liveness: tuple[str, int] | None,
        page: str | None,
    ) -> None:
        """Changes of one session at once, spread over both processes: opens (first, resume
        or takeover), staff commands, a sweep or a heartbeat, and something from the page
        holding it. What was committed must be what some serial order of them gives."""
        ops: list[Op] = []
        for is_open, process, token, action, minutes in filter(None, (first, second)):
            if is_open:
                ops.append(Op("open", process, name=self.new_name(),
                              token=self.token_for(index, token)))
            else:
                ops.append(Op("command", process, action=action,
                              params=self.params_for(action, minutes)))
        if liveness is not None:
            ops.append(Op(liveness[0], liveness[1]))
        mine = [n for n in self.names("live") if self.m.conns[n].session == index]
        if page is not None and mine:
            link = self.live[mine[0]].link
            assert link is not None
            ops.append(Op(page, name=mine[0], notice=link.view["notice_id"] or "cmd-0"))
        got = self.run(self._race(index, ops))
        self.settle()
        observed = self.run(self.observe(index))
        tried = []
        for order in itertools.permutations(range(len(ops))):
            model = self.m.copy()
            outcomes: dict[int, Any] = {}
            for i in order:
                outcome = self.apply(model, index, ops[i])
                if outcome is not None:
                    outcomes[i] = outcome
            seen = self.predicted(model, index)
            if outcomes == got and seen == observed:
                self.model = model
                return
            tried.append((order, outcomes, seen))
        raise AssertionError(
            f"no serial order explains the race {ops}: got {got}, observed {observed}, "
            f"tried {tried}"
        )

    async def _race(self, index: int, ops: list[Op]) -> dict[int, Any]:
        async def one(op: Op) -> Any:
            if op.kind == "open":
                return await self._open(index, op.name, op.token, op.process)
            if op.kind == "command":
                assert op.action is not None
                target = Target(session_ids=[self.w.ids[index]])
                return (await self._command(op.process, op.action, target, op.params))[
                    self.w.ids[index]
                ]
            if op.kind == "drop":
                await self._drop(op.name)
                return None
            if op.kind == "sweep":
                await self.w.processes[op.process].service.sweep_stale(self.w.exam_id)
                return None
            if op.kind == "heartbeat":
                await self._heartbeat(op.process)
                return None
            message: dict[str, Any] = {"type": op.kind}
            if op.kind == "progress":
                message.update(position=7, answered=5)
            elif op.kind == "client_event":
                message["name"] = "blur"
            elif op.kind == "ack":
                message["command_id"] = op.notice
            await self._message(op.name, message)
            return None

        results = await asyncio.gather(*(one(op) for op in ops))
        return {i: r for i, r in enumerate(results) if r is not None}

    def apply(self, model: Reference, index: int, op: Op) -> Any:
        """`op` on the reference model; its outcome where the test can see one."""
        if op.kind == "open":
            return model.open(index, op.name, op.token, op.process)
        if op.kind == "command":
            assert op.action is not None
            return model.command(op.action, index, op.params)
        if op.kind == "progress":
            model.progress(op.name, 7, 5)
        elif op.kind == "client_event":
            model.client_event(op.name)
        elif op.kind == "ack":
            model.ack(op.name, op.notice)
        elif op.kind == "submit":
            model.submit(op.name)
        elif op.kind == "drop":
            model.drop(op.name)
        elif op.kind == "sweep":
            model.sweep()
        elif op.kind == "heartbeat":
            model.heartbeat(op.process)
        return None

    async def observe(self, index: int) -> dict[str, Any]:
        [session] = await self.w.processes[0].store.get_sessions(
            self.w.exam_id, [self.w.ids[index]]
        )
        assert session is not None
        holders = {
            live.link.conn_id: name for name, live in self.live.items() if live.link is not None
        }
        seen = {k: session[k] for k in COMPARED}
        seen["holder"] = holders.get(session["conn_id"], "")
        seen["last_seen"] = session["last_seen"]
        seen["kinds"] = [e.kind for e in await self.w.log() if e.session_id == session["id"]]
        return seen

    def predicted(self, model: Reference, index: int) -> dict[str, Any]:
        expected = model.sessions[index]
        seen = {k: getattr(expected, k) for k in COMPARED}
        seen["holder"] = expected.holder
        seen["last_seen"] = expected.last_seen
        seen["kinds"] = list(expected.kinds)
        return seen

    # -- rules: time and liveness ---------------------------------------------------------

    @rule(seconds=st.sampled_from([1, 10, 16, 70]))
    def time_passes(self, seconds: int) -> None:
        CLOCK.now += seconds
        self.m.now = CLOCK.now

    @rule()
    def heartbeat(self) -> None:
        """Each process refreshes the sessions it holds (as `run_heartbeat` does)."""
        for process in range(len(self.w.processes)):
            self.run(self._heartbeat(process))
            self.m.heartbeat(process)
        self.settle()

    async def _heartbeat(self, process: int) -> None:
        proc = self.w.processes[process]
        held = [link for link in proc.hub.live_candidates() if holding(link)]
        await proc.service.touch([(k.exam_id, k.session_id, k.conn_id) for k in held])

    @rule(process=st.integers(0, 1))
    def sweep(self, process: int) -> None:
        """The sweeper disconnects sessions whose holder went silent."""
        self.run(self.w.processes[process].service.sweep_stale(self.w.exam_id))
        self.m.sweep()
        self.settle()

    @rule()
    def drain(self) -> None:
        """The drainer writes the outbox to SQL: the SQL history is the event log, per
        session, with no gap and no duplicate."""
        drainer = self.w.drainer
        assert drainer is not None
        self.run(drainer.drain_all())
        log = self.run(self.w.log())
        for sid in self.w.ids:
            history = self.run(self.w.db.history(sid))
            mine = [(e.seq, e.kind) for e in log if e.session_id == sid]
            assert [(e.seq, e.kind) for e in history] == mine
        assert self.run(self.w.db.last_seq(self.w.exam_id)) == (log[-1].seq if log else 0)
        assert self.run(self.w.processes[0].store.outbox_pending(self.w.exam_id)) == 0

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        if self.world is None:
            return
        holders = {
            live.link.conn_id: name for name, live in self.live.items() if live.link is not None
        }
        for index, (actual, expected) in enumerate(
            zip(self.run(self.w.sessions()), self.m.sessions, strict=True)
        ):
            got = {k: actual[k] for k in COMPARED}
            want = {k: getattr(expected, k) for k in COMPARED}
            assert got == want, (index, got, want)
            assert holders.get(actual["conn_id"], "") == expected.holder, index
            assert actual["last_seen"] == expected.last_seen, index

    @invariant()
    def final_states_stay_final(self) -> None:
        """Completed stays completed; terminated stays terminated until a staff `reopen`
        (one more than when it was seen terminated) makes it paused or ready again."""
        if self.world is None:
            return
        for index, session in enumerate(self.run(self.w.sessions())):
            reopens = self.m.sessions[index].kinds.count("reopen")
            if index in self.finals and session["status"] != self.finals[index][0]:
                status, seen_reopens = self.finals[index]
                assert status == Status.TERMINATED.value and reopens > seen_reopens, (
                    index, status, session["status"])
                del self.finals[index]
            if session["status"] in FINAL:
                self.finals[index] = (session["status"], reopens)

    @invariant()
    def versions_only_grow(self) -> None:
        if self.world is None:
            return
        for index, session in enumerate(self.run(self.w.sessions())):
            assert session["version"] >= self.versions[index]
            self.versions[index] = session["version"]

    @invariant()
    def never_two_live_holders(self) -> None:
        """However many tabs opened a session, at most one connection holds it, and it is the
        one the store names; every other was told why it lost it."""
        if self.world is None:
            return
        sessions = self.run(self.w.sessions())
        for index, sid in enumerate(self.w.ids):
            holding_links = [
                live.link
                for live in self.live.values()
                if live.link is not None
                and live.link.session_id == sid
                and self.w.processes[live.process].hub.holds(live.link)
                and holding(live.link)
            ]
            assert len(holding_links) <= 1, (index, [lk.conn_id for lk in holding_links])
            for link in holding_links:
                assert link.conn_id == sessions[index]["conn_id"]
        for name, conn in self.m.conns.items():
            live = self.live[name]
            link = live.link
            if conn.state == "refused":
                assert link is None
                continue
            assert link is not None
            state = "superseded" if link.superseded else "ended" if link.ended else "live"
            if conn.state != "gone":
                assert state == conn.state, (name, state, conn.state)
            if state == "superseded":
                assert live.page.last("superseded") is not None
                assert live.page.close_code == CloseCode.SUPERSEDED
            if state == "ended":
                assert live.page.close_code in (CloseCode.TERMINATED, CloseCode.COMPLETED)

    @invariant()
    def one_event_per_change(self) -> None:
        """The event log: seqs 1..n without gap or duplicate; per session the kinds the model
        predicts, and exactly one event per version (plus `relocked` with its open)."""
        if self.world is None:
            return
        log = self.run(self.w.log())
        assert [e.seq for e in log] == list(range(1, len(log) + 1))
        sessions = self.run(self.w.sessions())
        for index, sid in enumerate(self.w.ids):
            mine = [e for e in log if e.session_id == sid]
            assert [e.kind for e in mine] == self.m.sessions[index].kinds, index
            versioned = [  # `created` carries the new session whole, version 0 included
                (e.changes["version"], e.kind)
                for e in mine
                if "version" in e.changes and e.kind != "created"
            ]
            by_version: dict[int, list[str]] = {}
            for version, kind in versioned:
                by_version.setdefault(version, []).append(kind)
            assert list(by_version) == list(range(1, sessions[index]["version"] + 1)), versioned
            for kinds in by_version.values():
                assert len(kinds) == 1 or (
                    len(kinds) == 2
                    and kinds[0] in ("opened", "reconnected")
                    and kinds[1] == "relocked"
                ), versioned


# -- the tests -------------------------------------------------------------------------------


PROPERTY_SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture
def loop_and_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[
    tuple[asyncio.AbstractEventLoop, Database]
]:
    """One event loop and one SQLite database for all examples of a run (each example has its
    own exam); the channel reads the test's clock."""
    monkeypatch.setattr(channel, "time", CLOCK)
    loop = asyncio.new_event_loop()
    db = loop.run_until_complete(Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"))
    loop.run_until_complete(db.create_all())
    yield loop, db
    loop.run_until_complete(db.close())
    loop.close()


def machine_on(url: str | None, loop: asyncio.AbstractEventLoop, db: Database) -> type:
    return type(
        "SessionMachineOn" + ("Redis" if url else "Memory"),
        (SessionMachine,),
        {"redis_url": url, "loop": loop, "db": db},
    )


@pytest.mark.timeout(600)  # passing takes well under a minute; a failure is shrunk first
def test_sessions_agree_with_the_model_on_the_memory_store(
    loop_and_db: tuple[asyncio.AbstractEventLoop, Database],
) -> None:
    loop, db = loop_and_db
    run_state_machine_as_test(machine_on(None, loop, db), settings=PROPERTY_SETTINGS)


@pytest.mark.timeout(600)
def test_sessions_agree_with_the_model_on_redis(
    loop_and_db: tuple[asyncio.AbstractEventLoop, Database], redis_server: RedisServer
) -> None:
    loop, db = loop_and_db
    redis_server.start()
    run_state_machine_as_test(machine_on(redis_server.url, loop, db), settings=PROPERTY_SETTINGS)


# -- regressions found by the machine ------------------------------------------------------------


class PausingBatcher(CommitBatcher):
    """A batcher that runs `before` once, just before it commits an event of `kind`: the
    moment another process changes the session between this one's read and its commit."""

    def __init__(
        self, store: StateStore, before: Callable[[], Awaitable[Any]], kind: str = "refused"
    ) -> None:
        super().__init__(store)
        self.before: Callable[[], Awaitable[Any]] | None = before
        self.kind = kind

    async def commit(self, commits: list[Commit], linger: float = 0.0) -> list[CommitResult]:
        hit = any(e.kind == self.kind for c in commits for e in c.events)
        if hit and self.before is not None:
            before, self.before = self.before, None
            await before()
        return await super().commit(commits, linger)


@dataclass
class Race:
    """Two processes' SessionServices on one store and database. `first` made the exam
    "e-race" with one session, `sid`; `second(move)` is the other process, whose commit
    pauses for `move` (the first process's, or anyone's) just before it commits the kind of
    event the race is about. On the `clock` when one is given, else on real time."""

    store: StateStore
    db: Database
    liveness: machine.Liveness
    clock: Clock | None
    first: SessionService
    exam: Exam
    sid: str
    seconds: list[SessionService] = field(default_factory=list)

    def second(self, move: Callable[[], Awaitable[Any]], kind: str = "refused") -> SessionService:
        service = SessionService(self.store, self.db, self.liveness, clock=self.first.clock,
                                 batcher=PausingBatcher(self.store, move, kind=kind))
        self.seconds.append(service)
        return service

    def heard_again(self, conn_id: str) -> Callable[[], Awaitable[None]]:
        """The move of a holder (on `conn_id`, in the first process) heard from again: its
        page reports progress."""
        clock = self.clock
        assert clock is not None

        async def progress() -> None:
            outcome = await self.first.candidate_update(
                self.exam.id, self.sid,
                lambda s: machine.report_progress(s, conn_id, "c", 3, 2, clock.now),
                FastPath({"id": self.sid, "exam_id": self.exam.id, "status": "active",
                          "conn_id": conn_id}, {"conn_id": conn_id}),
            )
            assert isinstance(outcome, machine.Transition)

        return progress


@contextlib.asynccontextmanager
async def race(store: StateStore, tmp_path: Path, clock: Clock | None = None,
               settings: ExamSettings | None = None) -> AsyncIterator[Race]:
    """A Race on a fresh SQLite database; its services' batchers and the database are closed
    after."""
    db = await Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    await db.create_all()
    liveness = machine.Liveness(stale_after=STALE_AFTER, resume_grace=RESUME_GRACE)
    first = SessionService(store, db, liveness,
                           clock=clock.time if clock is not None else time.time)
    try:
        exam = await first.create_exam(
            Exam(id="e-race", title="Race", settings=settings or ExamSettings())
        )
        [created] = await first.create_sessions(exam.id, [{"candidate_id": "c1"}], "staff:p")
        setup = Race(store, db, liveness, clock, first, exam, created["id"])
        try:
            yield setup
        finally:
            for second in setup.seconds:
                await second.batcher.close()
    finally:
        await first.batcher.close()
        await db.close()


async def test_an_unlock_racing_an_open_is_not_followed_by_a_refusal(
    store: StateStore, tmp_path: Path
) -> None:
    """A page opens a locked session while a proctor (on another process) unlocks it: the
    open is decided again on the unlocked session and succeeds. It was refused as "locked",
    with the refusal recorded after the unlock in the history."""
    async with race(store, tmp_path) as r:
        proctor_side, exam, sid = r.first, r.exam, r.sid
        target = Target(session_ids=[sid])
        locked = await proctor_side.command(exam.id, Action.LOCK, target, STAFF)
        assert len(locked.applied) == 1

        async def unlock() -> None:
            result = await proctor_side.command(exam.id, Action.UNLOCK, target, STAFF)
            assert len(result.applied) == 1

        candidate_side = r.second(unlock)
        opened = await candidate_side.open(exam.id, sid, "conn-1", "")
        assert opened.session["conn_id"] == "conn-1" and opened.relocked
        events = await store.events_since(exam.id, 0)
        assert events is not None
        assert [e.kind for e in events] == ["created", "lock", "unlock", "opened", "relocked"]


async def test_a_refusal_is_decided_on_the_holder_as_last_heard(
    store: StateStore, tmp_path: Path
) -> None:
    """A second tab opens a locked session whose holder has been silent for a while, just as
    the holder's progress arrives (a change without a version): the refusal says the
    session is open elsewhere, as it is when the refusal is recorded. It said "locked", as
    if nobody held it, after the progress in the history."""
    clock = Clock()
    async with race(store, tmp_path, clock, ExamSettings(lock_sessions=True)) as r:
        exam, sid = r.exam, r.sid
        await r.first.open(exam.id, sid, "conn-1", "")
        clock.now += STALE_AFTER + 1  # the holder has been silent: not live any more
        # the holder's page is heard from again, just as the second tab's refusal commits
        second_tab = r.second(r.heard_again("conn-1"))
        with pytest.raises(OpenRefused) as refused:
            await second_tab.open(exam.id, sid, "conn-2", "")
        assert refused.value.reason == "already_open"
        events = await store.events_since(exam.id, 0)
        assert events is not None
        assert [(e.kind, e.details.get("reason")) for e in events][-2:] == [
            ("progress", None), ("refused", "already_open")
        ]


async def test_a_sweep_racing_the_holders_progress_leaves_it_connected(
    store: StateStore, tmp_path: Path
) -> None:
    """The sweeper (another process) finds a holder silent for longer than `stale_after` just
    as its progress arrives: the session stays connected. It was marked disconnected after
    the progress ("holder lost" although it had just been heard), until the next heartbeat."""
    clock = Clock()
    async with race(store, tmp_path, clock) as r:
        exam, sid = r.exam, r.sid
        await r.first.open(exam.id, sid, "conn-1", "")
        clock.now += STALE_AFTER + 1  # silent for too long: the sweeper's candidate
        # heard from again, between the sweeper's read and commit
        sweeper = r.second(r.heard_again("conn-1"), kind="disconnected")
        assert await sweeper.sweep_stale(exam.id) == 0
        [session] = await store.get_sessions(exam.id, [sid])
        assert session is not None and session["connected"] is True
        events = await store.events_since(exam.id, 0)
        assert events is not None and events[-1].kind == "progress"


async def test_an_ack_of_a_notice_replaced_meanwhile_keeps_the_version(
    store: StateStore, tmp_path: Path
) -> None:
    """The page acks the notice it shows just as a proctor (another process) sends a new one:
    the ack clears nothing and, like every ack, makes no new version. It took the versioned
    way when its guard failed, so the version depended on the timing."""
    async with race(store, tmp_path) as r:
        proctor_side, exam, sid = r.first, r.exam, r.sid
        target = Target(session_ids=[sid])
        opened = await proctor_side.open(exam.id, sid, "conn-1", "")
        first = await proctor_side.command(
            exam.id, Action.NOTICE, target, STAFF, {"text": "one", "command_id": "n-1"}
        )
        assert len(first.applied) == 1

        async def second_notice() -> None:
            result = await proctor_side.command(
                exam.id, Action.NOTICE, target, STAFF, {"text": "two", "command_id": "n-2"}
            )
            assert len(result.applied) == 1

        page_side = r.second(second_notice, kind="delivered")
        view = {**opened.session, "notice_id": "n-1"}  # what the page's link knows: notice one
        outcome = await page_side.candidate_update(
            exam.id, sid,
            lambda s: machine.acknowledge(s, "conn-1", "c", "n-1", 1_800_000_000.0),
            FastPath(view, {"conn_id": "conn-1", "notice_id": "n-1"}, live_only=False),
        )
        assert isinstance(outcome, machine.Transition)
        assert "notice_id" not in outcome.changes  # notice two is still to be acked
        [session] = await store.get_sessions(exam.id, [sid])
        assert session is not None
        assert session["notice_id"] == "n-2"
        events = await store.events_since(exam.id, 0)
        assert events is not None
        assert [e.kind for e in events][-2:] == ["notice", "delivered"]
        assert "version" not in events[-1].changes
        assert session["version"] == events[-2].changes["version"]
