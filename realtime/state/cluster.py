"""Redis Cluster for the state store: the client (chosen by a `redis+cluster://` URL) and the
event subscription of one process on a cluster.

On a cluster an exam's events travel by sharded pub/sub (SPUBLISH inside commit_batch.lua, to
the exam's channel, which is in the exam's slot). A sharded channel is only heard on the node
that owns its slot, so the subscription is one pub/sub connection per master that owns a served
exam's slot (`ShardedSubscription`). It never follows a slot by itself: whenever a channel it
listens to is no longer where it was subscribed (the server said so with an unasked
SUNSUBSCRIBE, a reply was MOVED, the cluster client's slot map moved it, a connection broke or
went silent), it raises, and the store's listener re-makes the whole subscription on the
current slot map and reads back what was missed (`RedisStore._recover`), as after any loss.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from realtime.state.connect import as_pushed

SCHEME = "redis+cluster"
MAX_CONNECTIONS = 512  # per node and client; past it a call fails (no waiting pool on a cluster)
CHECK_EVERY = 1.0  # seconds between comparisons of the subscription with the slot map
REFRESH_EVERY = 5.0  # seconds between readings of the slot map by the subscription (a failover
# leaves the old master's subscribers hearing the shard as a replica: moved, not lost)


def is_cluster_url(url: str) -> bool:
    return url.startswith(f"{SCHEME}://")


def slot_in_motion(exc: BaseException) -> bool:
    """Whether a cluster refused a call because a slot is moving or has no master right now
    (MOVED/ASK left over, TRYAGAIN, CLUSTERDOWN, no node known for the slot, or a script that
    found its exam's keys half migrated: a key already gone, or one read as missing that may
    not have moved yet, see commit_batch.lua's `confirm_missing`): nothing was applied, the
    caller may retry. The commit script touches every key before its first write, so it is
    refused whole."""
    if isinstance(exc, AskError | TryAgainError | ClusterDownError | SlotNotCoveredError):
        return True
    if isinstance(exc, ClusterError) and "TTL exhausted" in str(exc):
        # redis-py followed its 16 redirections (MOVED/ASK/TRYAGAIN, each refused, nothing
        # applied) while a migration was still running; it raises this, not the last refusal
        return True
    # A command in a script refused for a slot in motion: Redis 7.0 says "non local key" for
    # every such refusal; later versions say "undeclared keys were accessed during rehashing
    # of the slot" for TRYAGAIN's case (a key missing on the importing master) and "a slot
    # not served" for an unassigned one
    return isinstance(exc, ResponseError) and any(
        text in str(exc) for text in ("non local key", "during rehashing of the slot",
                                      "slot not served"))


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """`redis+cluster://[user:password@]host:port[,host:port...][/]`: the seed nodes (any
    reachable one is enough; the others are found with CLUSTER SLOTS) and the credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterUrl:
        if not is_cluster_url(url):
            raise ValueError(f"not a {SCHEME}:// URL")
        rest = url[len(SCHEME) + 3:].split("/", 1)[0].split("?", 1)[0]
        username = password = None
        if "@" in rest:
            auth, rest = rest.rsplit("@", 1)
            user, _, secret = auth.partition(":")
            username, password = unquote(user) or None, unquote(secret) or None
        nodes = []
        for part in rest.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{SCHEME} URL: expected host:port[,host:port...], got {part!r}")
            nodes.append((host.strip("[]"), int(port)))
        return cls(tuple(nodes), username, password)


def connect_cluster(url: str, retry: Retry, reinitialize_steps: int = 5) -> RedisCluster:
    """A cluster client. `retry` also bounds redis-py's re-sending of a whole pipeline after a
    connection error (`Retry(NoBackoff(), 0)`: never, for commits). `reinitialize_steps`:
    re-read the slot map every that many MOVED replies (redis-py's default, 5), which closes
    every connection of the client, those in use included; 0: never, each MOVED patches the
    map instead (the commit client: see `RedisStore`)."""
    parsed = ClusterUrl.parse(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],
        username=parsed.username,
        password=parsed.password,
        retry=retry,
        max_connections=MAX_CONNECTIONS,
        socket_keepalive=True,
        reinitialize_steps=reinitialize_steps,
    )


class ShardedSubscription:
    """The event subscription of one process on a cluster: the process channel (plain
    SUBSCRIBE, on the node owning its slot) and each served exam's channel (SSUBSCRIBE, on the
    node owning the exam's slot), one pub/sub connection per node involved.

    The interface is the part of redis-py's `PubSub` the store uses (`subscribe`,
    `unsubscribe`, `aclose`), plus `messages()`: (kind, data, channel) with kinds "subscribe"
    and "message" as on a single Redis. The process channel's "subscribe" comes only after
    every exam channel of the first `subscribe` call is confirmed, so once it is seen, nothing
    published from then on can be missed.
    """

    def __init__(self, cluster: RedisCluster, anchor: str, idle_ping: float) -> None:
        self._cluster = cluster
        self._anchor = anchor
        self._idle_ping = idle_ping
        self._clients: dict[str, Redis] = {}
        self._pubsubs: dict[str, PubSub] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._where: dict[str, str] = {}  # channel -> name of the node it is subscribed on
        self._wanted: set[str] = set()  # channels subscribed and not being unsubscribed
        self._confirmed: set[str] = set()
        self._held: set[str] = set()  # first channels the process channel's confirmation awaits
        self._anchor_seen = False
        self._ready = False  # the process channel's "subscribe" was reported
        self._early: list[Any] = []  # exam messages that came before that
        self._queue: asyncio.Queue[tuple[str, Any, str] | BaseException] = asyncio.Queue()

    @property
    def connected(self) -> bool:
        """Every pub/sub connection of this subscription is up (health checks)."""
        return bool(self._pubsubs) and all(
            pubsub.connection is not None and pubsub.connection.is_connected
            for pubsub in self._pubsubs.values()
        )

    async def refresh(self) -> None:
        """Read the slot map again (it may have changed while the subscription was down)."""
        await self._cluster.initialize()
        await self._cluster.nodes_manager.initialize()

    def _pubsub(self, node: ClusterNode) -> PubSub:
        pubsub = self._pubsubs.get(node.name)
        if pubsub is None:
            kwargs = self._cluster.nodes_manager.connection_kwargs
            # No retry: a broken connection must surface (and be re-made with a read-back),
            # not be re-made silently by redis-py.
            client = Redis(
                host=node.host, port=int(node.port), username=kwargs.get("username"),
                password=kwargs.get("password"), socket_keepalive=True,
                retry=Retry(NoBackoff(), 0),
            )
            self._clients[node.name] = client
            pubsub = self._pubsubs[node.name] = client.pubsub(push_handler_func=as_pushed)
        return pubsub

    def _start_reader(self, name: str) -> None:
        if name not in self._readers:
            self._readers[name] = asyncio.create_task(
                self._read(name, self._pubsubs[name]), name=f"redis-shard-events:{name}"
            )

    async def subscribe(self, *channels: str) -> None:
        first = self._anchor in channels
        exams = [channel for channel in channels if channel != self._anchor]
        if first:
            self._held.update(exams)
        for channel in exams:
            # One SSUBSCRIBE per channel: channels of different slots in one are refused.
            node = self._owner(channel)
            self._wanted.add(channel)
            self._where[channel] = node.name
            await self._pubsub(node).ssubscribe(channel)
            self._start_reader(node.name)
        if first:
            node = self._owner(self._anchor)
            self._wanted.add(self._anchor)
            self._where[self._anchor] = node.name
            await self._pubsub(node).subscribe(self._anchor)
            self._start_reader(node.name)

    def _owner(self, channel: str) -> ClusterNode:
        try:
            node = self._cluster.get_node_from_key(channel)
        except RedisClusterException as error:  # the slot is not covered right now
            raise ConnectionError(f"no node serves {channel}: {error}") from error
        if node is None:
            raise ConnectionError(f"no node serves {channel}")
        return node

    async def unsubscribe(self, *channels: str) -> None:
        for channel in channels:
            self._wanted.discard(channel)
            self._held.discard(channel)
            name = self._where.pop(channel, None)
            pubsub = self._pubsubs.get(name or "")
            if pubsub is not None:
                await pubsub.sunsubscribe(channel)

    async def _read(self, name: str, pubsub: PubSub) -> None:
        """One node's messages into the queue; a failure goes there too (the whole
        subscription is then re-made)."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        try:
            while True:
                message = await pubsub.get_message(timeout=self._idle_ping)
                if message is None:
                    if loop.time() - heard > 3 * self._idle_ping:
                        raise ConnectionError(f"no reply from Redis node {name} on the events")
                    if pubsub.subscribed:
                        await pubsub.ping()
                    continue
                heard = loop.time()
                kind = message["type"]
                kind = kind.decode() if isinstance(kind, bytes) else kind
                channel = message["channel"] or b""
                channel = channel.decode() if isinstance(channel, bytes) else channel
                self._queue.put_nowait((kind, message["data"], channel))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._queue.put_nowait(error)

    def _check_slots(self) -> None:
        """Raise when a channel's slot is no longer owned by the node it is subscribed on
        (resharding, failover), as far as the cluster client's slot map knows."""
        for channel in self._wanted:
            if channel == self._anchor:
                continue
            owner = self._owner(channel)
            if owner.name != self._where.get(channel):
                raise ConnectionError(
                    f"the slot of {channel} moved from {self._where.get(channel)} to {owner.name}"
                )

    async def messages(self) -> AsyncGenerator[tuple[str, Any, str], None]:
        loop = asyncio.get_running_loop()
        refresh_at = loop.time() + REFRESH_EVERY
        check_at = loop.time() + CHECK_EVERY
        while True:
            item: tuple[str, Any, str] | BaseException | None
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    wait = max(0.01, check_at - loop.time())
                    item = await asyncio.wait_for(self._queue.get(), wait)
                except TimeoutError:
                    item = None
            now = loop.time()
            if now >= check_at:  # on the clock, busy or not
                check_at = now + CHECK_EVERY
                if now >= refresh_at:
                    refresh_at = now + REFRESH_EVERY
                    await self._cluster.nodes_manager.initialize()
                self._check_slots()
            if item is None:
                continue
            if isinstance(item, BaseException):
                raise ConnectionError(f"a sharded event subscription failed: {item!r}") from item
            kind, data, channel = item
            if kind in ("ssubscribe", "subscribe"):
                if channel in self._confirmed:
                    raise ConnectionError(f"{channel} was re-subscribed behind our back")
                self._confirmed.add(channel)
                self._held.discard(channel)
                if channel != self._anchor:
                    yield "subscribe", data, channel
                if channel == self._anchor:
                    self._anchor_seen = True
                if self._anchor_seen and not self._held and not self._ready:
                    # Complete: report it (the store reads back what was missed), then what
                    # arrived on the exam channels meanwhile, which is newer than that.
                    self._ready = True
                    yield "subscribe", data, self._anchor
                    early, self._early = self._early, []
                    for message in early:
                        yield "message", message, ""
            elif kind in ("sunsubscribe", "unsubscribe"):
                if channel in self._wanted:
                    # Unasked: the node gave the slot away (or turned replica).
                    raise ConnectionError(f"Redis ended the subscription to {channel}")
                self._confirmed.discard(channel)
            elif kind in ("smessage", "message"):
                if self._ready:
                    yield "message", data, channel
                else:
                    self._early.append(data)

    async def aclose(self) -> None:
        for task in self._readers.values():
            task.cancel()
        for task in self._readers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for name, pubsub in self._pubsubs.items():
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await self._clients[name].aclose()
        self._readers.clear()
        self._pubsubs.clear()
        self._clients.clear()
