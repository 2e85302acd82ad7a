"""A real server for end-to-end tests: uvicorn in its own process on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ports import free_port

from loadtests.servers import end_process, wait_until_healthy
from realtime.config import WS_IMPLS

if TYPE_CHECKING:
    from redis_server import RedisServer

TRUE = ("1", "true", "yes", "on")  # how realtime.config reads a boolean setting

STAFF_TOKEN = "test-staff-token"
SECRET = "test-secret-key"


class ServerProcess:
    """`realtime.app:create_app` under plain uvicorn as operations.md runs it (proxy headers
    off: REALTIME_TRUSTED_PROXIES decides; `proxy_headers=True` for uvicorn's own default), or
    with `cli=True` as `realtime serve`; configured through the environment. `ws_impl=…` (or
    REALTIME_WS_IMPL in the tests' environment) picks uvicorn's WebSocket implementation in
    both cases."""

    def __init__(
        self,
        redis_url: str = "",
        database_url: str | None = None,
        workdir: Path | None = None,
        cli: bool = False,
        proxy_headers: bool = False,
        **settings: str | float,
    ) -> None:
        self.cli = cli
        self.proxy_headers = proxy_headers
        self.port = free_port()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="rt-server-"))
        self.database_url = database_url or f"sqlite+aiosqlite:///{self.workdir / 'rt.db'}"
        self.env = {
            **os.environ,
            "REALTIME_REDIS_URL": redis_url,
            "REALTIME_DATABASE_URL": self.database_url,
            "REALTIME_STAFF_TOKEN": STAFF_TOKEN,
            "REALTIME_SECRET_KEY": SECRET,
            "PYTHONUNBUFFERED": "1",
        }
        for key, value in settings.items():
            self.env[f"REALTIME_{key.upper()}"] = str(value)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"server-{self.port}.log"

    @classmethod
    def on_store(cls, store: str, redis_server: RedisServer, prefix: str,
                 **settings: Any) -> ServerProcess:
        """A server (not started) on `store`: "memory", or "redis": the run's private Redis
        (started if it is not yet), under a fresh key prefix `<prefix><8 hex digits>:`."""
        redis_url = ""
        if store == "redis":
            redis_server.start()
            redis_url = redis_server.url
        return cls(redis_url=redis_url, redis_prefix=f"{prefix}{uuid.uuid4().hex[:8]}:",
                   **settings)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> ServerProcess:
        """Start and wait for /healthz; a crash is reported at once. The wait is generous:
        importing the app took over 30 s on two cores loaded ~12x (CI with others' jobs)."""
        log = self.log_path.open("ab")
        serve = [sys.executable, "-m", "realtime.cli", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning"]
        self.process = subprocess.Popen(
            serve if self.cli else [
                sys.executable,
                "-m",
                "uvicorn",
                "realtime.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                # operations.md's choice (`realtime serve`: REALTIME_WS_IMPL, default the same)
                "--ws",
                self.env.get("REALTIME_WS_IMPL") or WS_IMPLS[0],
                "--ws-max-size",
                str(1024 * 1024),
                "--ws-ping-interval",
                "0",
                # operations.md's command: compression as REALTIME_WS_DEFLATE says (off by
                # default, as under `realtime serve`; uvicorn's own default is on)
                "--ws-per-message-deflate",
                "true" if self.env.get("REALTIME_WS_DEFLATE", "").strip().lower() in TRUE
                else "false",
                "--log-level",
                "warning",
                *([] if self.proxy_headers else ["--no-proxy-headers"]),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until_healthy(self.process, self.url, timeout, self.log_path.read_text, self.stop)
        return self

    def stop(self) -> None:
        if self.process is not None:
            end_process(self.process)
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
