"""The running server's parts, built once by `create_app` and reached through `app.state`."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from realtime.auth.tokens import TokenAuthenticator
from realtime.config import Settings
from realtime.db.database import Database
from realtime.drainer import Drainer
from realtime.hub.hub import Hub
from realtime.presence import NodePresence
from realtime.sessions import SessionService
from realtime.state.store import StateStore


@dataclass(slots=True)
class Runtime:
    settings: Settings
    store: StateStore
    db: Database
    drainer: Drainer
    service: SessionService
    hub: Hub
    auth: TokenAuthenticator
    presence: NodePresence


def runtime_of(conn: HTTPConnection) -> Runtime:
    runtime: Runtime = conn.app.state.runtime
    return runtime
