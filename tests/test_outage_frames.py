"""With Redis unreachable, sockets get a clear answer and stay usable: nothing is applied."""

from __future__ import annotations

from pathlib import Path

from clients import Api, WsClient, eventually, healthz, open_candidate, watch
from redis_server import RedisServer
from server import ServerProcess


async def test_a_redis_outage_answers_unavailable_and_keeps_the_sockets(tmp_path: Path) -> None:
    redis = RedisServer()
    redis.start()
    server = ServerProcess(redis_url=redis.url, workdir=tmp_path).start()
    try:
        api = Api(server.url)
        exam = await api.create_exam()
        first, second = await api.create_sessions(exam["id"], 2)
        candidate, opened = await open_candidate(server.ws_url, first["access_code"])
        assert opened["type"] == "opened"
        dashboard, _ = await watch(server.ws_url, exam["id"])

        async def drained() -> bool:  # this Redis keeps nothing: only what SQL has survives
            return bool((await healthz(server.url))[1]["history_backlog"]["events"] == 0)

        await eventually(drained)
        redis.stop()
        assert (await healthz(server.url))[0] == 503

        # A dashboard command: an error frame naming the request, the socket stays open.
        await dashboard.send({"type": "command", "request_id": 7, "action": "pause",
                              "target": first["id"]})
        error = await dashboard.recv("error", "command_result")
        assert (error["type"], error["code"], error["request_id"]) == ("error", "unavailable", 7)
        # A new page cannot open now: told so, then closed 1013 (reconnect later).
        late = await WsClient.connect(f"{server.ws_url}/ws/candidate")
        await late.send({"type": "open", "access_code": second["access_code"]})
        assert (await late.recv("error"))["code"] == "unavailable"
        assert await late.wait_closed() == 1013
        # The open candidate's message is refused the same way; its socket stays open.
        await candidate.send({"type": "client_event", "name": "blur"})
        assert (await candidate.recv("error"))["code"] == "unavailable"

        # Back (empty: the exam is rebuilt from SQL on first use). Dashboards are told to
        # resynchronise (4010: events may have been missed); the candidate's socket carries on.
        redis.start()
        result = await api.command(exam["id"], action="pause", target=first["id"])
        assert [a["session_id"] for a in result["applied"]] == [first["id"]]
        pushed = await candidate.recv("command", "state")
        while pushed["session"].get("status") != "paused":  # a resync of the older state
            pushed = await candidate.recv("command", "state")
        await candidate.close()
        await api.close()
    finally:
        server.stop()
        redis.cleanup()
