"""Node presence: a SIGKILLed process's candidates are shown disconnected within seconds (not
after their `last_seen` goes stale), commands to them are reported `queued`, and they carry on
on another process with their resume tokens."""

from __future__ import annotations

from pathlib import Path

from clients import Api, LiveCandidate, LiveDashboard, eventually, open_candidate
from redis_server import RedisServer
from server import ServerProcess

COUNT = 6


async def test_a_killed_node_s_candidates_are_disconnected_queued_and_resume_elsewhere(
    tmp_path: Path,
) -> None:
    redis = RedisServer()
    redis.start()
    shared = {"redis_url": redis.url, "workdir": tmp_path, "stale_after": 60}
    doomed = ServerProcess(**shared).start()  # type: ignore[arg-type]
    survivor = ServerProcess(database_url=doomed.database_url, **shared).start()  # type: ignore[arg-type]
    api = Api(survivor.url)
    try:
        exam = await api.create_exam()
        sessions = await api.create_sessions(exam["id"], COUNT)
        pages = []
        for session in sessions:
            client, opened = await open_candidate(doomed.ws_url, session["access_code"])
            assert opened["type"] == "opened", opened
            pages.append(LiveCandidate(client, opened))
        dashboard = await LiveDashboard.watch(survivor.ws_url, exam["id"])
        ids = {s["id"] for s in sessions}

        doomed.kill()
        # Within the node timeout and a sweep (not REALTIME_STALE_AFTER, here 60 s).
        def all_gone() -> bool:
            gone = {e["session_id"] for e in dashboard.kinds("disconnected")
                    if e["details"].get("reason") == "node lost"}
            return gone == ids

        await eventually(all_gone, timeout=15)
        result = await api.command(exam["id"], action="notice", target="all", text="hello?")
        assert {a["delivery"] for a in result["applied"]} == {"queued"}, result

        # The pages reconnect (a balancer sends them to the survivor) with their resume tokens.
        moved = []
        for page, session in zip(pages, sessions, strict=True):
            await page.close()
            client, opened = await open_candidate(survivor.ws_url, session["access_code"],
                                                  resume_token=page.resume_token)
            assert opened["type"] == "opened", opened
            moved.append(LiveCandidate(client, opened))
        result = await api.command(exam["id"], action="notice", target="all", text="welcome")
        assert {a["delivery"] for a in result["applied"]} == {"sent"}, result
        await eventually(lambda: all(p.commands("notice") for p in moved))
        for page in moved:
            assert [c["details"]["text"] for c in page.commands("notice")] == ["welcome"]
            await page.close()
        await dashboard.close()
    finally:
        await api.close()
        survivor.stop()
        doomed.kill()
        redis.cleanup()
