"""Node presence: every server process beats a record in the state store every second, so the
others learn within seconds that it died (SIGKILL, machine lost) instead of waiting for its
candidates' `last_seen` to go stale.

A candidate connection's id starts with its node's id (`<node>-<random>`), so "is the holder of
this session alive?" is answered from the connection id alone: the sweeper marks the sessions of
a dead node disconnected at once, and a command to such a session is reported `queued`, not
`sent`. Clocks of the machines are assumed to agree within a second or so (NTP).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from realtime.state.store import StateStore

log = logging.getLogger(__name__)


def new_node_id() -> str:
    return f"n{secrets.token_hex(5)}"


def node_of(conn_id: str) -> str:
    """The node a connection id was made on ('' for ids from before node presence)."""
    node, sep, _ = conn_id.partition("-")
    return node if sep else ""


class NodePresence:
    def __init__(
        self,
        store: StateStore,
        interval: float = 1.0,
        timeout: float = 6.0,
        info: Callable[[], dict[str, Any]] | None = None,
        node_id: str | None = None,
    ) -> None:
        self.store = store
        self.node_id = node_id or new_node_id()
        self.interval = interval
        self.timeout = timeout
        self.info = info or (lambda: {})
        self.started_at = time.time()
        self.dead: frozenset[str] = frozenset()  # nodes that stopped beating (last hour)
        self.failures = 0

    def new_conn_id(self) -> str:
        return f"{self.node_id}-{uuid.uuid4().hex}"

    def holder_alive(self, conn_id: str) -> bool:
        """False if the connection was made on a node that stopped beating."""
        return node_of(conn_id) not in self.dead

    async def beat(self) -> None:
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "started_at": self.started_at, **self.info()}
        dead = await self.store.node_heartbeat(self.node_id, info, time.time(), self.timeout)
        self.dead = frozenset(dead) - {self.node_id}

    async def run(self) -> None:
        """Beat until cancelled; a failed beat is retried at the next one (others may see this
        node as dead meanwhile: its open sockets are marked connected again by the heartbeat)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % 60 == 0:
                    log.warning("node heartbeat failed (%d so far): %s", self.failures, exc)
