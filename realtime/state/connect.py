"""Redis clients from `REALTIME_REDIS_URL`: a plain `redis://` server, or the master of a Redis
Sentinel set-up that follows failovers.

redis-py follows a Sentinel master (`redis.asyncio.sentinel`) but has no URL form for it, so
this module adds one:

    redis+sentinel://[[username]:password@]host[:port][,host[:port]…]/service_name[/db]
                     [?sentinel_username=…&sentinel_password=…]

The hosts are the sentinels (port 26379 unless given); username and password are the data
nodes' (the master's and replicas'); `sentinel_username`/`sentinel_password` are the sentinels'
own, if they require one. Percent-encode `@ : / , ?` in a password.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig

log = logging.getLogger(__name__)

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
SENTINEL_TIMEOUT = 1.0  # seconds per sentinel asked; a silent one is skipped for the next
POOL_SIZE = 64  # connections per client and process
POOL_WAIT = 10.0  # seconds a call may wait for one
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


async def as_pushed(message: Any) -> Any:
    """A pub/sub message as redis-py read it: our subscriptions' `push_handler_func`. Its
    default one (RESP3, redis-py's default protocol) builds `"Push response: " + str(message)`
    for a debug line, logged or not: for the ~1 MiB echo of a "pause all" of 5,000 that is a
    repr of every byte, ~4 ms of the event loop (docs/performance.md, "Ninth session")."""
    return message


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A parsed `redis+sentinel://` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The parts of a `redis+sentinel://` URL; raises ValueError naming what is wrong."""
    if not is_sentinel_url(url):
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME}://")
    rest = url[len(SENTINEL_SCHEME) + 3:]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(item) for item in hostlist.split(","))
    parts = path.strip("/").split("/") if path.strip("/") else []
    if not parts:
        raise ValueError(f"no service name in the Sentinel URL (…/service_name[/db]): {url!r}")
    if len(parts) > 2:
        raise ValueError(f"a Sentinel URL's path is /service_name[/db]: {url!r}")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"the database in a Sentinel URL is a number: {parts[1]!r}")
        db = int(parts[1])
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(options) - set(_SENTINEL_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown Sentinel URL options {unknown}; known: {list(_SENTINEL_OPTIONS)}"
        )
    return SentinelUrl(
        sentinels=sentinels, service=unquote(parts[0]), db=db, username=username,
        password=password,
        sentinel_username=options.get("sentinel_username", [None])[-1] or None,
        sentinel_password=options.get("sentinel_password", [None])[-1] or None,
    )


def _host_port(item: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, tail = item[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else tail
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"a sentinel without a host in the Sentinel URL: {item!r}")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"a sentinel's port is a number from 1 to 65535: {item!r}")
    return host, int(port_text)


def _options(retry: Retry) -> dict[str, Any]:
    # Maintenance notifications off: redis-py 8.1 then skips its check for pooled connections
    # the server closed (redis/redis-py#4252), and the first command after a Redis restart
    # fails on each of them. Plain Redis does not send these notifications anyway.
    # A blocking pool: callers wait for a free connection instead of failing. redis-py's
    # default pool raises "Too many connections" past 100 concurrent calls, which a hall of
    # candidates sitting down (or acking a "pause all") easily reaches.
    return {
        "max_connections": POOL_SIZE,
        "timeout": POOL_WAIT,
        "retry": retry,
        "socket_keepalive": True,
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }


class MasterConnection(SentinelManagedConnection):
    """A connection to the Sentinel master that asks the sentinels again when the server it
    reached no longer acts as the master. redis-py does that for READONLY (a demoted master);
    NOREPLICAS is added: a master cut off from its replicas by a failover (see
    `min-replicas-to-write`) refuses writes until it is demoted, and the new master may
    already take them. Both errors mean the command was not applied."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if str(exc).startswith("NOREPLICAS") and self.connection_pool.is_master:
                await self.disconnect()
                raise RedisConnectionError(f"the master refuses writes: {exc}") from exc
            raise


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool, waiting for a free connection like `BlockingConnectionPool`."""


class RedisConnector:
    """Builds the store's clients for one URL; for Sentinel they share one set of sentinels."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sentinel: Sentinel | None = None
        self.service = ""
        self._sentinel_url: SentinelUrl | None = None
        if is_sentinel_url(url):
            parsed = parse_sentinel_url(url)
            self._sentinel_url = parsed
            self.service = parsed.service
            self.sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(parsed.sentinels),
                sentinel_kwargs={
                    "socket_timeout": SENTINEL_TIMEOUT,
                    "socket_connect_timeout": SENTINEL_TIMEOUT,
                    "socket_keepalive": True,
                    "retry": Retry(NoBackoff(), 0),  # the next sentinel is the retry
                    "username": parsed.sentinel_username,
                    "password": parsed.sentinel_password,
                    "maint_notifications_config": MaintNotificationsConfig(enabled=False),
                },
            )
        self._pools: list[SentinelConnectionPool] = []
        self._unanswered = False  # the last master check got no answer (logged once)

    def client(self, retry: Retry) -> Redis:
        """A client with its own pool; `retry` says how often a call is resent after a dropped
        connection (commits: never)."""
        if self.sentinel is None or self._sentinel_url is None:
            pool = BlockingConnectionPool.from_url(self.url, **_options(retry))
            return Redis.from_pool(pool)
        parsed = self._sentinel_url
        client = self.sentinel.master_for(
            parsed.service,
            connection_pool_class=BlockingSentinelPool,
            connection_class=MasterConnection,
            db=parsed.db,
            username=parsed.username,
            password=parsed.password,
            **_options(retry),
        )
        self._pools.append(client.connection_pool)
        return cast(Redis, client)

    async def on_master(self, pubsub: PubSub) -> bool:
        """Whether `pubsub` is connected to the master the sentinels name now (always true
        without Sentinel). Asking also moves the clients' idle connections to a new master.
        If no sentinel answers, the subscription is left where it is (True)."""
        if self.sentinel is None or not self._pools:
            return True
        try:
            for pool in self._pools:
                address = await pool.get_master_address()  # type: ignore[no-untyped-call]
        except RedisError as exc:
            if not self._unanswered:
                log.warning("no sentinel names the master of %r: %s", self.service, exc)
            self._unanswered = True
            return True
        if self._unanswered:
            log.warning("the sentinels name the master of %r again: %s", self.service, address)
            self._unanswered = False
        connection = pubsub.connection
        if connection is None:
            return True
        return (connection.host, connection.port) == tuple(address)

    async def aclose(self) -> None:
        if self.sentinel is not None:
            await self.sentinel.aclose()
