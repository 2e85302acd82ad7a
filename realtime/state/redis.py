"""The shared state store: Redis holds the sessions, so any number of server processes can serve
the same exams, and Redis pub/sub carries every committed event to all of them.

Layout (see `Keys`): every key of one exam carries the exam id as a Redis Cluster hash tag, so
the Lua scripts that touch a session, the exam's seq counter and its outbox stay in one slot.
Session hashes hold JSON-encoded values. One commit_batch.lua call applies many commits of one
exam and appends their events as ONE outbox stream entry (id `<first seq>-*`, field `d` = the
events' msgpack blobs back to back) and publishes them as ONE message
`b"<token>:<first seq>:<blobs>"`, where the token names the call that made it. Drainers read the
outbox through the consumer group `drain`, under a per-exam lease.

A process already holds the events of its own commits when Redis answers: it hands them to its
commit listeners at once (candidate pages, ordered by session version, need not wait for the
echo), and when the echo arrives it reuses them instead of decoding the message again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import json
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Collection, Coroutine
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, cast

import msgpack
import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from realtime.state.cluster import (
    ShardedSubscription,
    connect_cluster,
    is_cluster_url,
    slot_in_motion,
)
from realtime.state.connect import RedisConnector, as_pushed
from realtime.state.drops import MAX_ALERT_SESSIONS, Drop
from realtime.state.handoff import HandOff
from realtime.state.model import SESSION_DEFAULTS, Event, Exam
from realtime.state.store import (
    Backlog,
    Commit,
    CommitListener,
    CommitResult,
    CommitsFailed,
    EventListener,
    OutboxEntry,
)

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0  # seconds start() waits for the event subscription
RECONNECT_MIN = 0.1  # first back-off after the subscription broke, doubled up to RECONNECT_MAX
RECONNECT_MAX = 5.0
IDLE_PING = 15.0  # ping an idle subscription this often; silent for 3x this long = dead
MASTER_CHECK = 1.0  # Sentinel: ask this often whether the subscription is on the master
NODE_MEMORY = 3600.0  # seconds a node that stopped beating is still known (and reported dead)
UNSERVE_LINGER = 10.0  # seconds an exam stays subscribed after its last socket here left
VIEW_SLICE = 500  # sessions of an exam read per script call to make its copy (`_view_slices`)
DECODE_SLICE = 250  # outbox events decoded per turn of the event loop (`outbox_claim`)
SWEEP_SLICE = 250  # sessions the sweeper's question reads per script call (see stale_holders)
MAX_UNECHOED = 4096  # own commits kept for their echo; beyond this the oldest are decoded again
# An own commit's echo this large (a bulk command's) that arrives before Redis's answer waits
# for the answer (at most ECHO_WAIT seconds) instead of being decoded and dispatched at once.
BIG_ECHO = 16 * 1024  # bytes of events, ~80 of them (a hand-off's big batch is more)
ECHO_WAIT = 2.0

# An exam's commits of one store call beyond this many go as several commit_batch.lua calls
# (chunks) sent back to back, so Redis runs chunk k while the process encodes chunk k + 1 and
# takes in chunk k - 1's answer (`RedisStore.commit`; REALTIME_REDIS_COMMIT_CHUNK; 0: one
# call). Their events are handed out together after the last answer, as one call's are: handed
# out chunk by chunk, the first chunks' acks were read before the later chunks' frames went
# (docs/performance.md, tenth session).
COMMIT_CHUNK = 1000
# commit_batch.lua status codes besides 1 (ok)
_APPLIED, _NOT_FOUND, _CONFLICT, _DUPLICATE, _GUARD_FAILED, _KNOWN = 1, 0, -1, -2, -3, -4
COMMAND_TTL = 24 * 3600  # seconds a command id is remembered (idempotent retries)


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key and channel name the store uses, built in this one place."""

    prefix: str

    def _exam(self, exam_id: str) -> str:
        return f"{self.prefix}{{{exam_id}}}"

    def session_prefix(self, exam_id: str) -> str:
        return f"{self._exam(exam_id)}:s:"

    def session(self, exam_id: str, session_id: str) -> str:
        return self.session_prefix(exam_id) + session_id

    def sessions(self, exam_id: str) -> str:
        return f"{self._exam(exam_id)}:sessions"

    def seq(self, exam_id: str) -> str:
        return f"{self._exam(exam_id)}:seq"

    def outbox(self, exam_id: str) -> str:
        return f"{self._exam(exam_id)}:outbox"

    def drain_state(self, exam_id: str) -> str:
        return f"{self._exam(exam_id)}:drain"

    def drain_lease(self, exam_id: str) -> str:
        return f"{self._exam(exam_id)}:drainer"

    def candidates(self, exam_id: str) -> str:
        return f"{self._exam(exam_id)}:candidates"

    def command(self, exam_id: str, command_id: str) -> str:
        return f"{self._exam(exam_id)}:cmd:{command_id}"

    def command_result(self, exam_id: str, command_id: str) -> str:
        return f"{self._exam(exam_id)}:cmdres:{command_id}"

    def command_claim(self, exam_id: str, command_id: str) -> str:
        """Which call's chunks may go on with a fresh command (commit_batch.lua, "Claims")."""
        return f"{self._exam(exam_id)}:cmdclaim:{command_id}"

    def absent(self, exam_id: str) -> str:
        """A key of the exam that is never written: the scripts confirm that a key they read
        as missing is not merely still on the other master of a slot being migrated by
        asking EXISTS of both (refused then; see commit_batch.lua, `confirm_missing`)."""
        return f"{self._exam(exam_id)}:absent"

    def drops(self, exam_id: str) -> str:
        """The exam's recent candidate drops (drop alerts)."""
        return f"{self._exam(exam_id)}:drops"

    def drop_alert(self, exam_id: str) -> str:
        """The exam's active drop alert."""
        return f"{self._exam(exam_id)}:dropalert"

    def exam(self, exam_id: str) -> str:
        return f"{self.prefix}exam:{exam_id}"

    @property
    def codes(self) -> str:
        return f"{self.prefix}codes"

    @property
    def outboxes(self) -> str:
        return f"{self.prefix}outboxes"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}nodes"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    @property
    def events(self) -> str:
        """The process-wide channel: always subscribed, so the connection exists (and its
        loss is noticed) even while no exam is served."""
        return f"{self.prefix}events"

    def exam_events(self, exam_id: str) -> str:
        """An exam's events channel (in the exam's slot: sharded pub/sub on a cluster)."""
        return f"{self._exam(exam_id)}:events"


def _connect_cluster(url: str, retry: Retry, reinitialize_steps: int = 5) -> Redis:
    """A `redis+cluster://` URL's client. Typed as `Redis`: the store only uses what both
    clients offer (keyed commands, scripts, non-transactional pipelines)."""
    return cast(Redis, connect_cluster(url, retry, reinitialize_steps))


def _lua(name: str) -> str:
    return resources.files("realtime.state").joinpath("lua", name).read_text(encoding="utf-8")


_local = threading.local()  # a msgpack Packer per thread: packb builds a new one per call


def _packer() -> msgpack.Packer:
    try:
        packer: msgpack.Packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer


def encode_event(event: Event, version: int | None) -> bytes:
    """The event as the outbox and pub/sub carry it, minus the seq Redis assigns."""
    packer = _packer()
    changes = event.changes if version is None else {**event.changes, "version": version}
    blob: bytes = packer.pack({
        "id": event.id, "exam_id": event.exam_id, "session_id": event.session_id,
        "kind": event.kind, "actor": event.actor, "at": event.at, "before": event.before,
        "after": event.after, "details": event.details, "changes": changes,
    })
    return blob


@dataclass(slots=True)
class _Like:
    """`encode_event(event, version)` of the events of commits alike (`Commit.like`), cut
    around what differs: `head + pack(session id) + middle + pack(version)` is each one's blob,
    byte for byte; the changes' field/value pairs are the same list for all, and so is what
    follows the guard in each one's entry of the flat array (`tail`: the pairs, counted, and
    one event). Made for one `_batch_args` call (its packer, its versions packed)."""

    event: Event
    pairs: list[str]
    head: bytes
    middle: bytes
    tail: tuple[Any, ...]
    pack: Callable[[Any], bytes]
    versions: dict[int, bytes]

    @classmethod
    def of(cls, event: Event, pairs: list[str]) -> _Like:
        packer = _packer()
        pack = packer.pack
        head = b"".join((packer.pack_map_header(10), pack("id"), pack(event.id),
                         pack("exam_id"), pack(event.exam_id), pack("session_id")))
        middle = [pack("kind"), pack(event.kind), pack("actor"), pack(event.actor), pack("at"),
                  pack(event.at), pack("before"), pack(event.before), pack("after"),
                  pack(event.after), pack("details"), pack(event.details), pack("changes"),
                  packer.pack_map_header(len(event.changes) + 1)]
        for name, value in event.changes.items():
            middle += (pack(name), pack(value))
        middle.append(pack("version"))
        return cls(event, pairs, head, b"".join(middle), (len(pairs), *pairs, 1), pack, {})

    def fits(self, event: Event) -> bool:
        """Whether `event` is of this shape as far as cheap comparisons tell (its changes and
        details are the decision's: `Commit.like`)."""
        first = self.event
        return (event.at is first.at and event.kind == first.kind
                and event.actor == first.actor and event.before == first.before
                and event.after == first.after and event.exam_id == first.exam_id
                and event.id == first.id and "version" not in event.changes)

    def blob(self, event: Event, version: int) -> bytes:
        packed = self.versions.get(version)  # (a hall's sessions share a few versions)
        if packed is None:
            packed = self.versions[version] = self.pack(version)
        return b"".join((self.head, self.pack(event.session_id), self.middle, packed))


def decode_events(first_seq: int, blobs: bytes) -> list[Event]:
    """Concatenated msgpack events, numbered from `first_seq` on."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(blobs)
    events = []
    for offset, data in enumerate(unpacker):
        data["seq"] = first_seq + offset
        events.append(Event.from_dict(data))
    return events


def split_message(message: bytes) -> tuple[str, int, bytes]:
    """A published `b"<token>:<first seq>:<blobs>"` message: (token, first seq, blobs)."""
    token, first, blobs = message.split(b":", 2)
    return token.decode(), int(first), blobs


def decode_message(message: bytes) -> list[Event]:
    """A published message back into its events."""
    _, first, blobs = split_message(message)
    return decode_events(first, blobs)


def _give(waiting: asyncio.Future[list[Event] | None], events: list[Event] | None) -> None:
    if not waiting.done():
        waiting.set_result(events)


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


def _encode_fields(fields: dict[str, Any], skip: str = "") -> list[str]:
    """Field/value pairs (but the field `skip`), the values JSON. As `str`: a `bytes` orjson
    returns takes a large buffer, which is slow to allocate when thousands of them are kept
    (a bulk command's commits: ~1.4 us each, against ~0.1 us for the copy as `str`); both are
    sent as the same bytes."""
    dumps = orjson.dumps
    pairs: list[str] = []
    for name, value in fields.items():
        if name != skip:
            pairs += (name, dumps(value).decode())
    return pairs


def _decode_fields(raw: Any) -> dict[str, Any]:
    """A session from HGETALL (a dict) or from a script (a flat field/value list)."""
    loads = orjson.loads
    if isinstance(raw, dict):
        return {_text(name): loads(value) for name, value in raw.items()}
    return {_text(raw[k]): loads(raw[k + 1]) for k in range(0, len(raw), 2)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(raw: Any) -> dict[str, bytes]:
    """A stream entry's flat field list as a dict."""
    return {_text(raw[k]): raw[k + 1] for k in range(0, len(raw), 2)}


async def _run_script(
    client: Redis, script: AsyncScript, numkeys: int, calls: list[list[Any]]
) -> list[Any]:
    """Run `script` once per call (keys then args) in one pipeline: see `_run_batches`.
    Raises the first call's error, if any."""
    return _or_raise(
        await _run_batches(client, script, [(c[:numkeys], c[numkeys:]) for c in calls])
    )


def _or_raise(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def _run_batches(
    client: Redis, script: AsyncScript, calls: list[tuple[list[Any], list[Any]]]
) -> list[Any]:
    """Run `script` once per (keys, args) call, all in one pipeline: one round trip. Each
    reply is the call's answer or the error that failed that call alone (`_or_raise` turns
    the first one into an exception); a pipeline that fails as a whole fails every call
    it was sending.

    redis-py's own pipelined scripts cost an extra SCRIPT EXISTS round trip each time; here the
    script is only loaded when Redis answers NOSCRIPT (after a restart), and only the refused
    calls are sent again: a refused call never ran, so resending it cannot apply it twice.
    """
    numkeys = [len(keys) for keys, _ in calls]
    flat = [[*keys, *args] for keys, args in calls]
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(2):
        try:
            async with client.pipeline(transaction=False) as pipe:
                for i in todo:
                    # (not pipe.evalsha: redis-py refuses that name in a cluster pipeline,
                    # though the command itself is routed by its keys like any other)
                    pipe.execute_command("EVALSHA", script.sha, numkeys[i], *flat[i])
                answers = await pipe.execute(raise_on_error=False)
        except Exception as error:
            # Whether any of them ran is not known, unless the error says so (on a cluster a
            # slot in motion raised as a whole is found before anything is sent: routing).
            for i in todo:
                replies[i] = error
            break
        refused = []
        for i, answer in zip(todo, answers, strict=True):
            if isinstance(answer, NoScriptError) and attempt == 0:
                refused.append(i)
            else:
                replies[i] = answer
        if not refused:
            break
        try:
            script.sha = await client.script_load(script.script)
        except Exception as error:
            for i in refused:  # refused, and not sent again: nothing of them ran
                replies[i] = error
            break
        todo = refused
    return replies


ReadAnswer = tuple[dict[str, Any] | None, dict[str, int], list[dict[str, Any] | None]]


@dataclass(slots=True)
class _Read:
    """A targeted command's read waiting for the next command round trip."""

    exam_id: str
    command_id: str
    session_ids: list[str]
    fields: tuple[str, ...]
    done: asyncio.Future[ReadAnswer]


@dataclass(slots=True)
class _Save:
    """A command's answer to keep, waiting for the next command round trip."""

    exam_id: str
    command_id: str
    blob: bytes
    done: asyncio.Future[None]


@dataclass(slots=True)
class _Append:
    """Audit rows to append to an exam's outbox, waiting for the next command round trip."""

    exam_id: str
    rows: list[dict[str, Any]]
    done: asyncio.Future[None]


@dataclass(slots=True)
class _ScriptCall:
    script: AsyncScript
    exam_id: str
    keys: list[Any]
    args: list[Any]


@dataclass(slots=True)
class _Call:
    """One commit_batch.lua call of a `commit`: an exam's commits (their indexes in it), or
    a chunk of them (with the claim of the exam's chunks)."""

    exam_id: str
    indexes: list[int]
    token: str
    claim: str


@dataclass(slots=True)
class _View:
    """A served exam's sessions as staff commands decide on them (see `command_view`): the
    `fields` of every session the exam had at `seq`, brought forward by every versioned event
    after it, strictly in seq order. While it is being made (`events` not None) the events heard
    meanwhile wait in `events`."""

    fields: tuple[str, ...]
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq: int = 0
    events: list[Event] | None = field(default_factory=list)


def _decode_reads(reply: bytes | str, fields: tuple[str, ...]) -> list[ReadAnswer]:
    """command_read.lua's one JSON document: per read (answer, applied, sessions), the
    sessions as `snapshot` gives them (with fields: those, a missing one as its default)."""
    answers: list[ReadAnswer] = []
    defaults = [SESSION_DEFAULTS.get(name) for name in fields]
    for answer, applied, rows in orjson.loads(reply):
        sessions: list[dict[str, Any] | None]
        if fields:
            sessions = [
                None if row is None else
                {name: default if value is None else value
                 for name, value, default in zip(fields, row, defaults, strict=True)}
                for row in rows
            ]
        else:
            sessions = rows
        answers.append((answer, applied or {}, sessions))
    return answers


class RedisStore:
    """`StateStore` on Redis. One instance per process: it holds one pub/sub subscription."""

    # A commit call is a round trip, a script call, a published message and an outbox entry,
    # whatever it carries: frequent small commits are worth gathering (`SessionService`'s
    # `CANDIDATE_LINGER`).
    commits_gather = True
    # The outbox lives in Redis: a process that dies leaves it to the others (after its lease),
    # so the drainer may gather longer under a sustained flow (`realtime.drainer.GATHER_MAX`).
    outbox_survives_process = True

    def __init__(self, url: str, prefix: str = "rt:", log_size: int = 10_000,
                 commit_chunk: int = COMMIT_CHUNK) -> None:
        if log_size < 1:
            raise ValueError("log_size must be at least 1")
        if commit_chunk < 0:
            raise ValueError("commit_chunk must be 0 (one call) or more")
        self.keys = Keys(prefix)
        self._log_size = log_size
        # An exam's commits of one `commit` beyond this many go in chunks (0: one call)
        self._commit_chunk = commit_chunk
        # Everything but commits is idempotent, so it may be resent after a dropped connection.
        self._connector = RedisConnector(url)  # redis:// or redis+sentinel://
        self.cluster = is_cluster_url(url)  # redis+cluster://: sharded pub/sub for the events
        connect = (functools.partial(_connect_cluster, url) if self.cluster
                   else self._connector.client)
        self._client = connect(Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), 3))
        # Commits must not be: a resent commit.lua would report a conflict for a commit that
        # went through, or record its events twice. A failed commit raises; callers re-read.
        # On a cluster it follows MOVED by patching its slot map, never by re-reading the map
        # every few MOVED: redis-py re-reads it by closing every connection of the client, in
        # use or not, which failed other exams' commits in flight (outcome unknown, so not sent
        # again) each time one exam's slot was moving.
        self._commit_client = (
            _connect_cluster(url, Retry(NoBackoff(), 0), reinitialize_steps=0) if self.cluster
            else self._connector.client(Retry(NoBackoff(), 0)))
        self._commit_script = self._commit_client.register_script(_lua("commit_batch.lua"))
        self._since_script = self._client.register_script(_lua("events_since.lua"))
        self._claim_script = self._client.register_script(_lua("outbox_claim.lua"))
        self._ack_script = self._client.register_script(_lua("outbox_ack.lua"))
        self._backlog_script = self._client.register_script(_lua("outbox_backlog.lua"))
        self._audit_script = self._client.register_script(_lua("audit_append.lua"))
        self._snapshot_script = self._client.register_script(_lua("snapshot.lua"))
        self._view_script = self._client.register_script(_lua("view_slice.lua"))
        self._create_script = self._client.register_script(_lua("session_create.lua"))
        self._touch_script = self._client.register_script(_lua("touch.lua"))
        self._ensure_script = self._client.register_script(_lua("ensure_seq.lua"))
        self._stale_script = self._client.register_script(_lua("stale_holders.lua"))
        self._drops_script = self._client.register_script(_lua("drops_record.lua"))
        self._read_script = self._client.register_script(_lua("command_read.lua"))
        self._keep_script = self._client.register_script(_lua("command_keep.lua"))
        # Targeted commands' reads, kept answers and audit rows, sent once per loop turn (see
        # `read_for_command`): one pipeline however many commands are in flight.
        self._io_reads: list[_Read] = []
        self._io_saves: list[_Save] = []
        self._io_appends: list[_Append] = []
        self._io_scheduled = False
        self._io_tasks: set[asyncio.Task[None]] = set()
        self.command_round_trips = 0  # pipelines sent for them, for tests
        # Access codes and candidates to look up and sessions to read for candidates' opens
        # and the other read-decide-commit changes (`session_by_code`, `session_by_candidate`,
        # `read_sessions`), sent once per loop turn: a hall opening at once shares round trips
        # as its commits do. Lookups are (hash key, field, answer).
        self._lookups: list[tuple[str, str, asyncio.Future[Any]]] = []
        self._session_reads: list[tuple[str, list[str], asyncio.Future[Any]]] = []
        self._reads_scheduled = False
        self.read_round_trips = 0  # pipelines sent for them, for tests
        self._listeners: list[EventListener] = []
        self._commit_listeners: list[CommitListener] = []
        self._hand_off = HandOff(self._give_listeners)  # big batches after their callers
        # Own commits and their echoes: a call's token is "<origin>.<n>". Events of answered
        # calls wait in `_unechoed` for their echo; `_echoed` holds tokens of calls in flight
        # whose echo came first (the reply must then not hand the events out again).
        self._origin = secrets.token_hex(6)
        self._calls = itertools.count()
        self._in_flight: set[str] = set()
        self._echoed: set[str] = set()
        self._unechoed: OrderedDict[str, list[Event]] = OrderedDict()
        # Big echoes of calls in flight, waiting for their answer's events (None: decode it).
        self._echo_waits: dict[str, asyncio.Future[list[Event] | None]] = {}
        self._resubscribe_listeners: list[Callable[[frozenset[str]], None]] = []
        self._heard_seq: dict[str, int] = {}  # per exam, the last seq delivered here
        self._handed_seq: dict[str, int] = {}  # per exam, the last seq of own commits handed out
        self.subscribed = False  # the event subscription is up (health checks)
        self.subscription_losses = 0  # times it was lost or re-made since the start
        self.recovered_events = 0  # events read back from outboxes after such a loss
        # Fan-out by exam: the exams served here (sockets of theirs are open) and how many
        # holders each has; their channels are subscribed on the one subscription connection.
        self._served: dict[str, int] = {}
        self._channels: set[str] = set()  # exam channels confirmed subscribed
        self._confirmed: dict[str, asyncio.Event] = {}
        self._pubsub: PubSub | ShardedSubscription | None = None
        self.events_received = 0  # events this process took from the subscription
        self._task: asyncio.Task[None] | None = None
        self._subscriptions = 0
        self._subscribed = asyncio.Condition()
        # (start, end) epoch times this process could not reach Redis; end None: still down
        self._outages: deque[tuple[float, float | None]] = deque(maxlen=64)
        # Per served exam, the sessions as staff commands decide on them (`command_view`),
        # fed by the exam's events; all dropped whenever the subscription is lost or re-made
        # (`_view_epoch` moves on then, so a view being made across it is not kept).
        self._views: dict[str, _View] = {}
        self._view_epoch = 0
        self._view_tasks: set[asyncio.Task[Any]] = set()
        self.views_made = 0  # for tests and metrics
        self.view_reads = 0  # whole-exam reads (slice by slice) started to make them
        # With these fields (`warm_views`), an exam's copy is made as this process starts
        # serving it, in the background, so the first staff command finds it made.
        self._warm_fields: tuple[str, ...] | None = None
        self.views_warmed = 0  # copies started that way

    # -- lifecycle and fan-out ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe; returns once events published from now on will be received."""
        if self._task is not None:
            return
        await self._client.ping()  # a wrong URL fails here, not in the background
        self._task = asyncio.create_task(self._listen(), name=f"redis-events:{self.keys.prefix}")
        async with asyncio.timeout(START_TIMEOUT):
            await self.wait_subscribed(1)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._view_tasks):
            task.cancel()
        while self._io_tasks:  # answers being kept, reads in flight
            await asyncio.gather(*list(self._io_tasks), return_exceptions=True)
        await self._client.aclose()
        await self._commit_client.aclose()
        await self._connector.aclose()

    def hold_fan_out(self) -> Callable[[], None]:
        return self._hand_off.hold()  # the echoes waiting behind it wait too

    def add_resubscribe_listener(self, listener: Callable[[frozenset[str]], None]) -> None:
        self._resubscribe_listeners.append(listener)

    def unheard(self, since: float, now: float) -> float:
        total = 0.0
        for start, end in self._outages:
            lo, hi = max(start, since), min(now if end is None else end, now)
            if hi > lo:
                total += hi - lo
        return total

    @property
    def reachable(self) -> bool:
        """False while the event subscription is down (Redis unreachable from here)."""
        return not self._outages or self._outages[-1][1] is not None

    def _lost(self) -> None:
        if self.reachable:
            self._outages.append((time.time(), None))

    def _heard(self) -> None:
        if not self.reachable:
            start, _ = self._outages.pop()
            self._outages.append((start, time.time()))

    def _notify_resubscribed(self, recovered: frozenset[str]) -> None:
        """Events published while the subscription was down never reached this process; those
        of the exams in `recovered` were read back from the outbox and delivered in order."""
        for listener in list(self._resubscribe_listeners):
            try:
                listener(recovered)
            except Exception:
                log.exception("resubscribe listener %r failed", listener)

    async def _recover(self) -> None:
        """After the subscription was re-made: read what every exam heard so far published
        meanwhile back from its outbox stream and deliver it, in seq order, before any newer
        message (the subscription's own messages wait meanwhile). Pages then get commands, not
        whole-state resyncs. Exams that cannot be recovered (log trimmed, Redis came back
        without them) are left to the resubscribe listeners' resynchronisation."""
        self._unechoed.clear()  # their echoes were lost with the subscription
        recovered: set[str] = set()
        missed = 0
        heard = len(self._heard_seq)
        for exam_id, seq in list(self._heard_seq.items()):
            try:
                events = await self.events_since(exam_id, seq)
            except Exception:
                log.warning("could not read back the events of exam %s", exam_id, exc_info=True)
                events = None
            if events is None:
                # Trimmed, or Redis came back without what we heard (its counter may restart
                # below it): forget it, or newer events would look old; resynchronise instead.
                del self._heard_seq[exam_id]
                continue
            missed += len(events)
            if events:
                await self._dispatch(events)
            recovered.add(exam_id)
        self.recovered_events += missed
        log.warning(
            "event subscription re-made (lost %d times so far): %d missed events of %d exams "
            "read back from the outbox; %d exams left to resynchronise",
            self.subscription_losses, missed, len(recovered), heard - len(recovered),
        )
        self._notify_resubscribed(frozenset(recovered))

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._commit_listeners.append(listener)

    def add_listener(self, listener: EventListener) -> None:
        """Listeners run one after another on the subscription task: keep them quick (queue
        the event, don't process it), or every listener of this process falls behind."""
        self._listeners.append(listener)

    def subscription_health(self) -> dict[str, Any]:
        pubsub = self._pubsub
        if isinstance(pubsub, ShardedSubscription):
            connected = pubsub.connected
        else:
            connected = bool(pubsub is not None and pubsub.connection is not None
                             and pubsub.connection.is_connected)
        return {"subscribed": self.subscribed and connected, "losses": self.subscription_losses,
                "recovered_events": self.recovered_events, "exams_served": len(self._served),
                "events_received": self.events_received}

    @property
    def subscriptions(self) -> int:
        """How often the event subscription has been (re)established: for health checks."""
        return self._subscriptions

    async def wait_subscribed(self, count: int = 1) -> None:
        """Wait until the subscription has been established `count` times in all.

        After a loss, what was committed meanwhile is read back from the outboxes (see
        `_recover`) before the count goes up.
        """
        async with self._subscribed:
            await self._subscribed.wait_for(lambda: self._subscriptions >= count)

    # -- fan-out by exam -------------------------------------------------------------------------

    async def serve(self, exam_id: str) -> None:
        """This process holds a socket of `exam_id`: hear its events. Returns once its channel
        is subscribed, so nothing committed after the return can be missed; raises
        `ConnectionError` when the subscription is down (the caller answers "try again")."""
        self._served[exam_id] = self._served.get(exam_id, 0) + 1
        channel = self.keys.exam_events(exam_id)
        if channel in self._channels:
            return
        try:
            confirmed = self._confirmed.get(channel)
            starts = confirmed is None  # this call starts serving the exam here
            if confirmed is None:
                confirmed = self._confirmed[channel] = asyncio.Event()
                pubsub = self._pubsub
                if pubsub is None or not self.subscribed:
                    raise ConnectionError("the event subscription is down")
                await pubsub.subscribe(channel)
            async with asyncio.timeout(START_TIMEOUT):
                await confirmed.wait()
        except BaseException:
            self.release(exam_id, linger=0.0)
            raise
        if starts:
            self._warm_view(exam_id)

    def release(self, exam_id: str, linger: float = UNSERVE_LINGER) -> None:
        """One holder of `exam_id` here is gone; the last one's leaving unsubscribes its
        channel after `linger` seconds (a page reconnecting at once keeps it)."""
        left = self._served.get(exam_id, 0) - 1
        if left > 0:
            self._served[exam_id] = left
            return
        self._served.pop(exam_id, None)
        asyncio.get_running_loop().call_later(
            linger, lambda: asyncio.ensure_future(self._unserve(exam_id))
        )

    async def _unserve(self, exam_id: str) -> None:
        if exam_id in self._served:
            return  # served again meanwhile
        channel = self.keys.exam_events(exam_id)
        self._channels.discard(channel)
        self._confirmed.pop(channel, None)
        self._heard_seq.pop(exam_id, None)  # not heard from now on: nothing to read back
        self._views.pop(exam_id, None)
        self._handed_seq.pop(exam_id, None)
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe(channel)

    @property
    def served_exams(self) -> int:
        return len(self._served)

    def _on_subscribed(self, channel: str) -> None:
        if channel == self.keys.events:
            return
        self._channels.add(channel)
        confirmed = self._confirmed.get(channel)
        if confirmed is None:
            confirmed = self._confirmed[channel] = asyncio.Event()
        confirmed.set()

    async def _listen(self) -> None:
        """Keep the one subscription of this process alive until cancelled."""
        delay = RECONNECT_MIN
        while True:
            pubsub = self._new_subscription()
            try:
                # The process channel first, then every served exam's channel again.
                self._channels.clear()
                for confirmed in self._confirmed.values():
                    confirmed.clear()
                served = [self.keys.exam_events(exam_id) for exam_id in self._served]
                if isinstance(pubsub, ShardedSubscription):
                    await pubsub.refresh()
                await pubsub.subscribe(self.keys.events, *served)
                self._pubsub = pubsub
                stream = (pubsub.messages() if isinstance(pubsub, ShardedSubscription)
                          else self._messages(pubsub))
                async with contextlib.aclosing(stream) as messages:
                    async for kind, data, channel in messages:
                        if kind == "subscribe" and channel != self.keys.events:
                            self._on_subscribed(channel)
                        elif kind == "subscribe":
                            self._drop_views()  # what was missed meanwhile is not in them
                            if self._subscriptions > 0 and self.subscribed:
                                # re-made behind our back (redis-py reconnected by itself)
                                self.subscription_losses += 1
                            self.subscribed = True
                            self._heard()
                            delay = RECONNECT_MIN
                            if self._subscriptions > 0:
                                await self._recover()
                            async with self._subscribed:
                                self._subscriptions += 1
                                self._subscribed.notify_all()
                        elif kind == "message":
                            await self._deliver(data)
            except Exception:
                self._lost()
                if self.subscribed:
                    self.subscribed = False
                    self.subscription_losses += 1
                log.warning("event subscription lost; retrying in %.1fs", delay, exc_info=True)
            finally:
                self._pubsub = None
                self._drop_views()  # cancelled, or lost: nothing is heard until re-made
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _new_subscription(self) -> PubSub | ShardedSubscription:
        """A single Redis: one pub/sub connection, plain SUBSCRIBE. A cluster: SSUBSCRIBE on
        each node owning a served exam's slot (see `realtime.state.cluster`)."""
        if self.cluster:
            return ShardedSubscription(cast(Any, self._client), self.keys.events, IDLE_PING)
        return self._client.pubsub(push_handler_func=as_pushed)

    async def _messages(self, pubsub: PubSub) -> AsyncGenerator[tuple[str, Any, str], None]:
        """Messages as (type, data, channel); raises when the connection is gone or silently
        dead.

        redis-py reconnects and resubscribes by itself on some errors, which shows up here as
        another "subscribe" message; a half-open TCP connection is caught by pinging.
        """
        loop = asyncio.get_running_loop()
        heard = checked = pinged = loop.time()
        sentinel = self._connector.sentinel is not None
        # Sentinel: whether the subscription is on the master is asked beside the reading (a
        # slow sentinel must not hold up the events), every MASTER_CHECK seconds.
        check: asyncio.Task[bool] | None = None
        try:
            while True:
                message = await pubsub.get_message(timeout=MASTER_CHECK if sentinel else IDLE_PING)
                now = loop.time()
                if check is not None and check.done():
                    if not check.result():
                        # A failover moved the master: re-subscribe there (and read back what
                        # was missed) rather than rely on this server still getting publishes.
                        raise ConnectionError("the event subscription is not on the master")
                    check = None
                if sentinel and check is None and now - checked >= MASTER_CHECK:
                    checked = now
                    check = asyncio.create_task(self._connector.on_master(pubsub))
                if message is None:
                    if now - heard > 3 * IDLE_PING:
                        raise ConnectionError("no reply from Redis on the event subscription")
                    if not sentinel or now - max(heard, pinged) >= IDLE_PING:
                        pinged = now
                        await pubsub.ping()
                    continue
                heard = now
                yield _text(message["type"]), message["data"], _text(message["channel"] or "")
        finally:
            if check is not None:
                check.cancel()

    async def _deliver(self, message: bytes) -> None:
        try:
            token, first, blobs = split_message(message)
            events = self._unechoed.pop(token, None)
            if events is not None and self._hand_off.pending:
                # answered, but the hand-off has not given them (or what precedes them) to
                # the hub yet: the hub's frames first, then the echo's listeners
                events = await self._after_hand_off(events)
            elif events is None and token in self._in_flight and len(blobs) >= BIG_ECHO:
                events = await self._answer_of(token)
            if events is None or events[0].seq != first:
                events = decode_events(first, blobs)
                if token in self._in_flight:
                    self._echoed.add(token)  # the echo beat the reply
        except Exception:
            log.exception("undecodable event on %s: %r", self.keys.events, message[:200])
            return
        if events:
            self.events_received += len(events)
            await self._dispatch(events)

    async def _after_hand_off(self, events: list[Event]) -> list[Event]:
        """`events`, once what waits in the hand-off now has been delivered."""
        waiting: asyncio.Future[list[Event] | None] = asyncio.get_running_loop().create_future()
        self._hand_off.then(functools.partial(_give, waiting, events), len(events))
        await waiting
        return events

    async def _answer_of(self, token: str) -> list[Event] | None:
        """The events of this process's own call `token`, whose big echo came before Redis's
        answer: given by `commit` once it has the answer and has handed them out (so the hub
        gets them, and the caller its answer, before the echo's listeners run), not decoded
        again. None if the call failed or the answer is late: decode the message."""
        waiting: asyncio.Future[list[Event] | None] = asyncio.get_running_loop().create_future()
        self._echo_waits[token] = waiting
        try:
            async with asyncio.timeout(ECHO_WAIT):
                return await waiting
        except TimeoutError:
            return None
        finally:
            self._echo_waits.pop(token, None)

    async def _dispatch(self, events: list[Event]) -> None:
        """Deliver one exam's consecutive events, skipping what this process already heard
        (what `_recover` read back may come again on the new subscription). Each listener
        takes them all, in seq order, before the next one starts: the hub (the first) writes
        the frames of another process's bulk change before the drainer's and the drop
        alerts' listeners take their note of it, not between the frames."""
        exam_id = events[0].exam_id
        heard = self._heard_seq.get(exam_id, 0)
        if events[-1].seq <= heard:
            return
        if events[0].seq <= heard:
            events = [event for event in events if event.seq > heard]
        self._heard_seq[exam_id] = events[-1].seq
        view = self._views.get(exam_id)
        if view is not None:
            self._to_view(exam_id, view, events)
        listeners = list(self._listeners)
        for listener in listeners:
            for event in events:
                try:
                    outcome = listener(event)
                    if outcome is not None and inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    log.exception("event listener %r failed on seq %d", listener, event.seq)

    # -- the sessions staff commands decide on ---------------------------------------------------

    async def command_view(
        self, exam_id: str, fields: tuple[str, ...], whole: bool
    ) -> dict[str, dict[str, Any]] | None:
        """The served exam's sessions (those `fields`, "id" among them) as of the last event
        heard here: see `StateStore.command_view`. Made from one `snapshot` (which returns the
        seq it includes, atomically) taken while the exam's channel is subscribed, so every
        later event reaches it; the events heard while it is being made wait and are applied
        after those the snapshot includes. Only events that carry a version change it: a
        versioned commit writes exactly its events' changes (the state machine builds both from
        one dict), while an unversioned one (acks, progress) changes only fields no staff
        decision reads, and a record-only one changes nothing."""
        view = self._views.get(exam_id)
        if view is not None:
            return view.sessions if view.events is None and view.fields == fields else None
        if not self._can_view(exam_id):
            return None
        # Registered now, before any await: every caller until it is made finds it being made
        # (not one more snapshot of the whole exam each, all but the last thrown away).
        view = self._views[exam_id] = _View(fields)
        if whole:
            return await self._make_view(exam_id, view)
        self._make_view_later(exam_id, view)
        return None

    def warm_views(self, fields: tuple[str, ...]) -> None:
        """See `StateStore.warm_views`: from now on, as this process starts serving an exam
        (its channel newly subscribed here: `serve`), its copy with `fields` is made in the
        background, registered at once as `command_view` registers it (a command arriving
        meanwhile finds it being made and reads, as it would; none makes another). Once per
        start of serving: a copy dropped later (gap, subscription re-made, rebuild) is made
        again by the next command, as before, and a channel re-subscribed after a loss does
        not warm anything."""
        self._warm_fields = fields

    def _warm_view(self, exam_id: str) -> None:
        fields = self._warm_fields
        if fields is None or exam_id in self._views or not self._can_view(exam_id):
            return
        view = self._views[exam_id] = _View(fields)
        self.views_warmed += 1
        self._make_view_later(exam_id, view)

    def _make_view_later(self, exam_id: str, view: _View) -> None:
        """Make the registered `view` in a task: its slices are awaited one by one, so the
        opens and commands meanwhile are not held up by it."""
        task = asyncio.get_running_loop().create_task(self._make_view(exam_id, view))
        self._view_tasks.add(task)
        task.add_done_callback(self._view_made)

    def command_copies(self) -> dict[str, int]:
        return {"made": self.views_made, "reads": self.view_reads, "warmed": self.views_warmed}

    def forget_view(self, exam_id: str) -> None:
        self._views.pop(exam_id, None)

    def _view_made(self, task: asyncio.Task[Any]) -> None:
        self._view_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not read exam sessions for commands", exc_info=task.exception())

    def _can_view(self, exam_id: str) -> bool:
        return (self.subscribed and exam_id in self._served
                and self.keys.exam_events(exam_id) in self._channels)

    def _drop_views(self) -> None:
        self._view_epoch += 1
        self._views.clear()

    async def _make_view(self, exam_id: str, view: _View) -> dict[str, dict[str, Any]] | None:
        epoch = self._view_epoch
        if self._views.get(exam_id) is not view:
            return None  # dropped before it was started (subscription lost, exam let go)
        try:
            self.view_reads += 1
            rows, seq = await self._view_slices(exam_id, view.fields)
        except BaseException:
            if self._views.get(exam_id) is view:
                del self._views[exam_id]  # made again next time
            raise
        if (self._views.get(exam_id) is not view or epoch != self._view_epoch or not rows
                or not self._can_view(exam_id)):
            # dropped meanwhile (subscription lost, exam let go), or nothing to decide on yet
            if self._views.get(exam_id) is view:
                del self._views[exam_id]
            return None
        heard, view.events = view.events or [], None
        view.sessions = {row["id"]: row for row in rows}
        view.seq = seq
        self.views_made += 1
        if heard:
            self._to_view(exam_id, view, heard)
        return view.sessions if self._views.get(exam_id) is view else None

    async def _view_slices(
        self, exam_id: str, fields: tuple[str, ...]
    ) -> tuple[list[dict[str, Any]], int]:
        """The exam's sessions (those `fields`) read slice by slice (view_slice.lua, about
        `VIEW_SLICE` sessions a call), and the seq before the first slice: every session read
        includes every event up to it, and maybe later ones, which its version tells (see
        `_to_view`). One whole-exam snapshot held Redis, and every command round trip waiting
        on it, for 60-130 ms at 5,000 sessions, and its decode held the event loop. A session
        read twice (SSCAN may return it again) is kept as read last: the later read."""
        keys = [self.keys.seq(exam_id), self.keys.sessions(exam_id)]
        prefix, absent = self.keys.session_prefix(exam_id), self.keys.absent(exam_id)
        defaults = [SESSION_DEFAULTS.get(name) for name in fields]
        sessions: dict[str, dict[str, Any]] = {}
        first: int | None = None
        cursor: bytes | str = "0"
        while True:
            seq, cursor, reply = await self._view_script(
                keys=keys, args=[prefix, cursor, VIEW_SLICE, absent, *fields]
            )
            if first is None:
                first = int(seq)
            for row in orjson.loads(reply):
                session = {name: default if value is None else value
                           for name, value, default in zip(fields, row, defaults, strict=True)}
                sessions[str(session["id"])] = session
            if _text(cursor) == "0":
                return list(sessions.values()), first

    def _to_view(self, exam_id: str, view: _View, events: list[Event]) -> None:
        """Bring the view forward by these consecutive events of its exam (seq order); what it
        already includes is skipped; a gap (events it will never see) drops it. A session read
        after the view's seq (a later slice) may include some: an event whose version it has
        already is skipped (versions only grow, one commit at a time)."""
        if view.events is not None:
            view.events += events
            return
        if events[-1].seq <= view.seq:
            return  # all in it already (the echo of an own commit brought in at its answer)
        sessions = view.sessions
        seq = view.seq
        for event in events:
            if event.seq <= seq:
                continue
            if event.seq != seq + 1:
                view.seq = seq
                self._views.pop(exam_id, None)
                return
            seq = event.seq
            changes = event.changes
            if "version" not in changes:
                continue
            session = sessions.get(event.session_id)
            if session is not None and changes["version"] > session.get("version", -1):
                for name, value in changes.items():
                    if name in session:
                        session[name] = value
        view.seq = seq

    # -- exams and sessions ---------------------------------------------------------------------

    async def put_exam(self, exam: Exam) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.exam(exam.id), json.dumps(exam.to_dict()))
            pipe.sadd(self.keys.outboxes, exam.id)
            await pipe.execute()

    async def get_exam(self, exam_id: str) -> Exam | None:
        raw = await self._client.get(self.keys.exam(exam_id))
        return None if raw is None else Exam.from_dict(json.loads(raw))

    async def add_sessions(self, sessions: list[dict[str, Any]]) -> None:
        if not sessions:
            return
        calls = [
            [
                self.keys.session(session["exam_id"], session["id"]),
                self.keys.sessions(session["exam_id"]),
                session["id"],
                _json(session.get("access_code", "")),
                *_encode_fields(session),
            ]
            for session in sessions
        ]
        created = await _run_script(self._client, self._create_script, 2, calls)
        codes = {
            session["access_code"]: f"{session['exam_id']}\n{session['id']}"
            for session, outcome in zip(sessions, created, strict=True)
            if outcome and session.get("access_code")
        }
        candidates: dict[str, dict[str, str]] = {}
        for session, outcome in zip(sessions, created, strict=True):
            if outcome and session.get("candidate_id"):
                by_exam = candidates.setdefault(session["exam_id"], {})
                by_exam[session["candidate_id"]] = session["id"]
        if codes or candidates:
            async with self._client.pipeline(transaction=False) as pipe:
                if codes:
                    pipe.hset(self.keys.codes, mapping=codes)
                for exam_id, mapping in candidates.items():
                    pipe.hset(self.keys.candidates(exam_id), mapping=dict(mapping))  # type: ignore[arg-type]
                await pipe.execute()

    async def get_sessions(
        self, exam_id: str, session_ids: list[str]
    ) -> list[dict[str, Any] | None]:
        if not session_ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.hgetall(self.keys.session(exam_id, sid))
            replies = await pipe.execute()
        return [_decode_fields(raw) if raw else None for raw in replies]

    async def read_sessions(
        self, exam_id: str, session_ids: list[str]
    ) -> list[dict[str, Any] | None]:
        """`get_sessions` through the next read round trip (see `_flush_reads`)."""
        if not session_ids:
            return []
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[dict[str, Any] | None]] = loop.create_future()
        self._session_reads.append((exam_id, list(session_ids), done))
        self._schedule_reads(loop)
        return await done

    async def session_by_code(self, access_code: str) -> tuple[str, str] | None:
        """Through the next read round trip (see `_flush_reads`)."""
        if not access_code:
            return None
        loop = asyncio.get_running_loop()
        raw = await self._look_up(loop, self.keys.codes, access_code)
        if raw is None:
            return None
        exam_id, _, session_id = _text(raw).partition("\n")
        return exam_id, session_id

    async def session_by_candidate(self, exam_id: str, candidate_id: str) -> str | None:
        """Through the next read round trip (see `_flush_reads`)."""
        loop = asyncio.get_running_loop()
        raw = await self._look_up(loop, self.keys.candidates(exam_id), candidate_id)
        return None if raw is None else _text(raw)

    def _look_up(
        self, loop: asyncio.AbstractEventLoop, key: str, name: str
    ) -> asyncio.Future[bytes | None]:
        done: asyncio.Future[bytes | None] = loop.create_future()
        self._lookups.append((key, name, done))
        self._schedule_reads(loop)
        return done

    def _schedule_reads(self, loop: asyncio.AbstractEventLoop) -> None:
        """The first lookup of a loop turn starts the task that sends them; it runs in the
        next turn and takes everything that arrived until then."""
        if not self._reads_scheduled:
            self._reads_scheduled = True
            self._send_next_turn(loop, self._flush_reads())

    async def _flush_reads(self) -> None:
        """One pipeline for every lookup of the loop turn: one HMGET per hash looked up in
        (the access codes, an exam's candidates) and per exam one command_read.lua call (no
        command id, every field) for all the sessions asked for, decoded in one call. An
        HMGET or a script call that fails fails only its own callers; a round trip that
        fails fails them all (they are reads: nothing was applied). A script call refused
        because its exam's slot is half migrated (Redis Cluster: a session read as missing
        may not have moved yet) is read again key by key (`get_sessions`), which is exact."""
        self._reads_scheduled = False
        lookups, reads = self._lookups, self._session_reads
        self._lookups, self._session_reads = [], []
        if not lookups and not reads:
            return
        self.read_round_trips += 1
        names: dict[str, dict[str, None]] = {}  # hash key -> its fields, once each
        for key, name, _ in lookups:
            names.setdefault(key, {})[name] = None
        hashes = [(key, list(fields)) for key, fields in names.items()]
        groups: dict[str, list[tuple[list[str], asyncio.Future[Any]]]] = {}
        for exam_id, ids, done in reads:
            groups.setdefault(exam_id, []).append((ids, done))
        keys = self.keys
        calls: list[_ScriptCall] = []
        for exam_id, group in groups.items():
            args: list[Any] = [keys.session_prefix(exam_id), keys.command_result(exam_id, ""),
                               keys.command(exam_id, ""), keys.absent(exam_id), 0]
            for ids, _ in group:
                args += ["", len(ids), *ids]
            calls.append(_ScriptCall(self._read_script, exam_id, [keys.sessions(exam_id)], args))
        try:
            found, replies = await self._read_pipeline(hashes, calls)
        except BaseException as exc:
            waiting = [done for _, _, done in lookups] + [done for _, _, done in reads]
            for done in waiting:
                if not done.done():
                    done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        values: dict[tuple[str, str], Any] = {}
        failed: dict[str, Exception] = {}
        for (key, fields), got in zip(hashes, found, strict=True):
            if isinstance(got, Exception):
                failed[key] = got
            else:
                values.update(((key, name), value) for name, value in zip(fields, got, strict=True))
        for key, name, done in lookups:
            if not done.done():
                if key in failed:
                    done.set_exception(failed[key])
                else:
                    done.set_result(values[key, name])
        moving: list[tuple[str, list[tuple[list[str], asyncio.Future[Any]]]]] = []
        for (exam_id, group), reply in zip(groups.items(), replies, strict=True):
            try:
                if isinstance(reply, Exception):
                    if slot_in_motion(reply):
                        moving.append((exam_id, group))
                        continue
                    raise reply
                answers = _decode_reads(reply, ())
            except Exception as exc:
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, done), (_, _, sessions) in zip(group, answers, strict=True):
                if not done.done():
                    done.set_result(sessions)
        for exam_id, group in moving:
            # The exam's slot is half-way through a migration (a Redis Cluster): the script
            # was refused rather than report a session that has not moved yet as missing.
            # Read key by key instead: each HGETALL goes where its key is (ASK), and answers
            # exactly, missing only if it is missing on both masters.
            try:
                found = await self.get_sessions(exam_id, [sid for ids, _ in group for sid in ids])
            except Exception as exc:
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            at = 0
            for ids, done in group:
                if not done.done():
                    done.set_result(found[at:at + len(ids)])
                at += len(ids)

    async def _read_pipeline(
        self, hashes: list[tuple[str, list[str]]], calls: list[_ScriptCall]
    ) -> tuple[list[Any], list[Any]]:
        """An HMGET per (hash key, fields) and the script calls in one pipeline: per hash
        its values or its error, and per call its reply or its error. A script is loaded
        only when Redis answers NOSCRIPT, and only the refused calls are sent again (reads:
        harmless)."""
        found: list[Any] | None = None if hashes else []
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            async with self._client.pipeline(transaction=False) as pipe:
                if found is None:
                    for key, fields in hashes:
                        pipe.hmget(key, fields)
                for i in todo:
                    call = calls[i]
                    pipe.execute_command("EVALSHA", call.script.sha, len(call.keys),
                                         *call.keys, *call.args)
                answers = await pipe.execute(raise_on_error=False)
            if found is None:
                found, answers = answers[:len(hashes)], answers[len(hashes):]
            refused = []
            for i, answer in zip(todo, answers, strict=True):
                replies[i] = answer
                if isinstance(answer, NoScriptError) and attempt == 0:
                    refused.append(i)
            if not refused:
                break
            self._read_script.sha = await self._client.script_load(self._read_script.script)
            todo = refused
        return found or [], replies


    async def snapshot(
        self, exam_id: str, fields: tuple[str, ...] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        reply = await self._snapshot_script(
            keys=[self.keys.seq(exam_id), self.keys.sessions(exam_id)],
            args=[self.keys.session_prefix(exam_id), self.keys.absent(exam_id),
                  *(fields or ())],
        )
        rows = orjson.loads(reply[1])
        if not fields:
            return rows, int(reply[0])
        defaults = [SESSION_DEFAULTS[name] for name in fields]
        sessions = [
            {name: default if value is None else value
             for name, value, default in zip(fields, row, defaults, strict=True)}
            for row in rows
        ]
        return sessions, int(reply[0])

    async def stale_holders(
        self, exam_id: str, seen_before: float, dead_nodes: Collection[str] = ()
    ) -> list[str]:
        """In slices of about `SWEEP_SLICE` sessions, one script call each: a whole exam in
        one call held Redis (and every command waiting on it) for tens of milliseconds. SSCAN
        returns every session that is in the exam for the whole scan (a session the sweeper
        must see was created before it), some maybe twice."""
        keys = [self.keys.sessions(exam_id)]
        prefix, cutoff, dead = self.keys.session_prefix(exam_id), repr(seen_before), sorted(
            dead_nodes)
        found: dict[str, None] = {}
        cursor: bytes | str = "0"
        while True:
            reply = await self._stale_script(
                keys=keys, args=[prefix, cutoff, cursor, SWEEP_SLICE, *dead]
            )
            cursor = reply[0]
            for sid in reply[1:]:
                found[_text(sid)] = None
            if _text(cursor) == "0":
                return list(found)

    async def node_heartbeat(
        self, node_id: str, info: dict[str, Any], now: float, timeout: float
    ) -> list[str]:
        nodes = self.keys.nodes
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zadd(nodes, {node_id: now})
            pipe.set(self.keys.node(node_id), orjson.dumps(info), ex=int(NODE_MEMORY))
            pipe.zremrangebyscore(nodes, "-inf", now - NODE_MEMORY)
            pipe.zrangebyscore(nodes, now - NODE_MEMORY, now - timeout)
            *_, dead = await pipe.execute()
        return [_text(node) for node in dead]

    async def list_nodes(self) -> list[dict[str, Any]]:
        beats = cast(list[tuple[bytes, float]], await self._client.zrange(
            self.keys.nodes, 0, -1, withscores=True
        ))
        if not beats:
            return []
        ids = [_text(node) for node, _ in beats]
        async with self._client.pipeline(transaction=False) as pipe:  # keys of many slots
            for node in ids:
                pipe.get(self.keys.node(node))
            infos = await pipe.execute()
        return [
            {"id": node, "last_beat": float(score), "info": orjson.loads(info) if info else {}}
            for node, (_, score), info in zip(ids, beats, infos, strict=True)
        ]

    async def events_since(self, exam_id: str, seq: int) -> list[Event] | None:
        reply = await self._since_script(
            keys=[self.keys.seq(exam_id), self.keys.outbox(exam_id)], args=[seq]
        )
        current, covered = int(reply[0]), int(reply[1])
        if seq > current:
            return None  # a sequence this exam never reached: the client needs a snapshot
        if seq == current:
            return []
        if not covered:
            return None
        events: list[Event] = []
        for k in range(len(reply) - 2, 1, -2):  # oldest entry first
            events += decode_events(int(reply[k]), reply[k + 1])
        return [event for event in events if event.seq > seq]

    async def ensure_seq(self, exam_id: str, minimum: int) -> None:
        key = self.keys.seq(exam_id)
        await self._ensure_script(keys=[key], args=[minimum])

    async def touch(
        self, holders: list[tuple[str, str, str]], now: float
    ) -> list[tuple[str, str, str]]:
        if not holders:
            return []
        stamp = _json(now)
        by_exam: dict[str, list[tuple[str, str, str]]] = {}
        for holder in holders:
            by_exam.setdefault(holder[0], []).append(holder)
        calls = []
        for exam_id, held in by_exam.items():
            flat: list[Any] = []
            for _, sid, conn_id in held:
                flat += [sid, _json(conn_id)]
            calls.append(([self.keys.seq(exam_id)], [
                self.keys.session_prefix(exam_id), stamp,
                msgpack.packb(flat, use_bin_type=False),
            ]))
        try:
            replies = _or_raise(
                await _run_batches(self._client, self._touch_script, calls))
        except (ConnectionError, OSError, RedisConnectionError, RedisTimeoutError):
            self._lost()
            raise
        self._heard()
        lost: list[tuple[str, str, str]] = []
        for held, reply in zip(by_exam.values(), replies, strict=True):
            lost += [holder for holder, flag in zip(held, reply, strict=True) if flag]
        return lost

    # -- commands ---------------------------------------------------------------------------

    async def command_result(self, exam_id: str, command_id: str) -> dict[str, Any] | None:
        raw = await self._client.get(self.keys.command_result(exam_id, command_id))
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    async def command_applied(self, exam_id: str, command_id: str) -> dict[str, int]:
        raw = await self._client.hgetall(self.keys.command(exam_id, command_id))
        return {_text(sid): int(seq) for sid, seq in raw.items()}

    async def read_for_command(
        self, exam_id: str, command_id: str, session_ids: list[str],
        fields: tuple[str, ...] | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, int], list[dict[str, Any] | None]]:
        """Through the next command round trip (see `_send_command_io`): the reads of all
        targeted commands that arrive in one loop turn go as one pipeline, one
        command_read.lua call per exam."""
        if not command_id and not session_ids:
            return None, {}, []
        loop = asyncio.get_running_loop()
        read = _Read(exam_id, command_id, list(session_ids), tuple(fields or ()),
                     loop.create_future())
        self._io_reads.append(read)
        self._schedule_command_io(loop)
        return await read.done

    async def save_command_result(
        self, exam_id: str, command_id: str, result: dict[str, Any]
    ) -> None:
        """With the next command round trip: one command_keep.lua call per exam keeps every
        answer of that loop turn."""
        loop = asyncio.get_running_loop()
        save = _Save(exam_id, command_id, orjson.dumps(result), loop.create_future())
        self._io_saves.append(save)
        self._schedule_command_io(loop)
        await save.done

    def _schedule_command_io(self, loop: asyncio.AbstractEventLoop) -> None:
        """The first read or answer of a loop turn starts the task that sends them; it runs
        in the next turn, and takes everything that arrived until then."""
        if not self._io_scheduled:
            self._io_scheduled = True
            self._send_next_turn(loop, self._flush_command_io())

    def _send_next_turn(self, loop: asyncio.AbstractEventLoop,
                        flush: Coroutine[Any, Any, None]) -> None:
        """Run a flush of what a loop turn gathered as a task, kept until it is done."""
        task = loop.create_task(flush)
        self._io_tasks.add(task)
        task.add_done_callback(self._io_tasks.discard)

    async def _flush_command_io(self) -> None:
        self._io_scheduled = False
        reads, saves, appends = self._io_reads, self._io_saves, self._io_appends
        self._io_reads, self._io_saves, self._io_appends = [], [], []
        if reads or saves or appends:
            await self._send_command_io(reads, saves, appends)

    async def _send_command_io(self, reads: list[_Read], saves: list[_Save],
                               appends: list[_Append] | None = None) -> None:
        """One pipeline: per exam one command_keep.lua call for the answers to keep, then per
        exam one audit_append.lua call for its audit rows, then per exam (and field list) one
        command_read.lua call for all its reads. A call that fails fails only the callers in
        it; a round trip that fails (connection lost) fails every caller of this turn."""
        self.command_round_trips += 1
        keeps: dict[str, list[_Save]] = {}
        for save in saves:
            keeps.setdefault(save.exam_id, []).append(save)
        audits: dict[str, list[_Append]] = {}
        for append in appends or ():
            audits.setdefault(append.exam_id, []).append(append)
        groups: dict[tuple[str, tuple[str, ...]], list[_Read]] = {}
        for read in reads:
            groups.setdefault((read.exam_id, read.fields), []).append(read)
        keys = self.keys
        calls: list[_ScriptCall] = []
        for exam_id, kept in keeps.items():
            args: list[Any] = [keys.command_result(exam_id, ""), COMMAND_TTL]
            for save in kept:
                args += [save.command_id, save.blob]
            calls.append(_ScriptCall(self._keep_script, exam_id, [keys.sessions(exam_id)], args))
        now = repr(time.time())
        for exam_id, appended in audits.items():
            rows = [row for append in appended for row in append.rows]
            calls.append(_ScriptCall(self._audit_script, exam_id,
                                     [keys.seq(exam_id), keys.outbox(exam_id)],
                                     [now, msgpack.packb(rows, use_bin_type=True)]))
        for (exam_id, fields), group in groups.items():
            args = [keys.session_prefix(exam_id), keys.command_result(exam_id, ""),
                    keys.command(exam_id, ""), keys.absent(exam_id), len(fields), *fields]
            for read in group:
                args += [read.command_id, len(read.session_ids), *read.session_ids]
            calls.append(_ScriptCall(self._read_script, exam_id, [keys.sessions(exam_id)], args))
        try:
            replies = await self._command_pipeline(calls)
        except BaseException as exc:
            waiting: list[asyncio.Future[Any]] = [save.done for save in saves]
            waiting += [append.done for append in appends or ()]
            waiting += [read.done for read in reads]
            for done in waiting:
                if not done.done():
                    done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        written = len(keeps) + len(audits)
        done_by_call = [[save.done for save in kept] for kept in keeps.values()]
        done_by_call += [[append.done for append in appended] for appended in audits.values()]
        for waiting_call, reply in zip(done_by_call, replies[:written], strict=True):
            for done in waiting_call:
                if not done.done():
                    if isinstance(reply, Exception):
                        done.set_exception(reply)
                    else:
                        done.set_result(None)
        for ((_, fields), group), reply in zip(groups.items(), replies[written:],
                                               strict=True):
            try:
                if isinstance(reply, Exception):
                    raise reply
                answers = _decode_reads(reply, fields)
            except Exception as exc:
                for read in group:
                    if not read.done.done():
                        read.done.set_exception(exc)
                continue
            for read, answer in zip(group, answers, strict=True):
                if not read.done.done():
                    read.done.set_result(answer)

    async def _command_pipeline(self, calls: list[_ScriptCall]) -> list[Any]:
        """The script calls in one pipeline; each answer is a reply or the error of that call
        alone. Like `_run_batches`, a script is loaded only when Redis answers NOSCRIPT, and
        only the refused calls are sent again (a refused call never ran), with the reads of
        an exam whose answers to keep were refused: a read must see the answers kept before
        it."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            async with self._client.pipeline(transaction=False) as pipe:
                for i in todo:
                    call = calls[i]
                    pipe.execute_command("EVALSHA", call.script.sha, len(call.keys),
                                         *call.keys, *call.args)
                answers = await pipe.execute(raise_on_error=False)
            refused = set()
            for i, answer in zip(todo, answers, strict=True):
                replies[i] = answer
                if isinstance(answer, NoScriptError) and attempt == 0:
                    refused.add(i)
            if not refused:
                break
            for script in {id(calls[i].script): calls[i].script for i in refused}.values():
                script.sha = await self._client.script_load(script.script)
            late = {calls[i].exam_id for i in refused if calls[i].script is self._keep_script}
            todo = [i for i, call in enumerate(calls)
                    if i in refused or (call.script is self._read_script and call.exam_id in late)]
        return replies

    # -- commits --------------------------------------------------------------------------------

    async def commit(self, commits: list[Commit]) -> list[CommitResult]:
        """One commit_batch.lua call per exam, all in one pipeline: one round trip; an exam's
        commits beyond `commit_chunk` go in chunks, one call each (`_stream`).

        A "version" in `changes` is ignored: the store owns it. If the connection drops
        mid-way this raises and the outcome is unknown (commits are never resent): re-read.
        The calls fail or succeed one by one: when some failed and others went through,
        or a call was refused before it ran (a cluster slot in motion: the commit script
        touches every key before its first write, so it is refused whole), this raises
        `CommitsFailed` with the results of those that went through (of an exam in chunks,
        those of its chunks that went through: each chunk is one atomic step).
        """
        if not commits:
            return []
        by_exam: dict[str, list[int]] = {}
        for index, commit in enumerate(commits):
            by_exam.setdefault(commit.exam_id, []).append(index)
        calls: list[_Call] = []
        chunked = False
        for exam_id, indexes in by_exam.items():
            parts = self._chunks(indexes)
            claim = ""  # one per exam's chunks: see commit_batch.lua, "Claims"
            if len(parts) > 1:
                chunked = True
                claim = f"{self._origin}.{next(self._calls)}"
            for part in parts:
                calls.append(_Call(exam_id, part, f"{self._origin}.{next(self._calls)}", claim))
        tokens = [call.token for call in calls]
        self._in_flight.update(tokens)
        results: list[CommitResult | None] = [None] * len(commits)
        errors: dict[str, list[BaseException]] = {}
        try:
            if chunked and not self.cluster:
                await self._stream(commits, calls, results, errors)
            else:  # (a cluster's chunks go in one pipeline: answered together)
                args = [self._batch_args(call.exam_id, [commits[i] for i in call.indexes],
                                         call.token, call.claim) for call in calls]
                replies = await _run_batches(self._commit_client, self._commit_script, args)
                for call, reply in zip(calls, replies, strict=True):
                    self._take_reply(commits, call, reply, results, errors)
        finally:
            self._in_flight.difference_update(tokens)
            self._echoed.difference_update(tokens)
            for token in tokens:  # failed: the echo decodes its message
                waiting = self._echo_waits.pop(token, None)
                if waiting is not None:
                    _give(waiting, None)
        if errors:
            # resendable: every call of the exam that failed was refused before it ran, so
            # its commits that did not go through (None in `results`) may go again
            resendable = [exam_id for exam_id, failed in errors.items()
                          if all(map(slot_in_motion, failed))]
            if not resendable and all(result is None for result in results):
                raise next(iter(errors.values()))[0]  # nothing went through: as a single call
            raise CommitsFailed(results, {exam_id: failed[0] for exam_id, failed
                                          in errors.items()}, resendable)
        return cast(list[CommitResult], results)

    def _chunks(self, indexes: list[int]) -> list[list[int]]:
        """An exam's commits of one `commit` as the script calls that carry them: one, or
        beyond `commit_chunk` commits as few chunks as that allows, as even as can be, in
        order (a whole-exam command's `members` commit, its last, goes in its last chunk)."""
        size = self._commit_chunk
        if size <= 0 or len(indexes) <= size:
            return [indexes]
        count = -(-len(indexes) // size)
        step, extra = divmod(len(indexes), count)
        parts = []
        start = 0
        for k in range(count):
            end = start + step + (1 if k < extra else 0)
            parts.append(indexes[start:end])
            start = end
        return parts

    async def _stream(self, commits: list[Commit], calls: list[_Call],
                      results: list[CommitResult | None],
                      errors: dict[str, list[BaseException]]) -> None:
        """The calls back to back on ONE connection (Redis runs them in the order sent), each
        sent as soon as it is encoded, each answer read as it arrives: Redis runs chunk k while
        the process encodes chunk k + 1 and reads chunk k - 1's answer. The answers are taken
        in (`_take_reply`: results, events handed out as one call's are) once the last is
        read, or the connection failed. Calls refused with NOSCRIPT are sent again once the script
        is loaded, as `_run_batches` does (a refused call never ran)."""
        refused = await self._send_and_take(commits, calls, results, errors, again=True)
        if not refused:
            return
        script = self._commit_script
        try:
            script.sha = await self._commit_client.script_load(script.script)
        except Exception as error:
            for call in refused:  # refused, and not sent again: nothing of them ran
                errors.setdefault(call.exam_id, []).append(error)
            return
        await self._send_and_take(commits, refused, results, errors, again=False)

    async def _send_and_take(self, commits: list[Commit], calls: list[_Call],
                             results: list[CommitResult | None],
                             errors: dict[str, list[BaseException]], again: bool) -> list[_Call]:
        """See `_stream`: the calls refused with NOSCRIPT (with `again`) are returned. A
        connection that fails fails every call not answered yet (outcome unknown); those
        answered are taken in first (applied is applied).

        No chunk's events go out before the last chunk is answered: handed out chunk by chunk,
        the hub wrote the first chunks' frames while the later ones were in Redis, and the
        candidates' acks of them were read and decided before the later frames went (slower
        than one call on 2 cores: docs/performance.md, tenth session)."""
        pool = self._commit_client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        sha = self._commit_script.sha
        sent: asyncio.Queue[int] = asyncio.Queue()  # calls sent, in order; -1: sender done

        async def send() -> None:
            try:
                for k, call in enumerate(calls):
                    keys, args = self._batch_args(
                        call.exam_id, [commits[i] for i in call.indexes], call.token, call.claim)
                    await conn.send_packed_command(
                        conn.pack_command("EVALSHA", sha, len(keys), *keys, *args),
                        check_health=False)
                    sent.put_nowait(k)
            finally:
                sent.put_nowait(-1)

        # Sending apart from reading: a send that waits for Redis to read (a big chunk while
        # Redis runs the one before) must not hold up the answers already there.
        sender = asyncio.get_running_loop().create_task(send())
        refused: list[_Call] = []
        answered: list[tuple[_Call, Any]] = []  # in the order sent (= run)
        taken = 0
        try:
            while taken < len(calls) and await sent.get() >= 0:
                try:
                    reply = await conn.read_response()
                except ResponseError as error:  # that call's own error: the connection is fine
                    reply = error
                call = calls[taken]
                taken += 1
                if again and isinstance(reply, NoScriptError):
                    refused.append(call)
                else:
                    answered.append((call, reply))
            await sender  # (raises what stopped it before it sent them all)
        except BaseException as error:
            self._take_replies(commits, answered, results, errors)
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            await conn.disconnect(nowait=True)  # answers may be left unread on it
            if not isinstance(error, Exception):
                raise
            for call in calls[taken:]:  # sent (or not), unanswered: outcome unknown
                errors.setdefault(call.exam_id, []).append(error)
        finally:
            await pool.release(conn)
        self._take_replies(commits, answered, results, errors)
        return refused

    def _take_replies(self, commits: list[Commit], answered: list[tuple[_Call, Any]],
                      results: list[CommitResult | None],
                      errors: dict[str, list[BaseException]]) -> None:
        # handed out as one call of them all would be: a hall's chunks after the caller's answer
        whole = sum(len(call.indexes) for call, _ in answered) if len(answered) > 1 else 0
        for call, reply in answered:
            self._take_reply(commits, call, reply, results, errors, whole)
        answered.clear()

    def _take_reply(self, commits: list[Commit], call: _Call, reply: Any,
                    results: list[CommitResult | None],
                    errors: dict[str, list[BaseException]], whole: int = 0) -> None:
        """One script call's answer: its commits' results, and their events handed out (as
        part of `whole` commits, if it is a chunk)."""
        if isinstance(reply, Exception):
            errors.setdefault(call.exam_id, []).append(reply)
            return
        token = call.token
        events: list[Event] = []
        take = self._result
        for index, status, seq in zip(call.indexes, reply[0::2], reply[1::2], strict=True):
            result = take(commits[index], int(status), int(seq))
            results[index] = result
            events += result.events
        if events and token not in self._echoed:
            self._hand_out(token, events, whole)
        if events:
            view = self._views.get(events[0].exam_id)
            if view is not None and view.events is None and events[0].seq == view.seq + 1:
                # nothing of others' is unheard before them: no need to wait the echo
                self._to_view(events[0].exam_id, view, events)
        waiting = self._echo_waits.pop(token, None)
        if waiting is not None:  # the echo came first: it gets them after the hand-out
            self._unechoed.pop(token, None)
            self._hand_off.then(functools.partial(_give, waiting, events), len(events))

    def _hand_out(self, token: str, events: list[Event], whole: int = 0) -> None:
        """Give the commit listeners this call's events now, and keep them for the echo (if
        it is coming: the exam is served here). A big batch waits for the callers the commit
        wakes (`HandOff`).

        Only when they follow what this process has heard of the exam: if another process's
        earlier events are still on their way (or unheard: the subscription is down or being
        re-made after a slot moved), a page given these first would take the earlier ones for
        old and drop them. The echo then brings them, in seq order, after those."""
        exam_id = events[0].exam_id
        if exam_id in self._served:
            self._unechoed[token] = events
            if len(self._unechoed) > MAX_UNECHOED:
                self._unechoed.popitem(last=False)
            last = max(self._heard_seq.get(exam_id, -1), self._handed_seq.get(exam_id, -1))
            if not self.subscribed or events[0].seq != last + 1:
                return
            self._handed_seq[exam_id] = events[-1].seq
        self._hand_off(events, whole)

    def _give_listeners(self, events: list[Event]) -> None:
        for listener in self._commit_listeners:
            try:
                listener(events)
            except Exception:  # applied is applied: never let a listener fail the commit
                log.exception("commit listener %r failed", listener)

    def _batch_args(
        self, exam_id: str, commits: list[Commit], token: str, claim: str = ""
    ) -> tuple[list[Any], list[Any]]:
        """One script call's keys and arguments: the commits travel as ONE msgpack argument
        (packing tens of thousands of separate arguments costs redis-py more than the
        script costs Redis), a flat array (nested arrays cost Redis twice as much to
        unpack), and their events as one more, joined (the script takes it as the outbox
        entry when they all apply, instead of unpacking and joining thousands of strings)."""
        keys = self.keys
        flat: list[Any] = []  # one flat array: see commit_batch.lua
        joined: list[bytes] = []  # the events, back to back (ARGV[11]); `flat` has lengths
        alike: dict[int, _Like] = {}  # by id of the commits' `like` (kept alive by them)
        version: int | None
        for commit in commits:
            expected = commit.expected_version
            like = commit.like
            if (like is not None and expected is not None and commit.members is None
                    and not commit.check_only and len(commit.events) == 1
                    and "version" not in commit.changes):
                # one decision copied to many sessions (a compare-and-set each): encoded
                # once, its event cut around what differs (`_Like`); the first of them is
                # encoded as any other
                mode, version, event = "v", expected + 1, commit.events[0]
                guard = _encode_fields(commit.guard) if commit.guard else []
                shape = alike.get(id(like))
                if shape is not None and shape.fits(event):  # a copy: from the shape's parts
                    blob = shape.blob(event, version)
                    flat += (commit.session_id, mode, str(expected), commit.command_id,
                             1 if commit.live_only else 0, 1 if commit.fresh else 0,
                             len(guard), *guard, *shape.tail, len(blob))
                    joined.append(blob)
                    continue
                pairs = _encode_fields(commit.changes)
                if shape is None and "version" not in event.changes:
                    alike[id(like)] = _Like.of(event, pairs)
                blobs = [encode_event(event, version)]
            else:
                if commit.members is not None:
                    mode, version, expected = "n", None, commit.members
                elif commit.check_only:
                    mode, version = "c", None
                elif expected is not None:
                    mode, version = "v", expected + 1
                elif commit.guard is not None:
                    mode, version = "g", None
                else:
                    mode, version = "r", None
                guard = _encode_fields(commit.guard) if commit.guard else []
                pairs = [] if mode in "rcn" else _encode_fields(commit.changes, skip="version")
                blobs = ([] if mode in "cn"
                         else [encode_event(event, version) for event in commit.events])
            flat += (commit.session_id, mode, "" if expected is None else str(expected),
                     commit.command_id, 1 if commit.live_only else 0, 1 if commit.fresh else 0,
                     len(guard), *guard, len(pairs), *pairs, len(blobs), *map(len, blobs))
            joined += blobs
        args = [keys.exam_events(exam_id), repr(time.time()), COMMAND_TTL,
                keys.session_prefix(exam_id),
                keys.command(exam_id, ""), msgpack.packb(flat, use_bin_type=False), token,
                "s" if self.cluster else "p", keys.command_result(exam_id, ""),
                keys.sessions(exam_id), b"".join(joined), keys.absent(exam_id),
                keys.command_claim(exam_id, ""), claim]
        return [keys.seq(exam_id), keys.outbox(exam_id)], args

    @staticmethod
    def _result(commit: Commit, status: int, seq: int) -> CommitResult:
        if status != _APPLIED:  # (a hall's bulk command takes the other way 5,000 times)
            if status == _NOT_FOUND:
                return CommitResult(ok=False, found=False)
            if status == _CONFLICT:
                return CommitResult(ok=False)
            if status == _DUPLICATE:
                return CommitResult(ok=False, duplicate_seq=seq)
            if status == _GUARD_FAILED:
                return CommitResult(ok=False, guard_failed=True)
            if status == _KNOWN:
                return CommitResult(ok=False, known=True)
        if commit.check_only or commit.members is not None:
            return CommitResult(True)
        events = commit.events
        version = commit.expected_version
        if len(events) == 1:  # (positional, no list copy, no loop: ~2x cheaper)
            event = events[0]
            event.seq = seq
            if version is not None:
                event.changes["version"] = version + 1
            return CommitResult(True, [event])
        for offset, event in enumerate(events):
            event.seq = seq + offset
            if version is not None:
                event.changes["version"] = version + 1
        return CommitResult(True, list(events))

    # -- the outbox -----------------------------------------------------------------------------

    async def append_audit(self, exam_id: str, rows: list[dict[str, Any]]) -> None:
        """With the next command round trip (see `_send_command_io`): a command's audit row
        goes with its answer to keep, and the rows of every command of that loop turn in one
        audit_append.lua call per exam, after their commits (their answers wait for it)."""
        if not rows:
            return
        loop = asyncio.get_running_loop()
        append = _Append(exam_id, list(rows), loop.create_future())
        self._io_appends.append(append)
        self._schedule_command_io(loop)
        await append.done

    async def outbox_exams(self) -> list[str]:
        return sorted(_text(e) for e in await self._client.smembers(self.keys.outboxes))

    async def outbox_claim(
        self, exam_id: str, consumer: str, count: int, lease: float
    ) -> list[OutboxEntry] | None:
        reply = await self._claim_script(
            keys=[self.keys.outbox(exam_id), self.keys.drain_lease(exam_id)],
            args=[consumer, count, max(1, int(lease * 1000))],
        )
        if reply is None:
            return None
        # Decoded in slices of DECODE_SLICE events with a turn of the loop between them: a
        # claim of 200 entries (a bulk command's entry alone holds thousands of events) would
        # otherwise hold the event loop for tens of ms, and every delivery waits behind it.
        entries = []
        budget = DECODE_SLICE
        for raw_id, raw_fields in reply:
            entry_id = _text(raw_id)
            fields = _fields(raw_fields)
            entry = OutboxEntry(exam_id, entry_id, appended_at=float(fields.get("t", 0) or 0))
            if "d" in fields:
                first = int(entry_id.partition("-")[0])
                unpacker = msgpack.Unpacker(raw=False)
                unpacker.feed(fields["d"])
                events = entry.events
                for offset, data in enumerate(unpacker):
                    data["seq"] = first + offset
                    events.append(Event.from_dict(data))
                    budget -= 1
                    if budget <= 0:
                        await asyncio.sleep(0)
                        budget = DECODE_SLICE
            if "a" in fields:
                entry.audit = msgpack.unpackb(fields["a"], raw=False)
                budget -= len(entry.audit)
            entries.append(entry)
        return entries

    async def outbox_ack(self, exam_id: str, consumer: str, entries: list[OutboxEntry]) -> None:
        if not entries:
            return
        drained = max((e.events[-1].seq for e in entries if e.events), default=0)
        await self._ack_script(
            keys=[self.keys.outbox(exam_id), self.keys.seq(exam_id),
                  self.keys.drain_state(exam_id)],
            args=[self._log_size, drained, entries[-1].entry_id,
                  *(e.entry_id for e in entries)],
        )

    async def outbox_pending(self, exam_id: str) -> int:
        behind, _ = await self._backlog_script(
            keys=[self.keys.seq(exam_id), self.keys.outbox(exam_id),
                  self.keys.drain_state(exam_id)]
        )
        return int(behind)

    async def outbox_backlog(self, now: float) -> Backlog:
        exams = await self.outbox_exams()
        backlog = Backlog()
        if not exams:
            return backlog
        replies = _or_raise(await _run_batches(self._client, self._backlog_script, [
            ([self.keys.seq(exam_id), self.keys.outbox(exam_id), self.keys.drain_state(exam_id)],
             [])
            for exam_id in exams
        ]))
        for behind, at in replies:
            if int(behind) <= 0:
                continue
            backlog.exams += 1
            backlog.events += int(behind)
            if at:
                appended = float(at)
                if backlog.oldest_at is None or appended < backlog.oldest_at:
                    backlog.oldest_at = appended
        return backlog

    # -- drop alerts ---------------------------------------------------------------------------

    async def record_drops(
        self, exam_id: str, drops: list[Drop], window: float, threshold: int, active: float
    ) -> dict[str, Any] | None:
        if not drops:
            return None
        args: list[Any] = [repr(float(window)), int(threshold), max(1, math.ceil(active)),
                           exam_id, MAX_ALERT_SESSIONS]
        for drop in drops:
            args += [repr(float(drop.at)), drop.member]
        reply = await self._drops_script(
            keys=[self.keys.drops(exam_id), self.keys.drop_alert(exam_id)], args=args
        )
        return None if reply is None else _alert(reply)

    async def active_alerts(self, exam_id: str) -> list[dict[str, Any]]:
        raw = await self._client.get(self.keys.drop_alert(exam_id))
        return [] if raw is None else [_alert(raw)]


def _alert(raw: bytes | str) -> dict[str, Any]:
    """An alert as drops_record.lua stored it (cjson writes an empty list as an object)."""
    alert: dict[str, Any] = orjson.loads(raw)
    if not isinstance(alert.get("sessions"), list):
        alert["sessions"] = []
    return alert
