"""A throwaway Sentinel set-up for tests: a master, its replicas and three sentinels, each a
private redis-server on a free port of 127.0.0.1 in its own temporary directory; `cleanup()`
kills them all."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import redis
from redis_server import REDIS_SERVER, RedisServer, free_port

SERVICE = "rtmaster"
DOWN_AFTER_MS = 1000  # a sentinel considers a silent master down after this long
FAILOVER_TIMEOUT_MS = 5000


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2.0, socket_connect_timeout=2.0,
                       decode_responses=True)


class DataNode(RedisServer):
    """A master or replica of the set-up, with `min-replicas-to-write` set: a master that lost
    a replica (the old one, right after the promotion) refuses writes instead of acknowledging
    writes that the failover then throws away (see docs/operations.md, "Redis Sentinel")."""

    def __init__(self, replica_of: int | None = None, min_replicas: int = 1) -> None:
        super().__init__()
        self.replica_of = replica_of
        self.min_replicas = min_replicas

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no",
            "--min-replicas-to-write", str(self.min_replicas), "--min-replicas-max-lag", "10",
            "--repl-diskless-sync-delay", "0",
        ]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        with (self.dir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def pause_writes(self, milliseconds: int) -> None:
        """Hold every write on this server for a while (`CLIENT PAUSE … WRITE`)."""
        with _client(self.port) as client:
            client.client_pause(milliseconds, all=False)

    def info(self, section: str = "replication") -> dict[str, Any]:
        with _client(self.port) as client:
            return cast(dict[str, Any], client.info(section))


class SentinelNode:
    """One `redis-server sentinel.conf --sentinel` watching the master."""

    def __init__(self, master_port: int) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="rt-sentinel-"))
        self.config = self.dir / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.dir / "sentinel.log").open("ab") as log:
            self.process = subprocess.Popen(
                [REDIS_SERVER, str(self.config), "--sentinel"],
                stdout=log, stderr=subprocess.STDOUT,
            )

    def master(self) -> tuple[str, int] | None:
        """The master's address as this sentinel reports it (None: not reachable)."""
        try:
            with _client(self.port) as client:
                address = client.sentinel_get_master_addr_by_name(SERVICE)
        except redis.RedisError:
            return None
        return None if not address else (address[0], int(address[1]))

    def known(self) -> tuple[int, int]:
        """(other sentinels, replicas) this sentinel knows of."""
        try:
            with _client(self.port) as client:
                state = client.sentinel_master(SERVICE)
        except redis.RedisError:
            return 0, 0
        return int(state["num-other-sentinels"]), int(state["num-slaves"])

    def failover(self) -> None:
        with _client(self.port) as client:
            client.sentinel_failover(SERVICE)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)


def wait_for(condition: object, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `condition()` until it is true; fail after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class SentinelSetup:
    """A master, `replicas` replicas and three sentinels; `url` is the realtime
    `redis+sentinel://` URL. Every node has `min-replicas-to-write` = `replicas`."""

    def __init__(self, replicas: int = 1) -> None:
        self.master = DataNode(min_replicas=replicas)
        self.replica_count = replicas
        self.replicas: list[DataNode] = []
        self.sentinels: list[SentinelNode] = []

    @property
    def nodes(self) -> list[DataNode]:
        return [self.master, *self.replicas]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        self.master.start()
        for _ in range(self.replica_count):
            replica = DataNode(replica_of=self.master.port, min_replicas=self.replica_count)
            self.replicas.append(replica)
            replica.start()
        wait_for(lambda: all(r.info().get("master_link_status") == "up" for r in self.replicas),
                 10, "the replicas")
        self.sentinels = [SentinelNode(self.master.port) for _ in range(3)]
        for node in self.sentinels:
            node.start()
        # Ready once every sentinel knows the others and the replicas (a failover needs both).
        known = (2, self.replica_count)
        wait_for(lambda: all(s.known() == known for s in self.sentinels), 20, "the sentinels")

    def current_master(self) -> tuple[str, int] | None:
        """The master the sentinels agree on (None while they disagree)."""
        seen = {s.master() for s in self.sentinels}
        return seen.pop() if len(seen) == 1 else None

    def node(self, port: int) -> DataNode:
        return next(node for node in self.nodes if node.port == port)

    def cleanup(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> SentinelSetup:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
