"""The server processes (nodes) of a deployment, as operators see them: `GET /api/v1/nodes`.

Every process beats its record into the shared state store (`realtime.presence`), so any
process can answer for all of them; the answer marks which one answered (`this`), which is
what an operator behind a load balancer needs to tell the processes apart.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from realtime.api.routes import principal_of
from realtime.auth.permissions import Permission
from realtime.jsonsafe import JSONResponse
from realtime.runtime import runtime_of

NODE_MEMORY = 3600.0  # seconds: nodes silent for longer are no longer listed


def describe_nodes(
    beats: list[dict[str, Any]], this_node: str, now: float, timeout: float
) -> list[dict[str, Any]]:
    """The nodes heard of within the last hour, alive ones first, then by id; a node is alive
    while its last beat is at most `timeout` seconds old (what the sweeper also decides on)."""
    nodes = [
        {
            "id": beat["id"],
            "alive": now - float(beat["last_beat"]) <= timeout,
            "this": beat["id"] == this_node,
            "last_beat": float(beat["last_beat"]),
            "info": dict(beat.get("info") or {}),
        }
        for beat in beats
        if now - float(beat["last_beat"]) <= NODE_MEMORY
    ]
    nodes.sort(key=lambda node: (not node["alive"], node["id"]))
    return nodes


async def list_nodes(request: Request) -> Response:
    """
    summary: The server processes heard of in the last hour, alive or not
    description: >
      Each node's record is what it last reported in its heartbeat (`info`: host, pid,
      started_at, candidates and dashboards connected, subscribed, history_backlog). A node
      is `alive` while its last beat is at most REALTIME_NODE_TIMEOUT seconds old; `this`
      marks the process that answered. `now` is the answering process's clock (epoch s).
    responses:
      200: {description: "{now, timeout, nodes: [{id, alive, this, last_beat, info}]}"}
      401: {description: Not signed in}
      403: {description: "Without the system.view permission"}
    """
    await principal_of(request, Permission.VIEW_SYSTEM)
    runtime = runtime_of(request)
    now = time.time()
    timeout = runtime.settings.node_timeout
    nodes = describe_nodes(await runtime.store.list_nodes(), runtime.presence.node_id, now, timeout)
    return JSONResponse({"now": now, "timeout": timeout, "nodes": nodes})


routes = [Route("/api/v1/nodes", list_nodes, methods=["GET"])]
