"""Servers for the benchmark: uvicorn processes (and a private redis-server), each on a free
port of 127.0.0.1, with a raised open-files limit and their RSS and CPU read through psutil."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil

from realtime.config import WS_IMPLS

SYSTEM_REDIS_PORT = 6379
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
BENCH_STAFF_TOKEN = "bench-staff-token"


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port != SYSTEM_REDIS_PORT:
            return port


def _child_limits() -> None:
    """In the child before exec: as many open files as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))


def end_process(process: subprocess.Popen[bytes]) -> None:
    """Ends `process` if it still runs: SIGTERM, and SIGKILL if it has not ended within 10 s
    (redis-server here, the tests' servers)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_until_healthy(
    process: subprocess.Popen[bytes],
    url: str,
    timeout: float,
    log: Callable[[], str],
    stop: Callable[[], None],
) -> None:
    """Polls the server at `url` until its /healthz answers 200. A server that exits first
    is reported at once, one still not healthy after `timeout` s is stopped (`stop`); either
    way with the end of its `log`. (The benchmark's servers and the tests' both start so.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    stop()
    raise RuntimeError(f"server did not start:\n{log()[-4000:]}")


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for proc in _tree(pid):
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        for proc in _tree(pid):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


class RedisProcess:
    """A throwaway redis-server (no persistence) on a free port; never the system 6379."""

    def __init__(self, workdir: Path, port: int | None = None, name: str = "redis",
                 extra: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pids(self) -> list[int]:
        return [self.pid]

    def start(self, timeout: float = 10.0) -> None:
        with (self.dir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no",
                 "--maxclients", "10000", *self.extra],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_child_limits,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on {self.port}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            end_process(self.process)
        self.process = None


def _cluster_port() -> int:
    """A free port at most 55535: a cluster node also listens on port + 10000."""
    for _ in range(200):
        port = random.randint(20000, 50000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        try:
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterProcess:
    """A throwaway Redis Cluster of `masters` masters (no replicas, no persistence)."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = [
            RedisProcess(workdir, _cluster_port(), f"redis-cluster-{i}",
                         ("--cluster-enabled", "yes", "--cluster-config-file",
                          str(workdir / f"redis-cluster-{i}" / "nodes.conf"),
                          "--cluster-node-timeout", "5000"))
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes]

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [subprocess.run([REDIS_CLI, "-p", str(n.port), "cluster", "info"],
                                    capture_output=True, text=True, timeout=5).stdout
                     for n in self.nodes]
            if all("cluster_state:ok" in info for info in infos):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the benchmark's Redis Cluster did not become ready")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class ServerProcess:
    """`python -m uvicorn realtime.app:create_app --factory` on a free port."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str = "",
        database_url: str | None = None,
        workers: int = 1,
        env: dict[str, str] | None = None,
        profile: str = "",
        launcher: str = "",
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.workers = workers
        self.log_path = workdir / f"server-{self.port}.log"
        database_url = database_url or f"sqlite+aiosqlite:///{workdir / 'rt.db'}"
        self.env = {
            **os.environ,
            "REALTIME_REDIS_URL": redis_url,
            "REALTIME_DATABASE_URL": database_url,
            "REALTIME_STAFF_TOKEN": BENCH_STAFF_TOKEN,
            "REALTIME_SECRET_KEY": "bench-secret-key",
            "REALTIME_REDIS_PREFIX": "bench:",
            "PYTHONUNBUFFERED": "1",
            # every simulated candidate connects from 127.0.0.1: no per-address handshake limit
            "REALTIME_HANDSHAKE_RATE": "0",
            **(env or {}),
        }
        self.profile = profile  # "py-spy:<out.svg>" or "" (run under py-spy record)
        self.launcher = launcher  # a script taking uvicorn's arguments, instead of -m uvicorn
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        program = [self.launcher] if self.launcher else ["-m", "uvicorn"]
        command = [
            sys.executable, *program, "realtime.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port),
            # `realtime serve`'s WebSocket implementation (REALTIME_WS_IMPL picks another)
            "--ws", self.env.get("REALTIME_WS_IMPL") or WS_IMPLS[0],
            "--ws-max-size", str(1024 * 1024), "--ws-ping-interval", "0",
            "--log-level", "warning", "--backlog", "4096",
        ]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        if self.profile.startswith("py-spy:"):
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            out = self.profile.split(":", 1)[1]
            kind = {".json": "speedscope", ".txt": "raw"}.get(Path(out).suffix, "flamegraph")
            command = [spy, "record", "-r", "200", "-o", out, "--format", kind, "--", *command]
        return command

    def start(self, timeout: float = 60.0) -> ServerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_child_limits,
            )
        wait_until_healthy(self.process, self.url, timeout, self.log, self.stop)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def server_pids(self) -> list[int]:
        """The uvicorn process (under py-spy, its child); rss/cpu add its worker children."""
        if not self.profile:
            return [self.pid]
        try:
            return [p.pid for p in psutil.Process(self.pid).children()] or [self.pid]
        except psutil.Error:
            return [self.pid]

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            if self.profile:
                # py-spy writes its profile when the program it records ends.
                for proc in _tree(self.pid)[1:]:
                    with contextlib.suppress(psutil.Error):
                        proc.send_signal(signal.SIGINT)
            else:
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                for proc in reversed(_tree(self.pid)):
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
                self.process.wait(5)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def workdir(prefix: str = "rt-bench-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
