"""A throwaway redis-server for tests: real Redis semantics (Lua, pub/sub, restarts) without
touching the system Redis on 6379 or leaving data behind."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
from ports import free_port

REDIS_SERVER = "/usr/bin/redis-server"
SYSTEM_PORT = 6379


def script_calls(url: str) -> int:
    """EVALSHA calls the Redis at `url` has run so far (the server's own count)."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


class RedisServer:
    """One redis-server process on 127.0.0.1; `restart()` keeps the port so clients reconnect."""

    def __init__(
        self, binary: str = REDIS_SERVER, port: int | None = None, *extra: str
    ) -> None:
        self.binary = binary
        self.extra = list(extra)  # more redis-server arguments (cluster mode, ...)
        self.port = port or free_port()
        if self.port == SYSTEM_PORT:
            raise ValueError("refusing to run a test Redis on the system Redis port")
        self.dir = Path(tempfile.mkdtemp(prefix="rt-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        log = (self.dir / "redis.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.dir),
                    "--daemonize", "no",
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Poll PING until the server answers (it needs a moment to bind its port)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                break
            if self.ping():
                return
            time.sleep(0.02)
        output = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{output}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Crash: SIGKILL, no goodbye to clients."""
        self._end(signal.SIGKILL, 10.0)

    def restart(self) -> None:
        """Stop and start again on the same port; all data is gone (no persistence)."""
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        self.kill()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
