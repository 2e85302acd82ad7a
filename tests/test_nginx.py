"""The multi-node deployment of docs/operations.md, run for real: Debian's nginx with
deploy/nginx/realtime.conf in front of two `realtime serve` processes on one private Redis.

Candidates connect through nginx (from 127.0.0.5, so the address nginx forwards differs from
the one nginx connects from), a command through nginx reaches them, one process is SIGKILLed
and its candidates reconnect through nginx to the other and resume with their resume tokens."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clients import MSGPACK, Api, LiveCandidate, WsClient, eventually
from redis_server import RedisServer
from server import ServerProcess, free_port

from loadtests.servers import end_process, wait_until_healthy

NGINX = "/usr/sbin/nginx"
CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "realtime.conf"
CLIENT_ADDR = "127.0.0.5"  # any loopback address other than nginx's own 127.0.0.1
COUNT = 6


def render_config(backends: list[int], port: int) -> str:
    """The repository's config with its upstream servers and listen line pointed at the test's
    processes and port; everything else exactly as shipped."""
    text = CONFIG.read_text(encoding="utf-8")
    upstream = re.compile(r"^(\s*)server 127\.0\.0\.1:800\d( [^;]*)?;\n", re.MULTILINE)
    first = upstream.search(text)
    assert first is not None, "no upstream server lines in the config"
    indent, options = first.group(1), first.group(2) or ""
    servers = "".join(f"{indent}server 127.0.0.1:{b}{options};\n" for b in backends)
    text = upstream.sub("", text)
    text = text[: first.start()] + servers + text[first.start():]
    text, listens = re.subn(r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{port};", text,
                            flags=re.MULTILINE)
    assert listens == 1, "expected one `listen 80;` in the config"
    return text


class Nginx:
    """nginx in the foreground (`daemon off`), everything it writes in its own directory."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.dir = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def configure(self, site: str) -> None:
        """`site` (the rendered realtime.conf) inside a main config that keeps nginx in the
        foreground and every file it writes (pid, logs, temp files) in its directory."""
        (self.dir / "realtime.conf").write_text(site)
        temp = "\n".join(f"    {kind}_temp_path {self.dir / kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {self.dir / 'nginx.pid'};
error_log {self.dir / 'error.log'} info;
events {{ worker_connections 1024; }}
http {{
    access_log {self.dir / 'access.log'};
{temp}
    include {self.dir / 'realtime.conf'};
}}
""")

    def start(self, url: str, timeout: float = 15.0) -> None:
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
             "-e", str(self.dir / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        wait_until_healthy(self.process, url, timeout, self.log, self.stop)

    def log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            end_process(self.process)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[str, list[ServerProcess]]]:
    """nginx on a free port in front of two processes sharing a private Redis and SQL."""
    if not Path(NGINX).exists():
        pytest.skip(f"{NGINX} is missing: apt-get install nginx")
    redis = RedisServer()
    redis.start()
    shared: dict[str, Any] = {"redis_url": redis.url, "workdir": tmp_path, "cli": True,
                              "trusted_proxies": "127.0.0.1/32", "node_timeout": 3,
                              "stale_after": 60}
    first = ServerProcess(**shared)
    processes = [first, ServerProcess(database_url=first.database_url, **shared)]
    nginx: Nginx | None = None
    try:
        for process in processes:
            process.start()
        nginx = Nginx(tmp_path / "nginx")
        nginx.configure(render_config([p.port for p in processes], nginx.port))
        url = f"http://127.0.0.1:{nginx.port}"
        nginx.start(url)
        yield url, processes
    finally:
        if nginx is not None:
            nginx.stop()
        for process in processes:
            process.stop()
        redis.cleanup()


async def open_via(url: str, access_code: str, **fields: Any) -> LiveCandidate:
    """A candidate page connecting from CLIENT_ADDR; fails unless the open succeeds."""
    client = await WsClient.connect(url.replace("http", "ws", 1) + "/ws/candidate", MSGPACK,
                                    local_addr=(CLIENT_ADDR, 0))
    await client.send({"type": "open", "access_code": access_code, **fields})
    reply = await client.recv("opened", "refused")
    assert reply["type"] == "opened", reply
    return LiveCandidate(client, reply)


def last_notice(page: LiveCandidate) -> str | None:
    notices = page.commands("notice")
    return str(notices[-1]["details"]["text"]) if notices else None


async def candidates_per_node(api: Api) -> dict[int, int]:
    response = await api.http.get("/api/v1/nodes")
    assert response.status_code == 200, response.text
    return {n["info"]["pid"]: n["info"]["candidates"] for n in response.json()["nodes"]
            if n["alive"]}


async def test_candidates_through_nginx_survive_a_killed_process(
    deployment: tuple[str, list[ServerProcess]],
) -> None:
    """Sockets and REST through nginx: nginx's X-Forwarded-For is the recorded address, a
    command reaches every candidate, and after SIGKILL of one process its candidates resume
    through nginx on the other with their resume tokens and get the next command."""
    url, processes = deployment
    api = Api(url)
    pages: list[LiveCandidate] = []
    try:
        # REST through nginx: the address the app believes is the one nginx forwards.
        transport = httpx.AsyncHTTPTransport(local_address=CLIENT_ADDR)
        async with httpx.AsyncClient(base_url=url, transport=transport, timeout=10) as http:
            offer = await http.get("/api/v1/guests/offer")
            assert offer.status_code == 200, offer.text
            assert offer.json()["client_ip"] == CLIENT_ADDR

        exam = await api.create_exam(settings={"lock_sessions": True})
        sessions = await api.create_sessions(exam["id"], COUNT)
        for session in sessions:
            pages.append(await open_via(url, session["access_code"]))
        # nginx spread them over both processes (round robin, no stickiness).
        direct = Api(processes[0].url)
        try:
            pids = [p.process.pid for p in processes]  # type: ignore[union-attr]

            async def spread() -> dict[int, int] | None:
                counts = await candidates_per_node(direct)
                held = [counts.get(pid, 0) for pid in pids]
                return counts if sum(held) == COUNT and all(held) else None

            counts = await eventually(spread, timeout=10)
        finally:
            await direct.close()

        result = await api.command(exam["id"], action="notice", target="all", text="hello")
        assert {a["delivery"] for a in result["applied"]} == {"sent"}, result
        await eventually(lambda: all(p.commands("notice") for p in pages))

        for session in sessions:
            opened = [e for e in await api.history(exam["id"], session["id"])
                      if e["kind"] == "opened"]
            assert [e["details"]["remote_addr"] for e in opened] == [CLIENT_ADDR]

        victim = processes[1]
        victim.kill()  # SIGKILL: its sockets through nginx are cut
        await eventually(lambda: len([p for p in pages if p.closed]) == counts[pids[1]],
                         timeout=10)
        lost = [p for p in pages if p.closed]
        kept = [p for p in pages if not p.closed]

        # The lost pages reconnect through nginx, which sends them to the survivor, and resume
        # their locked sessions with their resume tokens (without one they would be refused).
        moved = []
        for page in lost:
            await page.close()
            code = next(s["access_code"] for s in sessions if s["id"] == page.session_id)
            moved.append(await open_via(url, code, resume_token=page.resume_token))
        for page in moved:
            session = await api.session(exam["id"], page.session_id)
            assert session["connected"] is True and session["reconnects"] == 1, session

        result = await api.command(exam["id"], action="notice", target="all", text="welcome")
        assert {a["delivery"] for a in result["applied"]} == {"sent"}, result
        await eventually(lambda: all(last_notice(p) == "welcome" for p in [*kept, *moved]))
        pages.extend(moved)
    finally:
        for page in pages:
            await page.close()
        await api.close()



async def test_event_stream_through_nginx_is_not_buffered(
    deployment: tuple[str, list[ServerProcess]],
) -> None:
    """An event stream through nginx gets each event as it commits (nginx does not hold it
    back in a buffer), and resumes through nginx with Last-Event-ID."""
    url, _ = deployment
    api = Api(url)
    try:
        exam = await api.create_exam()
        [session] = await api.create_sessions(exam["id"], 1)
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            headers = {"Authorization": api.http.headers["Authorization"]}
            path = f"/api/v1/exams/{exam['id']}/events"
            async with http.stream("GET", path, headers=headers) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                async for line in lines:
                    if line.startswith("id: "):
                        first = int(line[4:])
                        break
                await api.command(exam["id"], action="notice", target=session["id"], text="a")
                async for line in lines:
                    if line.startswith("id: "):
                        assert int(line[4:]) == first + 1
                        break
            await api.command(exam["id"], action="notice", target=session["id"], text="b")
            async with http.stream("GET", path, headers={**headers, "Last-Event-ID": str(first + 1)}
                                   ) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        assert '"text":"b"' in line
                        break
    finally:
        await api.close()
