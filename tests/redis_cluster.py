"""A throwaway Redis Cluster for tests: N masters (and optionally one replica each) on free
ports, made with `redis-cli --cluster create`, plus the operations the tests do to it mid-exam
(move a slot to another master, fail a master over to its replica)."""

from __future__ import annotations

import subprocess
import time
from types import TracebackType

import redis
from ports import free_port
from redis_server import RedisServer

REDIS_CLI = "/usr/bin/redis-cli"
WAIT = 30.0  # seconds any cluster operation may take here
CLUSTER_BUS_OFFSET = 10_000  # a node also listens on its port + this (the cluster bus)


def _until(what: str, check: object, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise TimeoutError(f"cluster: {what} did not happen within {timeout}s")


class LocalCluster:
    """`masters` masters with `replicas` replicas each, all on 127.0.0.1."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.servers: list[RedisServer] = []
        for _ in range(masters * (1 + replicas)):
            server = RedisServer(port=free_port(offset=CLUSTER_BUS_OFFSET))
            server.extra = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(server.dir / "nodes.conf"),
                "--cluster-node-timeout", "2000",
                "--cluster-require-full-coverage", "no",
            ]
            self.servers.append(server)
        self.masters, self.replicas = masters, replicas

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{server.port}" for server in self.servers[: self.masters])
        return f"redis+cluster://{seeds}"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def start(self) -> LocalCluster:
        for server in self.servers:
            server.start()
        nodes = [f"127.0.0.1:{server.port}" for server in self.servers]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=WAIT,
        )
        self.wait_ok()
        return self

    def _info(self, port: int) -> dict[str, str]:
        raw = self.client(port).execute_command("CLUSTER INFO")
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def wait_ok(self) -> None:
        """Every live node says cluster_state:ok, and every replica's link is up."""
        def ok() -> bool:
            for server in self.servers:
                if not server.running:
                    continue
                try:
                    if self._info(server.port).get("cluster_state") != "ok":
                        return False
                    info = self.client(server.port).info("replication")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
                except redis.RedisError:
                    return False
            return True
        _until("cluster_state:ok", ok)

    def node_id(self, port: int) -> str:
        return str(self.client(port).execute_command("CLUSTER MYID").decode())

    def owner(self, key: str) -> int:
        """The port of the master that owns `key`'s slot, as the first live master says."""
        return self.slot_owner(self.slot(key))

    def slot_owner(self, slot: int) -> int:
        for start, end, master, *_ in self.client(self.master_ports()[0]).execute_command(
            "CLUSTER SLOTS"
        ):
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(f"no master owns slot {slot}")

    def slot(self, key: str) -> int:
        return int(self.client(self.servers[0].port).execute_command("CLUSTER KEYSLOT", key))

    def master_ports(self) -> list[int]:
        return [s.port for s in self.servers
                if s.running and self.client(s.port).info("replication")["role"] == "master"]

    def move_slot(self, slot: int, target: int) -> None:
        """Reshard one slot to the master on `target`: every key in ONE MIGRATE, so a script
        never sees the slot's keys half here, half there (see docs/operations.md)."""
        self.begin_move(slot, target)
        self.finish_move(slot, target)

    def begin_move(self, slot: int, target: int, *keys: str) -> None:
        """Start moving a slot to the master on `target` (IMPORTING there, MIGRATING on its
        owner) and move only these `keys` so far: the slot stays in motion, half here, half
        there, until `finish_move`."""
        source = self.slot_owner(slot)
        src, dst = self.client(source), self.client(target)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.node_id(source))
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.node_id(target))
        if keys:
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 10_000, "KEYS", *keys)

    def finish_move(self, slot: int, target: int) -> None:
        """Move the rest of a slot `begin_move` started moving, then give it to `target`."""
        source = self.slot_owner(slot)
        src = self.client(source)
        target_id = self.node_id(target)
        while True:
            keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100_000)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 10_000, "KEYS", *keys)
        for port in self.master_ports():
            self.client(port).execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        def agreed() -> bool:
            for port in self.master_ports() + [s.port for s in self.servers if s.running]:
                for start, end, master, *_ in self.client(port).execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end and int(master[1]) != target:
                        return False
            return True
        _until(f"slot {slot} owned by {target} everywhere", agreed)

    def fail_over(self, master: int) -> int:
        """CLUSTER FAILOVER on a replica of the master on `master`; returns the new master's
        port once every node agrees."""
        master_id = self.node_id(master)
        replica = next(s.port for s in self.servers if s.running and s.port != master
                       and self.client(s.port).info("replication").get("master_port") == master)
        self.client(replica).execute_command("CLUSTER FAILOVER")
        _until("the replica became master",
               lambda: self.client(replica).info("replication")["role"] == "master")
        def agreed() -> bool:
            for server in self.servers:
                if not server.running:
                    continue
                for _, _, owner, *_ in self.client(server.port).execute_command("CLUSTER SLOTS"):
                    if int(owner[1]) == master:
                        return False
            return True
        _until(f"every node sees {replica} instead of {master_id}", agreed)
        self.wait_ok()
        return replica

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
