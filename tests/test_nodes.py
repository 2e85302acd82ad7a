"""`GET /api/v1/nodes`: every process of a deployment, alive or dead, answered by any of them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
from clients import Api, LiveCandidate, eventually, open_candidate
from redis_server import RedisServer
from server import ServerProcess

from realtime.api.node_routes import describe_nodes

PASSWORD = "a good long password"


def test_describe_nodes_marks_alive_this_and_forgets_after_an_hour() -> None:
    """Alive while the last beat is within the timeout; `this` for the answering node; nodes
    silent for over an hour are left out; alive ones come first."""
    now = 10_000.0
    beats = [
        {"id": "nb", "last_beat": now - 7, "info": {"pid": 2}},
        {"id": "na", "last_beat": now - 1, "info": {"pid": 1}},
        {"id": "nc", "last_beat": now - 3601, "info": {}},
        {"id": "nd", "last_beat": now - 6, "info": {}},
    ]
    nodes = describe_nodes(beats, "nb", now, timeout=6.0)
    assert [(n["id"], n["alive"], n["this"]) for n in nodes] == [
        ("na", True, False), ("nd", True, False), ("nb", False, True),
    ]
    assert nodes[0]["info"] == {"pid": 1} and nodes[0]["last_beat"] == now - 1


async def _user_token(api: Api, roles: list[str]) -> str:
    email = f"{roles[0]}-{uuid.uuid4().hex[:8]}@example.org"
    created = await api.http.post("/api/v1/users", json={
        "full_name": "Someone", "email": email, "roles": roles, "groups": []})
    assert created.status_code == 201, created.text
    done = await api.http.post("/api/v1/auth/activate", json={
        "token": created.json()["activation_token"], "password": PASSWORD})
    assert done.status_code == 200, done.text
    signed_in = await api.http.post("/api/v1/auth/login", json={
        "login": email, "password": PASSWORD}, headers={"Authorization": ""})
    assert signed_in.status_code == 200, signed_in.text
    token: str = signed_in.json()["token"]
    return token


async def _nodes(api: Api) -> dict[str, dict[str, Any]]:
    response = await api.http.get("/api/v1/nodes")
    assert response.status_code == 200, response.text
    return {node["id"]: node for node in response.json()["nodes"]}


async def test_two_processes_list_each_other_with_connections_and_a_killed_one_dead(
    tmp_path: Path,
) -> None:
    """Both processes on one Redis list both nodes (each marking itself `this`), with the
    candidates each holds; a SIGKILLed one is listed dead (not forgotten); a viewer gets 403."""
    redis = RedisServer()
    redis.start()
    shared: dict[str, Any] = {"redis_url": redis.url, "workdir": tmp_path, "node_timeout": 3}
    first = ServerProcess(**shared).start()
    second = ServerProcess(database_url=first.database_url, **shared).start()
    api_first, api_second = Api(first.url), Api(second.url)
    pages: list[LiveCandidate] = []
    try:
        by_first, by_second = await _nodes(api_first), await _nodes(api_second)
        assert set(by_first) == set(by_second) and len(by_first) == 2
        [me_first] = [n for n in by_first.values() if n["this"]]
        [me_second] = [n for n in by_second.values() if n["this"]]
        assert me_first["id"] != me_second["id"]
        assert me_first["info"]["pid"] == first.process.pid  # type: ignore[union-attr]
        assert me_second["info"]["pid"] == second.process.pid  # type: ignore[union-attr]
        assert all(n["alive"] for n in by_first.values())

        exam = await api_first.create_exam()
        sessions = await api_first.create_sessions(exam["id"], 3)
        for session, server in zip(sessions, (second, second, first), strict=True):
            client, opened = await open_candidate(server.ws_url, session["access_code"])
            assert opened["type"] == "opened", opened
            pages.append(LiveCandidate(client, opened))

        async def counted() -> bool:
            nodes = await _nodes(api_first)
            return (nodes[me_first["id"]]["info"]["candidates"] == 1
                    and nodes[me_second["id"]]["info"]["candidates"] == 2)

        await eventually(counted, timeout=10)

        second.kill()

        async def second_dead() -> dict[str, Any] | None:
            node = (await _nodes(api_first)).get(me_second["id"])
            return node if node is not None and not node["alive"] else None

        dead = await eventually(second_dead, timeout=15)
        assert dead["info"]["pid"] == me_second["info"]["pid"]
        assert (await _nodes(api_first))[me_first["id"]]["alive"] is True

        viewer = await _user_token(api_first, ["viewer"])
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:
            refused = await http.get("/api/v1/nodes",
                                     headers={"Authorization": f"Bearer {viewer}"})
            assert refused.status_code == 403, refused.text
            anonymous = await http.get("/api/v1/nodes")
            assert anonymous.status_code == 401, anonymous.text
            document = (await http.get("/api/v1/openapi.json")).json()
            assert "get" in document["paths"]["/api/v1/nodes"]
    finally:
        for page in pages:
            await page.close()
        await api_first.close()
        await api_second.close()
        second.kill()
        first.stop()
        redis.cleanup()
