"""Which WebSocket implementation of uvicorn's serves the sockets: websockets-sansio, chosen
(docs/performance.md, "the WebSocket implementation under the fan-out"), not whatever uvicorn's
"auto" picks; REALTIME_WS_IMPL picks another, and a wrong name stops `realtime serve`.

Each server here runs with a `sitecustomize` that makes uvicorn's "auto" pick wsproto (as
"auto" picked the legacy implementation before uvicorn 0.50), so a server left on "auto"
shows it. What serves the sockets is read from the process's own `/metrics` after a socket
was opened (`realtime_websocket_protocol`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from realtime.config import ConfigError, Settings
from tests.clients import WsClient
from tests.server import ServerProcess, free_port

AUTO_IS_WSPROTO = """\
import uvicorn.protocols.websockets.auto as auto
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

auto.AutoWebSocketsProtocol = WSProtocol  # as if uvicorn's "auto" picked another one
"""


def _served_by(server: ServerProcess) -> set[str]:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return set(re.findall(r'^realtime_websocket_protocol\{implementation="([^"]+)"\} 1\.0$',
                          text, re.MULTILINE))


async def _implementation(tmp_path: Path, cli: bool, **settings: str) -> set[str]:
    (tmp_path / "sitecustomize.py").write_text(AUTO_IS_WSPROTO)
    server = ServerProcess(workdir=tmp_path, cli=cli, **settings)
    server.env["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH", "")])])
    server.start()
    try:
        assert _served_by(server) == set()  # nothing served yet
        client = await WsClient.connect(f"{server.ws_url}/ws/candidate")
        try:
            return _served_by(server)
        finally:
            await client.close()
    finally:
        server.stop()


@pytest.mark.parametrize("cli", [True, False], ids=["realtime serve", "plain uvicorn"])
async def test_the_server_runs_websockets_sansio_whatever_uvicorn_auto_picks(
    tmp_path: Path, cli: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`realtime serve` (the Procfile) and plain uvicorn as operations.md runs it."""
    monkeypatch.delenv("REALTIME_WS_IMPL", raising=False)  # the default
    assert await _implementation(tmp_path, cli) == {"websockets-sansio"}


async def test_realtime_ws_impl_picks_another_implementation(tmp_path: Path) -> None:
    assert await _implementation(tmp_path, True, ws_impl="websockets") == {"websockets"}


def test_a_wrong_implementation_name_stops_realtime_serve_with_a_clear_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"REALTIME_WS_IMPL='ws-proto'.*wsproto"):
        Settings(ws_impl="ws-proto").check()
    env = {**os.environ, "REALTIME_WS_IMPL": "ws-proto", "REALTIME_REDIS_URL": "",
           "REALTIME_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'rt.db'}"}
    result = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "serve", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "REALTIME_WS_IMPL='ws-proto' is not a WebSocket implementation" in result.stderr
    assert "websockets-sansio" in result.stderr and "Traceback" not in result.stderr
