"""The shared state store: Redis holds the sessions, so any number of server processes can serve
the same exams, and Redis pub/sub carries every committed event to all of them.

Layout (see `Keys`): every key of one exam carries the exam id as a Redis Cluster hash tag, so
the Lua scripts that touch a session, the exam's seq counter and its log stay in one slot.
Session hashes hold JSON-encoded values; events travel and are logged as `b"<seq>:<msgpack>"`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import msgpack
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.maint_notifications import MaintNotificationsConfig

from realtime.state.model import Event, Exam
from realtime.state.store import Commit, CommitResult, EventListener

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0  # seconds start() waits for the event subscription
RECONNECT_MIN = 0.1  # first back-off after the subscription broke, doubled up to RECONNECT_MAX
RECONNECT_MAX = 5.0
IDLE_PING = 15.0  # ping an idle subscription this often; silent for 3x this long = dead

# commit.lua status codes besides 1 (ok)
_NOT_FOUND, _CONFLICT = 0, -1

# Create a session unless it exists (add_sessions must not overwrite live state). Returns 1 if
# created, 2 if it existed with this access code (a repeated or retried import), else 0.
# KEYS: session hash, exam session-id set; ARGV: session id, access code (JSON), field/value pairs.
_CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'access_code') == ARGV[2] then return 2 end
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# Heartbeat: refresh last_seen of a connected session; never creates a half session.
# KEYS: session hash; ARGV: JSON-encoded time.
_TOUCH_LUA = """
if redis.call('HGET', KEYS[1], 'connected') == 'true' then
  redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
end
return 0
"""


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

    def log(self, exam_id: str) -> str:
        return f"{self._exam(exam_id)}:log"

    def exam(self, exam_id: str) -> str:
        return f"{self.prefix}exam:{exam_id}"

    @property
    def codes(self) -> str:
        return f"{self.prefix}codes"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"


_ENSURE_SEQ = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


POOL_SIZE = 64  # connections per client and process
POOL_WAIT = 10.0  # seconds a call may wait for one


def _connect(url: str, retry: Retry) -> Redis:
    # Maintenance notifications off: redis-py 8.1 then skips its check for pooled connections
    # the server closed (redis/redis-py#4252), and the first command after a Redis restart
    # fails on each of them. Plain Redis does not send these notifications anyway.
    # A blocking pool: callers wait for a free connection instead of failing. redis-py's
    # default pool raises "Too many connections" past 100 concurrent calls, which a hall of
    # candidates sitting down (or acking a "pause all") easily reaches.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT,
        retry=retry,
        socket_keepalive=True,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    return Redis.from_pool(pool)


def _lua(name: str) -> str:
    return resources.files("realtime.state").joinpath("lua", name).read_text(encoding="utf-8")


def encode_event(event: Event, version: int | None) -> bytes:
    """The event as commit.lua logs and publishes it, minus the seq Redis assigns."""
    data = event.to_dict()
    del data["seq"]
    if version is not None:
        data["changes"] = {**event.changes, "version": version}
    blob: bytes = msgpack.packb(data, use_bin_type=True)
    return blob


def decode_event(entry: bytes) -> Event:
    """A logged or published `b"<seq>:<msgpack>"` entry back into an Event."""
    seq, _, blob = entry.partition(b":")
    data: dict[str, Any] = msgpack.unpackb(blob, raw=False)
    data["seq"] = int(seq)
    return Event.from_dict(data)


def _encode_fields(fields: dict[str, Any]) -> list[str]:
    pairs: list[str] = []
    for name, value in fields.items():
        pairs += [name, json.dumps(value)]
    return pairs


def _decode_fields(raw: Any) -> dict[str, Any]:
    """A session from HGETALL (a dict) or from a script (a flat field/value list)."""
    items = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    return {_text(name): json.loads(value) for name, value in items}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _run_script(
    client: Redis, script: AsyncScript, numkeys: int, calls: list[list[Any]]
) -> list[Any]:
    """Run `script` once per call (keys then args) in one pipeline: one round trip.

    redis-py's own pipelined scripts cost an extra SCRIPT EXISTS round trip each time; here the
    script is only loaded when Redis answers NOSCRIPT (after a restart), and only the refused
    calls are sent again: a refused call never ran, so resending it cannot apply it twice.
    """
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(2):
        async with client.pipeline(transaction=False) as pipe:
            for i in todo:
                pipe.evalsha(script.sha, numkeys, *calls[i])
            answers = await pipe.execute(raise_on_error=False)
        refused = []
        for i, answer in zip(todo, answers, strict=True):
            if isinstance(answer, NoScriptError) and attempt == 0:
                refused.append(i)
            elif isinstance(answer, Exception):
                raise answer
            else:
                replies[i] = answer
        if not refused:
            break
        script.sha = await client.script_load(script.script)
        todo = refused
    return replies


class RedisStore:
    """`StateStore` on Redis. One instance per process: it holds one pub/sub subscription."""

    def __init__(self, url: str, prefix: str = "rt:", log_size: int = 10_000) -> None:
        if log_size < 1:
            raise ValueError("log_size must be at least 1")
        self.keys = Keys(prefix)
        self._log_size = log_size
        # Everything but commits is idempotent, so it may be resent after a dropped connection.
        self._client = _connect(url, Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), 3))
        # Commits must not be: a resent commit.lua would report a conflict for a commit that
        # went through, or record its events twice. A failed commit raises; callers re-read.
        self._commit_client = _connect(url, Retry(NoBackoff(), 0))
        self._commit_script = self._commit_client.register_script(_lua("commit.lua"))
        self._snapshot_script = self._client.register_script(_lua("snapshot.lua"))
        self._create_script = self._client.register_script(_CREATE_LUA)
        self._touch_script = self._client.register_script(_TOUCH_LUA)
        self._stale_script = self._client.register_script(_lua("stale_holders.lua"))
        self._listeners: list[EventListener] = []
        self._resubscribe_listeners: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._subscriptions = 0
        self._subscribed = asyncio.Condition()

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
        await self._client.aclose()
        await self._commit_client.aclose()

    def add_resubscribe_listener(self, listener: Callable[[], None]) -> None:
        self._resubscribe_listeners.append(listener)

    def _notify_resubscribed(self) -> None:
        """Events published while the subscription was down never reach this process."""
        for listener in list(self._resubscribe_listeners):
            try:
                listener()
            except Exception:
                log.exception("resubscribe listener %r failed", listener)

    def add_listener(self, listener: EventListener) -> None:
        """Listeners run one after another on the subscription task: keep them quick (queue
        the event, don't process it), or every listener of this process falls behind."""
        self._listeners.append(listener)

    @property
    def subscriptions(self) -> int:
        """How often the event subscription has been (re)established: for health checks."""
        return self._subscriptions

    async def wait_subscribed(self, count: int = 1) -> None:
        """Wait until the subscription has been established `count` times in all.

        After a Redis outage, events committed before the resubscription are lost for this
        process (pub/sub does not queue); listeners recover them with `events_since`.
        """
        async with self._subscribed:
            await self._subscribed.wait_for(lambda: self._subscriptions >= count)

    async def _listen(self) -> None:
        """Keep the one subscription of this process alive until cancelled."""
        delay = RECONNECT_MIN
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.keys.events)
                async with contextlib.aclosing(self._messages(pubsub)) as messages:
                    async for kind, data in messages:
                        if kind == "subscribe":
                            delay = RECONNECT_MIN
                            async with self._subscribed:
                                self._subscriptions += 1
                                self._subscribed.notify_all()
                            if self._subscriptions > 1:
                                self._notify_resubscribed()
                        elif kind == "message":
                            await self._deliver(data)
            except Exception:
                log.warning("event subscription lost; retrying in %.1fs", delay, exc_info=True)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _messages(self, pubsub: PubSub) -> AsyncGenerator[tuple[str, Any], None]:
        """Messages as (type, data); raises when the connection is gone or silently dead.

        redis-py reconnects and resubscribes by itself on some errors, which shows up here as
        another "subscribe" message; a half-open TCP connection is caught by pinging.
        """
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            message = await pubsub.get_message(timeout=IDLE_PING)
            if message is None:
                if loop.time() - heard > 3 * IDLE_PING:
                    raise ConnectionError("no reply from Redis on the event subscription")
                await pubsub.ping()
                continue
            heard = loop.time()
            yield _text(message["type"]), message["data"]

    async def _deliver(self, entry: bytes) -> None:
        try:
            event = decode_event(entry)
        except Exception:
            log.exception("undecodable event on %s: %r", self.keys.events, entry[:200])
            return
        for listener in list(self._listeners):
            try:
                outcome = listener(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("event listener %r failed on seq %d", listener, event.seq)

    # -- exams and sessions ---------------------------------------------------------------------

    async def put_exam(self, exam: Exam) -> None:
        await self._client.set(self.keys.exam(exam.id), json.dumps(exam.to_dict()))

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
                json.dumps(session.get("access_code", "")),
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
        if codes:
            await self._client.hset(self.keys.codes, mapping=codes)

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

    async def session_by_code(self, access_code: str) -> tuple[str, str] | None:
        raw = await self._client.hget(self.keys.codes, access_code)
        if raw is None:
            return None
        exam_id, _, session_id = _text(raw).partition("\n")
        return exam_id, session_id

    async def snapshot(self, exam_id: str) -> tuple[list[dict[str, Any]], int]:
        reply = await self._snapshot_script(
            keys=[self.keys.seq(exam_id), self.keys.sessions(exam_id)],
            args=[self.keys.session_prefix(exam_id)],
        )
        return [_decode_fields(fields) for fields in reply[1:]], int(reply[0])

    async def stale_holders(self, exam_id: str, seen_before: float) -> list[str]:
        reply = await self._stale_script(
            keys=[self.keys.sessions(exam_id)],
            args=[self.keys.session_prefix(exam_id), repr(seen_before)],
        )
        return [_text(sid) for sid in reply]

    async def events_since(self, exam_id: str, seq: int) -> list[Event] | None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.seq(exam_id))
            pipe.zrangebyscore(self.keys.log(exam_id), f"({seq}", "+inf")
            current, entries = await pipe.execute()
        if seq > int(current or 0):
            return None  # a sequence this exam never reached: the client needs a snapshot
        if seq == int(current or 0):
            return []
        events = [decode_event(entry) for entry in entries]
        if not events or events[0].seq > seq + 1:
            return None
        return events

    async def ensure_seq(self, exam_id: str, minimum: int) -> None:
        key = self.keys.seq(exam_id)
        await self._client.eval(_ENSURE_SEQ, 1, key, minimum)  # type: ignore[misc]

    async def touch(self, exam_sessions: list[tuple[str, str]], now: float) -> None:
        if not exam_sessions:
            return
        stamp = json.dumps(now)
        calls = [[self.keys.session(exam_id, sid), stamp] for exam_id, sid in exam_sessions]
        await _run_script(self._client, self._touch_script, 1, calls)

    # -- commits --------------------------------------------------------------------------------

    async def commit(self, commits: list[Commit]) -> list[CommitResult]:
        """All commits in one pipeline, one commit.lua call each (atomic per commit only).

        A "version" in `changes` is ignored: the store owns it. If the connection drops
        mid-way this raises and the outcome is unknown (commits are never resent): re-read.
        """
        calls = [self._commit_args(commit) for commit in commits]
        replies = await _run_script(self._commit_client, self._commit_script, 3, calls)
        return [self._result(c, r) for c, r in zip(commits, replies, strict=True)]

    def _commit_args(self, commit: Commit) -> list[Any]:
        keys = self.keys
        expected = commit.expected_version
        version = None if expected is None else expected + 1
        fields = {k: v for k, v in commit.changes.items() if k != "version"}
        pairs = [] if expected is None else _encode_fields(fields)
        return [
            keys.session(commit.exam_id, commit.session_id),
            keys.seq(commit.exam_id),
            keys.log(commit.exam_id),
            "" if expected is None else str(expected),
            keys.events,
            self._log_size,
            len(pairs) // 2,
            *pairs,
            *(encode_event(event, version) for event in commit.events),
        ]

    @staticmethod
    def _result(commit: Commit, reply: list[int]) -> CommitResult:
        status = int(reply[0])
        if status == _NOT_FOUND:
            return CommitResult(ok=False, found=False)
        if status == _CONFLICT:
            return CommitResult(ok=False)
        version, seqs = int(reply[1]), reply[2:]
        for event, seq in zip(commit.events, seqs, strict=True):
            event.seq = int(seq)
            if commit.expected_version is not None:
                event.changes["version"] = version
        return CommitResult(ok=True, events=list(commit.events))
