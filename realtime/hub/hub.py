"""This process's connections and the fan-out of committed events to them.

The state store calls `Hub.on_event` once per committed event (from one subscription per
process). The hub encodes a dashboard delta once per codec and hands it to every watcher of
the exam, and turns commands into messages for the candidate connection holding the session.

Both kinds of connection are registered *before* their first state read (open, snapshot) and
buffer events until that read has been sent, so nothing committed in between is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol, cast

from realtime.auth.principal import Principal
from realtime.channels.codec import Encoded, Spliced, Template
from realtime.errors import CloseCode, ErrorCode
from realtime.hub.connection import Connection
from realtime.identity import scope
from realtime.state.model import (
    HIDDEN_FROM_CANDIDATE,
    PRIVATE_FIELDS,
    Action,
    Event,
    EventKind,
    candidate_view,
)

log = logging.getLogger(__name__)

COMMAND_KINDS = frozenset(a.value for a in Action)
TERMINATE = Action.TERMINATE.value
# Fields of its session a candidate link keeps in its own view: the command ids an `ack`
# may clear (decided without a read), and the fields below.
ACK_FIELDS = ("notice_id", "status_command_id", "lock_command_id")
VIEW_FIELDS = ("status", "alerts", *ACK_FIELDS)
# The heartbeat visits 1/100 of the connections at a time (every 50 ms at the default 5 s):
# at 5,000 sockets a tick sends 50 pings and gets 50 pongs back, a few milliseconds of work.
# At 1/25 a tick's 200 pings and the wave of pongs after them held the event loop for 10-20
# ms each, five times a second (docs/performance.md, "long stretches on the event loop").
HEARTBEAT_TICKS = 100
# A tick later than this fraction of the ping timeout was held up by a stall; below it, the
# lateness is a timer's wake-up latency on a busy machine (see `Heartbeat`).
TICK_LATENESS_TOLERATED = 0.025
# Candidate traffic: what every page sends on its own (a progress report every 5 s in the hall
# phase, an ack after every command, the page's alerts). Under a steady flow, one delta frame
# per event to every dashboard was most of what such a message cost this process (a socket
# write each: docs/performance.md, "eighth session"), so these reach dashboards at most once
# per `DELTA_PACE` seconds, together; the first after a quiet spell goes at once, and any other
# event takes what waits with it at once (seq order is kept: one frame, in order).
PACED_KINDS = frozenset({EventKind.PROGRESS.value, EventKind.DELIVERED.value,
                         EventKind.CLIENT_EVENT.value})
DELTA_PACE = 0.01
# A Redis store's own bulk commit: frames taken (each event's message made) before they are
# written (`Hub.on_committed`). Far below the young collections' threshold
# (`gcpolicy.GEN0_THRESHOLD`), counting a spliced message and its values as two objects.
TAKEN_MAX = 512


def public_event(event: Event) -> dict[str, Any]:
    data = event.to_dict()
    if PRIVATE_FIELDS.intersection(event.changes):
        data["changes"] = {k: v for k, v in event.changes.items() if k not in PRIVATE_FIELDS}
    return data


def candidate_command(event: Event) -> dict[str, Any]:
    """The message a candidate's page gets for a staff command."""
    details = {k: v for k, v in event.details.items() if k != "command_id"}
    changes = {k: v for k, v in event.changes.items() if k not in HIDDEN_FROM_CANDIDATE}
    return {
        "type": "command",
        "command_id": event.details.get("command_id", ""),
        "action": event.kind,
        "details": details,
        "session": changes,
        "at": event.at,
    }


MAX_HOLES = 3  # per-session values a bulk command's candidate messages may differ in


class CommandFrames:
    """The `command` message of each candidate of a bulk command, without building and
    encoding thousands of near-identical messages.

    The events of one bulk command reach the hub one after another, and as the candidates
    see them they are the same but for a few of their session's changes (`version`, when
    the sessions have not all changed as often; a resume's `deadline`), if any. From the
    second such event in a row on, each one's message is either the previous one itself
    (its frames already encoded), or a `Spliced` message of a `Template` with holes at the
    changes that differ, encoded once per codec. Anything else (a targeted command, a
    different shape) is encoded whole, as before."""

    __slots__ = ("_encoded", "_event", "_probe", "_same", "_template")

    def __init__(self) -> None:
        self._event: Event | None = None  # the last event asked for, and its message
        self._encoded: Encoded | None = None
        self._same = False  # the run's messages are all alike: `_encoded`
        self._template: Template | None = None  # or they differ in its holes
        self._probe: dict[str, Any] = {}  # the run's changes, the holes overwritten per check

    def message(self, event: Event) -> Encoded:
        last, encoded = self._event, self._encoded
        if event is last and encoded is not None:
            return encoded  # the same event for another link of the session
        like: Encoded | None = None
        if (
            last is not None
            and encoded is not None
            and event.kind == last.kind
            and event.at == last.at
            and len(event.changes) == len(last.changes)
            and event.details == last.details
        ):
            like = self._like(event, last, encoded)
        if like is None:  # a run of its own starts here
            self._same, self._template = False, None
            like = Encoded(candidate_command(event))
        self._event, self._encoded = event, like
        return like

    def _like(self, event: Event, last: Event, encoded: Encoded) -> Encoded | None:
        """The message of `event`, which is like `last` (whose message is `encoded`) but
        perhaps for a few changes; None if it differs in more."""
        changes = event.changes
        if self._same:
            return encoded if changes == self._probe else None
        template = self._template
        if template is None:  # the second of a run: which changes differ?
            probe = dict(last.changes)
            if changes.keys() != probe.keys():
                return None
            holes = tuple(k for k, v in probe.items() if changes[k] != v)
            if not holes:
                self._same, self._probe = True, probe
                return encoded
            if len(holes) > MAX_HOLES or HIDDEN_FROM_CANDIDATE.intersection(holes):
                return None
            template = Template(candidate_command(last), "session", holes)
            self._template, self._probe = template, probe
            return Spliced(template, tuple([changes[key] for key in holes]))
        probe, keys = self._probe, template.keys
        if len(keys) == 1:  # the usual case: only the version differs
            values: tuple[Any, ...] = (changes.get(keys[0], _MISSING),)
            probe[keys[0]] = values[0]
        else:
            values = tuple([changes.get(key, _MISSING) for key in keys])
            probe.update(zip(keys, values, strict=True))
        if probe != changes:  # other changes differ too (or a hole is missing): not like it
            return None
        return Spliced(template, values)


_MISSING = object()


class CandidateLink:
    """A candidate connection as the hub sees it. Slotted: there is one per socket."""

    __slots__ = (
        "actor",
        "conn",
        "conn_id",
        "early",
        "ended",
        "exam_id",
        "on_gap",
        "pending_progress",
        "progress_task",
        "ready",
        "rtt_ms",
        "served",
        "session_id",
        "slot",
        "superseded",
        "version",
        "view",
    )

    def __init__(self, conn: Connection, exam_id: str, session_id: str, conn_id: str) -> None:
        self.conn = conn
        self.exam_id = exam_id
        self.session_id = session_id
        self.conn_id = conn_id
        self.served = False  # attached through `Hub.attach_candidate`
        self.actor = f"candidate:{session_id}"  # set from the session when it opens
        self.ready = False
        self.version = 0
        self.early: list[Event] = []
        self.rtt_ms: float | None = None
        self.superseded = False
        self.ended = False  # terminated or completed: nothing more to do
        self.on_gap: Callable[[CandidateLink], None] | None = None
        self.slot = 0  # which heartbeat tick visits this link
        # The fields of its session this connection decides its own traffic on (progress,
        # acks) without reading the store; kept current from the session's events.
        self.pending_progress: tuple[int, int, float | None, float] | None = None
        self.progress_task: asyncio.Task[None] | None = None
        self.view: dict[str, Any] = {
            "exam_id": exam_id, "id": session_id, "status": "", "conn_id": conn_id,
            "notice_id": "", "alerts": 0, "status_command_id": "", "lock_command_id": "",
        }

    def activate(self, version: int, session: dict[str, Any] | None = None) -> None:
        """The `opened` message is sent: deliver what arrived meanwhile, then go live."""
        self.version = version
        if session is not None:
            for key in VIEW_FIELDS:
                self.view[key] = session.get(key, self.view[key])
        self.ready = True
        early, self.early = self.early, []
        for event in early:
            self.handle(event)

    def handle(self, event: Event) -> None:
        message = self.take(event)
        if message is not None:
            self.conn.send_encoded(message)
            if self.ended:  # a terminate: its frame, then the close
                self.conn.close(CloseCode.TERMINATED, "terminated")

    def take(self, event: Event) -> Encoded | None:
        """Everything `handle` does with `event` but writing the command's frame: returns
        that frame's message (None: nothing to write). After a terminate's (`ended`), the
        caller closes the connection."""
        if not self.ready:
            self.early.append(event)
            return None
        if self.ended or self.superseded:
            # Its page was told and is closing: a later change (say a reopen, then an open
            # elsewhere) is not its business; "terminated" must not turn into "superseded".
            return None
        changes = event.changes
        version = changes.get("version")
        if version is not None:
            known = self.version
            if version <= known:
                return None
            if version > known + 1 and self.on_gap is not None:
                self.on_gap(self)  # missed a change: the page gets the whole state again
            self.version = version
        view = self.view
        if "status" in changes:
            view["status"] = changes["status"]
        for key in ACK_FIELDS:
            if key in changes:
                view[key] = changes[key]
        if "alerts" in changes:  # a counter: an echo of an older commit must not lower it
            view["alerts"] = max(view["alerts"], changes["alerts"])
        holder = changes.get("conn_id")
        if holder is not None and holder != self.conn_id:
            self.superseded = True
            self.conn.send({"type": "superseded", "message": "the session was opened elsewhere"})
            self.conn.close(CloseCode.SUPERSEDED, "superseded")
            return None
        kind = event.kind
        if kind in COMMAND_KINDS:
            if kind == TERMINATE:
                self.ended = True
            return command_frames.message(event)
        return None


command_frames = CommandFrames()  # one process, one event loop: shared by every link


def _write(conns: list[Connection], messages: list[Encoded]) -> None:
    """Each connection's message, in order (`Hub.on_committed`)."""
    for conn, message in zip(conns, messages, strict=True):
        try:
            conn.send_encoded(message)
        except Exception:
            log.exception("candidate dispatch failed")


def delta_message(events: list[Event]) -> dict[str, Any]:
    """Live dashboard deltas: one `event`, or an `event_batch` for a burst (a bulk command)."""
    if len(events) == 1:
        return {"type": "event", "event": public_event(events[0])}
    return {
        "type": "event_batch",
        "exam_id": events[0].exam_id,
        "events": [public_event(e) for e in events],
        "seq": events[-1].seq,
    }


class Outlet(Protocol):
    """Where a watcher's messages go: a dashboard socket (`Connection`) or an event stream
    (`realtime.channels.event_stream.EventStream`). Sending never waits; a full outlet closes
    itself (its client resumes from its last seq)."""

    closing: bool

    def send(self, message: dict[str, Any]) -> bool: ...

    def send_encoded(self, message: Encoded) -> bool: ...

    def close(self, code: int, reason: str = "") -> None: ...


class Watcher:
    """A dashboard connection (or event stream) subscribed to one exam."""

    def __init__(
        self,
        conn: Outlet,
        exam_id: str,
        principal: Principal,
        exam_groups: list[str],
    ) -> None:
        self.conn = conn
        self.exam_id = exam_id
        self.principal = principal
        self.exam_groups = exam_groups
        self.ready = False
        self.last_seq = 0
        self.buffer: list[Event] = []
        self.groups: dict[str, str] = {}  # session id -> candidate group, for scope checks
        self.served = False  # attached through `Hub.attach_watcher`

    def visible(self, event: Event) -> bool:
        """Whether this dashboard may see the event (`scope`): checked for every delta."""
        if self.principal.unrestricted:
            return True
        group = event.changes.get("group")
        if isinstance(group, str):
            self.groups[event.session_id] = group
        return scope.sees_session(
            self.principal, self.exam_groups, self.groups.get(event.session_id, "")
        )

    def regroup(self, exam_groups: list[str]) -> None:
        """The exam's groups changed. If that changes whether this dashboard manages the exam,
        what it was shown no longer matches its scope: it must subscribe again (4403)."""
        if list(exam_groups) == list(self.exam_groups):
            return
        before = scope.manages(self.principal, self.exam_groups)
        self.exam_groups = list(exam_groups)
        if before != scope.manages(self.principal, self.exam_groups):
            self.conn.send({"type": "error", "code": str(ErrorCode.FORBIDDEN),
                            "message": "the exam's groups changed; subscribe again"})
            self.conn.close(CloseCode.FORBIDDEN, "scope changed")

    def activate(self, seq: int) -> None:
        """The snapshot (or catch-up) up to `seq` is sent: deliver what arrived meanwhile."""
        self.last_seq = seq
        self.ready = True
        buffered, self.buffer = self.buffer, []
        if buffered:
            self.handle_batch(buffered, None)

    def handle(self, event: Event, encoded: Encoded | None) -> None:
        self.handle_batch([event], encoded)

    def handle_batch(self, events: list[Event], shared: Encoded | None) -> None:
        """Deliver consecutive events of the exam; `shared` is their message, encoded once for
        every watcher that gets all of them (others get their own, filtered one)."""
        if not self.ready:
            self.buffer.extend(events)
            return
        fresh = [e for e in events if e.seq > self.last_seq]
        if not fresh:
            return
        for event in fresh:
            if event.seq != self.last_seq + 1:
                # This process missed events (e.g. its Redis subscription was re-established):
                # the client reconnects with its last seq and gets exactly what it missed.
                self.conn.close(CloseCode.RESYNC, "resync")
                return
            self.last_seq = event.seq
        # an unrestricted dashboard sees every event: no call per event of a bulk's thousands
        visible = fresh if self.principal.unrestricted else [e for e in fresh if self.visible(e)]
        if not visible:
            return
        if shared is not None and len(visible) == len(events):
            self.conn.send_encoded(shared)
        else:
            self.conn.send(delta_message(visible))


FetchSession = Callable[[str, str], Awaitable[dict[str, Any]]]


class Interest(Protocol):
    """Tells the state store which exams this process serves (fan-out by exam)."""

    async def serve(self, exam_id: str) -> None: ...

    def release(self, exam_id: str) -> None: ...


class Hub:
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        fetch_session: FetchSession | None = None,
        interest: Interest | None = None,
        delta_pace: float = DELTA_PACE,
    ) -> None:
        self.interest = interest
        self.delta_pace = delta_pace  # see PACED_KINDS
        self.candidates: dict[str, list[CandidateLink]] = {}
        self.watchers: dict[str, set[Watcher]] = {}
        self.clock = clock
        self.fetch_session = fetch_session
        self.events_seen = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: dict[str, list[Event]] = {}
        self._flush_scheduled = False  # a flush at the next loop turn
        self._paced: asyncio.TimerHandle | None = None  # a flush when the pace allows
        self._last_flush = -math.inf  # time.monotonic() of the last flush that sent deltas
        self._next_slot = 0
        self._slots: list[set[CandidateLink]] = [set() for _ in range(HEARTBEAT_TICKS)]
        # Liveness counters, for metrics (seconds for the lag and stall figures).
        self.pings_sent = 0
        self.ping_timeouts = 0  # links closed with 4009 for leaving pings unanswered
        self.heartbeat_lag_last = 0.0  # how late the last heartbeat tick ran
        self.heartbeat_lag_max = 0.0
        self.heartbeat_stalled = 0.0  # total lateness: time that counted against nobody
        self.touch_calls = 0  # store calls refreshing held sessions that succeeded
        self.touch_failures = 0
        self.touched = 0  # sessions refreshed by them

    # -- registration ------------------------------------------------------------------------

    async def attach_candidate(self, link: CandidateLink) -> None:
        """Serve the link's exam (its events reach this process from now on), then add it.
        Call before reading the session: nothing committed after the read can be missed."""
        if self.interest is not None:
            await self.interest.serve(link.exam_id)
            link.served = True
        self.add_candidate(link)

    async def attach_watcher(self, watcher: Watcher) -> None:
        """The same for a dashboard, before its snapshot is read."""
        if self.interest is not None:
            await self.interest.serve(watcher.exam_id)
            watcher.served = True
        self.add_watcher(watcher)

    def add_candidate(self, link: CandidateLink) -> None:
        link.on_gap = self._resync_candidate
        self.candidates.setdefault(link.session_id, []).append(link)
        link.slot = self._next_slot
        self._next_slot = (self._next_slot + 1) % HEARTBEAT_TICKS
        self._slots[link.slot].add(link)

    def heartbeat_slice(self, tick: int) -> list[CandidateLink]:
        """The open candidate links the heartbeat visits at `tick`."""
        return [link for link in self._slots[tick] if link.ready]

    def holds(self, link: CandidateLink) -> bool:
        """The link is still registered here (its connection has not ended)."""
        return link in self._slots[link.slot]

    def holds_session(self, session_id: str, conn_id: str) -> bool:
        """An open connection here holds `session_id` as `conn_id` (for the sweeper: such a
        holder is alive whatever its `last_seen` says)."""
        return any(link.conn_id == conn_id and link.ready
                   for link in self.candidates.get(session_id, ()))

    def _resync_candidate(self, link: CandidateLink) -> None:
        if self.fetch_session is None:
            return
        fetch = self.fetch_session

        async def resync() -> None:
            try:
                session = await fetch(link.exam_id, link.session_id)
            except Exception:
                log.exception("resync of %s failed", link.session_id)
                return
            link.version = max(link.version, int(session["version"]))
            link.view["status"] = session.get("status", link.view["status"])
            for key in ACK_FIELDS:
                link.view[key] = session.get(key, "")
            link.view["alerts"] = session.get("alerts", link.view["alerts"])
            link.conn.send({"type": "state", "session": candidate_view(session)})

        task = asyncio.get_running_loop().create_task(resync())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def remove_candidate(self, link: CandidateLink) -> None:
        if link.served and self.interest is not None:
            link.served = False
            self.interest.release(link.exam_id)
        self._slots[link.slot].discard(link)
        links = self.candidates.get(link.session_id)
        if links and link in links:
            links.remove(link)
            if not links:
                del self.candidates[link.session_id]

    def add_watcher(self, watcher: Watcher) -> None:
        self.watchers.setdefault(watcher.exam_id, set()).add(watcher)

    def remove_watcher(self, watcher: Watcher) -> None:
        if watcher.served and self.interest is not None:
            watcher.served = False
            self.interest.release(watcher.exam_id)
        watchers = self.watchers.get(watcher.exam_id)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self.watchers[watcher.exam_id]

    def exam_changed(self, exam_id: str, exam_groups: list[str]) -> None:
        """An exam's groups may have changed (here): re-scope its dashboards at once. Other
        processes notice within their dashboards' re-check interval (`scope_watch`)."""
        for watcher in list(self.watchers.get(exam_id, ())):
            watcher.regroup(exam_groups)

    def live_candidates(self) -> list[CandidateLink]:
        return [link for links in self.candidates.values() for link in links if link.ready]

    # -- fan-out -----------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Dispatch one committed event to this process's connections. Never blocks."""
        self.events_seen += 1
        self._to_candidates(event)
        if event.exam_id in self.watchers:
            # Dashboards get what arrives in one burst (a bulk command) as one message, sent
            # when this burst has been read: one frame per watcher instead of thousands.
            # Candidate traffic waits for the pace (PACED_KINDS), the rest goes at once.
            pending = self._pending.get(event.exam_id)
            if pending is None:
                pending = self._pending[event.exam_id] = []
            pending.append(event)
            if self._flush_scheduled:
                return
            if event.kind in PACED_KINDS:
                if self._paced is not None:
                    return  # goes with the paced flush already set
                wait = self._last_flush + self.delta_pace - time.monotonic()
                if wait > 0:
                    self._paced = asyncio.get_running_loop().call_later(wait, self.flush)
                    return
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def on_committed(self, events: list[Event]) -> None:
        """This process's own commit, straight from the store's answer: candidate pages get
        their session's changes now instead of after the echo. Only versioned changes: a page
        orders them by version and ignores the echo; the rest waits for `on_event`.

        A bulk command's thousands of events come here in one batch, handled in two loops:
        first every link takes its event (version, view, the message), then the frames are
        written, one socket after the other. The kernel's work of each write evicts the
        interpreter's code and data from the caches: the second loop runs as little Python
        as there is between two writes (docs/performance.md, "tenth session"); at most
        `TAKEN_MAX` frames at a time, so the messages waiting (a bulk command's spliced
        ones are objects the garbage collector counts) never set off a collection. A link's
        frames keep their order: anything but a plain command frame (a session with more
        than one link, a new holder, a terminate's close) writes the frames taken so far
        first, then is handled as `on_event` handles it."""
        get = self.candidates.get
        conns: list[Connection] = []  # the frames taken, to write
        messages: list[Encoded] = []
        for event in events:
            changes = event.changes
            if "version" not in changes:
                continue
            links = get(event.session_id)
            if not links:
                continue
            if len(links) == 1 and "conn_id" not in changes and event.kind != TERMINATE:
                link = links[0]
                try:
                    message = link.take(event)
                except Exception:
                    log.exception("candidate dispatch failed for %s", event.session_id)
                    continue
                if message is not None:
                    conns.append(link.conn)
                    messages.append(message)
                    if len(conns) == TAKEN_MAX:
                        _write(conns, messages)
                        conns, messages = [], []
                continue
            if conns:
                _write(conns, messages)
                conns, messages = [], []
            self._to_candidates(event)
        if conns:
            _write(conns, messages)

    def _to_candidates(self, event: Event) -> None:
        links = self.candidates.get(event.session_id)
        if not links:
            return
        if len(links) == 1:  # the usual case: no copy of the list to make
            try:
                links[0].handle(event)
            except Exception:
                log.exception("candidate dispatch failed for %s", event.session_id)
            return
        for link in list(links):
            try:
                link.handle(event)
            except Exception:
                log.exception("candidate dispatch failed for %s", event.session_id)

    def flush(self) -> None:
        """Send the pending dashboard deltas, one message per exam, encoded once per codec."""
        self._flush_scheduled = False
        if self._paced is not None:
            self._paced.cancel()
            self._paced = None
        pending, self._pending = self._pending, {}
        if pending:
            self._last_flush = time.monotonic()
        for exam_id, events in pending.items():
            watchers = self.watchers.get(exam_id)
            if not watchers:
                continue
            shared = Encoded(delta_message(events))
            for watcher in list(watchers):
                try:
                    watcher.handle_batch(events, shared)
                except Exception:
                    log.exception("watcher dispatch failed for exam %s", exam_id)

    def resynchronise(self, recovered: Collection[str] = ()) -> None:
        """Events may have been missed (the store's subscription was re-established): every
        candidate page gets its whole state, every dashboard reconnects with its last seq;
        except in the exams whose missed events the store `recovered` and delivered."""
        for link in self.live_candidates():
            if link.exam_id not in recovered:
                self._resync_candidate(link)
        for exam_id, watchers in self.watchers.items():
            if exam_id in recovered:
                continue
            for watcher in list(watchers):
                watcher.conn.close(CloseCode.RESYNC, "resync")

    def ping_all(self) -> None:
        """Ping every candidate; the message is encoded once per codec."""
        encoded = Encoded({"type": "ping", "t": self.clock()})
        for link in self.live_candidates():
            link.conn.send_encoded(encoded)

    def close_all(self, code: int, reason: str) -> None:
        for link in self.live_candidates():
            link.conn.close(code, reason)
        for watchers in self.watchers.values():
            for watcher in watchers:
                watcher.conn.close(code, reason)


Touch = Callable[[list[tuple[str, str, str]]], Awaitable[Any]]
"""Refresh `last_seen` of sessions held here: (exam id, session id, holder's conn id)."""
LegacyTouch = Callable[[list[tuple[str, str]]], Awaitable[Any]]
"""The same without the holder: (exam id, session id)."""


class Heartbeat:
    """What the heartbeat decides at each tick, apart from sleeping and the store.

    Liveness is judged on a clock that leaves out the event loop's stalls: when a tick runs
    late by more than `TICK_LATENESS_TOLERATED` of the ping timeout (0.3 s at 12 s), the loop
    could neither send pings nor read pongs, so the time past that counts against nobody.
    Lateness below it is a timer's ordinary wake-up latency on a busy machine, not a stall:
    left out at every one of the HEARTBEAT_TICKS ticks of an interval, it added up to a
    quarter or a third of the wall time on two loaded cores, and a dead page was cut off
    after 19-21 s instead of 13-15 s (docs/performance.md, "Tenth session: flaky tests").
    Counting it costs a live page nothing: its ping is held up by at most the stall going on
    when it was queued, of which only the tolerance is counted, and its pong is read before
    the confirming tick. A link is timed out only when the oldest ping it has not answered
    was queued longer than `ping_timeout` ago on that clock, seen on two ticks in a row
    (pongs already in socket buffers at the first are read in between), and only while its
    reader waits for a frame (a reader busy with a message has not read what came after it
    yet). No timer or task per connection: a tick looks at one slice and at the previous
    tick's suspects.
    """

    def __init__(self, hub: Hub, interval: float, ping_timeout: float) -> None:
        self.hub = hub
        self.step = interval / HEARTBEAT_TICKS
        self.ping_timeout = ping_timeout
        self.tolerance = ping_timeout * TICK_LATENESS_TOLERATED
        self.tick_index = 0
        self.due: float | None = None  # when the next tick should run (monotonic)
        self.stalled = 0.0  # the ticks' lateness past the tolerance: left out of liveness
        self.suspects: list[CandidateLink] = []  # silent at the last tick: confirm now

    def delay(self, now: float) -> float:
        """How long to sleep before the next tick."""
        if self.due is None:
            self.due = now + self.step
        return max(0.0, self.due - now)

    def silent(self, conn: Connection, live_now: float) -> bool:
        since = conn.unanswered_since
        return (
            since is not None
            and live_now - since > self.ping_timeout
            and conn.watched
            and conn.in_receive
            and not conn.closing
        )

    def tick(self, now: float) -> list[CandidateLink]:
        """Run one tick at `now` (monotonic time): time out the confirmed silent links and
        ping this tick's slice. Returns the links of the slice that hold their session."""
        hub = self.hub
        if self.due is not None:
            lag = max(0.0, now - self.due)
            self.stalled += max(0.0, lag - self.tolerance)
            hub.heartbeat_lag_last = lag
            hub.heartbeat_lag_max = max(hub.heartbeat_lag_max, lag)
            hub.heartbeat_stalled = self.stalled
        self.due = now + self.step
        live_now = now - self.stalled
        suspects, self.suspects = self.suspects, []
        for link in suspects:
            if self.silent(link.conn, live_now) and hub.holds(link):
                hub.ping_timeouts += 1
                link.conn.time_out()
        links = hub.heartbeat_slice(self.tick_index)
        self.tick_index = (self.tick_index + 1) % HEARTBEAT_TICKS
        if not links:
            return []
        encoded = Encoded({"type": "ping", "t": hub.clock()})
        held = []
        for link in links:
            conn = link.conn
            if self.silent(conn, live_now):
                self.suspects.append(link)  # timed out at the next tick unless it answers
                continue
            if conn.send_encoded(encoded):
                hub.pings_sent += 1
                if conn.unanswered_since is None:
                    conn.unanswered_since = live_now
            if not link.superseded and not link.ended:
                held.append(link)
        return held


def holding(link: CandidateLink) -> bool:
    return not link.superseded and not link.ended and not link.conn.closing


class Refresher:
    """Refreshes `last_seen` of the sessions held here, away from the heartbeat's pings.

    One store call is in flight at a time; links handed over meanwhile are merged into the
    next call. A failing call is logged and, after a backoff, retried together with what
    arrived meanwhile (only the links still held here), so when the store answers again
    every held session is refreshed at once, with the time of that call.
    """

    def __init__(
        self,
        hub: Hub,
        touch: Touch,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.hub = hub
        self.touch = touch
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.pending: dict[CandidateLink, None] = {}  # ordered, without duplicates
        self.ready = asyncio.Event()

    def submit(self, links: list[CandidateLink]) -> None:
        """Hand links over; never waits."""
        for link in links:
            self.pending[link] = None
        if self.pending:
            self.ready.set()

    async def run(self) -> None:
        delay = self.backoff
        while True:
            await self.ready.wait()
            self.ready.clear()
            hub = self.hub
            batch = [link for link in self.pending if holding(link) and hub.holds(link)]
            self.pending = {}
            if not batch:
                continue
            try:
                await self.touch([(link.exam_id, link.session_id, link.conn_id) for link in batch])
            except asyncio.CancelledError:
                raise
            except Exception:
                hub.touch_failures += 1
                log.warning(
                    "refreshing %d held sessions failed; retrying in %.1f s",
                    len(batch),
                    delay,
                    exc_info=True,
                )
                for link in batch:
                    self.pending.setdefault(link, None)
                self.ready.set()
                await self.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            else:
                hub.touch_calls += 1
                hub.touched += len(batch)
                delay = self.backoff


def _with_conn(touch: Touch | LegacyTouch, touch_with_conn: bool) -> Touch:
    if touch_with_conn:
        return cast(Touch, touch)
    legacy = cast(LegacyTouch, touch)

    async def without_conn(items: list[tuple[str, str, str]]) -> Any:
        return await legacy([(exam_id, session_id) for exam_id, session_id, _ in items])

    return without_conn


async def run_heartbeat(
    hub: Hub,
    interval: float,
    ping_timeout: float,
    touch: Touch | LegacyTouch,
    *,
    touch_with_conn: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Every `interval`, ping each candidate, cut off those that leave pings unanswered for
    `ping_timeout`, and refresh `last_seen` of the sessions held here.

    `touch` gets (exam id, session id, conn id) triples when `touch_with_conn`, else
    (exam id, session id) pairs. It runs in a task of its own (`Refresher`): a slow or
    failing store never holds up the pings, nor does its slowness count against anybody.

    The work is spread over `HEARTBEAT_TICKS` slices of the interval: pinging ten thousand
    sockets at once (and getting ten thousand pongs back together) would stall the event
    loop for most of a second, and every command would wait behind it.
    """
    beat = Heartbeat(hub, interval, ping_timeout)
    refresher = Refresher(hub, _with_conn(touch, touch_with_conn))
    task = asyncio.get_running_loop().create_task(refresher.run(), name="heartbeat-refresh")
    try:
        while True:
            await asyncio.sleep(beat.delay(clock()))
            try:
                held = beat.tick(clock())
                if held:
                    refresher.submit(held)
            except Exception:
                if being_cancelled():
                    raise asyncio.CancelledError from None
                log.exception("heartbeat failed; retrying")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def being_cancelled() -> bool:
    """Whether the running task has a cancel request pending. Code below a loop (a client
    library, a shielded wait) can turn the CancelledError into another exception; a loop
    that logs and retries on errors must still stop then, or shutdown waits for it forever."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def run_sweeper(
    hub: Hub,
    interval: float,
    sweep: Callable[[str], Awaitable[int]],
    dead_nodes: Callable[[], frozenset[str]] | None = None,
) -> None:
    """Every `interval`, for each exam watched from here, disconnect sessions whose holder
    went silent, so dashboards see a crashed process's candidates as disconnected; and within
    a second of another node being found dead (`dead_nodes` grew), at once."""
    loop = asyncio.get_running_loop()
    tick = min(interval, 1.0)
    next_sweep = loop.time() + interval
    known_dead: frozenset[str] = dead_nodes() if dead_nodes else frozenset()
    while True:
        await asyncio.sleep(tick)
        dead = dead_nodes() if dead_nodes else known_dead
        newly_dead = not dead <= known_dead
        known_dead = dead
        if not newly_dead and loop.time() < next_sweep:
            continue
        next_sweep = loop.time() + interval
        for exam_id in list(hub.watchers):
            try:
                swept = await sweep(exam_id)
                if swept:
                    log.info("exam %s: %d sessions lost their holder", exam_id, swept)
            except asyncio.CancelledError:
                raise
            except Exception:
                if being_cancelled():  # a cancel that arrived as another error: still stop
                    raise asyncio.CancelledError from None
                log.exception("sweep of exam %s failed; retrying", exam_id)
