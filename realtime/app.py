"""The composition root: `create_app()` builds every part in the Starlette lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from realtime.alerts import DropAlerts
from realtime.api.exam_routes import routes as exam_routes
from realtime.api.guest_routes import routes as guest_routes
from realtime.api.identity_routes import routes as identity_routes
from realtime.api.inputs import RefuseNulInURL
from realtime.api.mail_routes import MailDesk
from realtime.api.mail_routes import routes as mail_routes
from realtime.api.node_routes import routes as node_routes
from realtime.api.report_routes import routes as report_routes
from realtime.api.roster_routes import routes as roster_routes
from realtime.api.routes import routes as api_routes
from realtime.api.token_routes import routes as token_routes
from realtime.api.webhook_routes import routes as webhook_routes
from realtime.batching import CommitBatcher
from realtime.channels.candidate import candidate_endpoint
from realtime.channels.common import DirectSockets, SocketApp
from realtime.channels.event_stream import exam_events
from realtime.channels.proctor import proctor_endpoint
from realtime.channels.transport import TransportMiddleware
from realtime.config import Settings
from realtime.db import migrate
from realtime.db.database import Database
from realtime.drainer import Drainer
from realtime.errors import CloseCode, RateLimited, RealtimeError, backend_down
from realtime.gcpolicy import run_gc_policy
from realtime.guests import models as _guest_tables  # noqa: F401 (tables for create_all)
from realtime.guests.service import GuestService
from realtime.hub.hub import Hub, run_heartbeat, run_sweeper
from realtime.identity import models as _identity_tables  # noqa: F401 (tables for create_all)
from realtime.identity.audited import AuditedSessionService
from realtime.identity.password_reset import PasswordResets
from realtime.identity.setup import build_identity
from realtime.jsonsafe import JSONResponse
from realtime.limits.body import BodyLimit
from realtime.limits.setup import build_limits, rate_limited_response
from realtime.mail import models as _mail_tables  # noqa: F401 (tables for create_all)
from realtime.mail.mailer import Mailer, SmtpServer
from realtime.metrics import Metrics
from realtime.presence import NodePresence
from realtime.proxies import Proxies, parse_networks
from realtime.reasons import ReasonPolicy
from realtime.runtime import Runtime
from realtime.sessions import COMMAND_FIELDS
from realtime.state.machine import Liveness
from realtime.state.memory import MemoryStore
from realtime.state.store import StateStore
from realtime.webhooks.dispatcher import Dispatcher, RetryPolicy
from realtime.webhooks.store import WebhookStore

log = logging.getLogger(__name__)

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"
# The endpoints that genuinely take bulk input (REALTIME_MAX_BULK_BODY_BYTES): sessions for a
# whole exam (as JSON or a roster CSV), and commands naming up to 20 000 sessions.
BULK_BODY_PATHS = re.compile(r"^/api/v1/exams/[^/]+/(sessions|commands|roster)$")


def build_store(settings: Settings) -> StateStore:
    """The state backend named by the configuration: Redis when a URL is set, else memory."""
    if settings.redis_url:
        from realtime.state.redis import RedisStore

        return RedisStore(
            settings.redis_url, prefix=settings.redis_prefix, log_size=settings.event_log_size,
            commit_chunk=settings.redis_commit_chunk,
        )
    return MemoryStore(log_size=settings.event_log_size)


async def error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RateLimited):
        return rate_limited_response(exc)
    if isinstance(exc, RealtimeError):
        body = {"error": {"code": str(exc.code), "message": exc.message}}
        return JSONResponse(body, status_code=exc.status)
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code)
    if backend_down(exc):
        # The state store or SQL did not answer. Every change is applied by one atomic store
        # step, after which nothing on the request path can fail: so nothing was applied.
        log.warning("backend unavailable on %s: %r", request.url.path, exc)
        body = {"error": {"code": "unavailable",
                          "message": "a backend does not answer; nothing was applied; retry"}}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse({"error": {"code": "internal", "message": "internal error"}}, 500)


# How long shutdown waits for its background loops (heartbeat, sweeper, presence, GC policy)
# to end once cancelled: they hold nothing that must be finished.
BACKGROUND_STOP_TIMEOUT = 2.0
# How long shutdown waits for what the last answers set off (answers kept, audit rows).
SETTLE_TIMEOUT = 1.0


async def stop_tasks(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Cancel `tasks` and wait at most `timeout` for them to end. A task that swallowed its
    cancel (a library below it turned it into something else and the loop went on) is
    cancelled again on every turn and then left behind, logged: shutdown must not hang on it."""
    for task in tasks:
        task.cancel()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {task for task in tasks if not task.done()}
    while pending and loop.time() < deadline:
        _, pending = await asyncio.wait(pending, timeout=min(0.1, deadline - loop.time()))
        for task in pending:
            task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("background task %s ended with %r", task.get_name(), task.exception())
    for task in pending:
        log.error("background task %s did not stop within %.1f s of shutdown; left behind",
                  task.get_name(), timeout)


async def _shut_down(
    settings: Settings,
    background: list[asyncio.Task[None]],
    hub: Hub,
    service: AuditedSessionService,
    drainer: Drainer,
    store: StateStore,
    db: Database,
) -> None:
    """Stop within REALTIME_SHUTDOWN_TIMEOUT, whatever the backends do.

    Commits in flight and the outbox get the time that is left; what does not reach SQL by
    then stays in Redis's outbox (the next process drains it) — on the memory store it is
    lost, which is logged. The connections and the pool are closed in any case.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.shutdown_timeout
    await stop_tasks(background, min(BACKGROUND_STOP_TIMEOUT, settings.shutdown_timeout))
    hub.close_all(CloseCode.GOING_AWAY, "server shutting down")
    try:
        async with asyncio.timeout_at(deadline):
            # audit rows set off by the last answers, into the outbox (a round trip each); not
            # longer: a sequence realignment after a store outage waits on SQL
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SETTLE_TIMEOUT):
                    await service.settle()
            await service.batcher.close()
            await drainer.close(flush_timeout=max(0.0, deadline - loop.time()))
    except TimeoutError:
        where = ("stays in Redis's outbox for the next process" if settings.redis_url
                 else "is LOST (memory store)")
        log.error("shutdown took over REALTIME_SHUTDOWN_TIMEOUT (%s s): history not yet in "
                  "SQL %s", settings.shutdown_timeout, where)
    for close in (store.close, db.close):
        try:
            async with asyncio.timeout_at(max(deadline, loop.time() + 1.0)):
                await close()
        except Exception as exc:
            log.warning("shutdown: closing %s failed: %r", close.__qualname__, exc)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    settings.check()  # refuse to start on settings that would fail silently (ConfigError)
    # the reason categories too (ReasonsError): a typo in the file must not surface mid-exam
    reasons = ReasonPolicy.load(settings.reason_categories_file, settings.reason_category_required)
    ws_protocols: set[str] = set()  # the server's WebSocket implementations seen (metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = build_store(settings)
        db = await Database.connect(settings.database_url)
        await migrate.upgrade(db)
        liveness = Liveness(stale_after=settings.stale_after, resume_grace=settings.resume_grace)
        service = AuditedSessionService(
            store, db, liveness,
            batcher=CommitBatcher(store, retry_budget=settings.commit_retry_budget),
        )
        service.reasons = reasons
        drainer = Drainer(store, db)
        service.catch_up = drainer.catch_up
        hub = Hub(fetch_session=service.get_session, interest=store)
        # Each exam's copy for staff commands is made as this process starts serving it (the
        # first socket of it here), not by its first command (which then waited on it).
        store.warm_views(COMMAND_FIELDS)
        metrics = Metrics(hub, drainer, store, ws_protocols)
        metrics.watch_batcher(service.batcher)
        service.on_command = metrics.observe_command
        service.on_open = lambda outcome: metrics.opens.labels(outcome).inc()
        service.on_sweep = metrics.observe_sweep
        app.state.metrics = metrics
        store.add_commit_listener(hub.on_committed)
        app.state.limits = build_limits(
            settings, lambda kind: metrics.rate_limited.labels(kind.value).inc()
        )
        store.add_listener(hub.on_event)
        store.add_listener(drainer.on_event)
        drop_alerts = DropAlerts(store, service.get_exam, service.batcher.commit)
        store.add_listener(drop_alerts.on_event)
        # Exams not served here are not heard: this process's own commits still wake its
        # drainer (other exams are found by its rescan of the outboxes).
        store.add_commit_listener(lambda events: drainer.on_event(events[0]))
        store.add_resubscribe_listener(hub.resynchronise)
        store.add_resubscribe_listener(service.store_came_back)
        await store.start()
        identity = build_identity(settings, db)
        app.state.identity = identity
        service.audit = identity.audit
        mailer = Mailer(SmtpServer.from_settings(settings), db, identity.audit,
                        settings.smtp_retries, settings.smtp_retry_backoff)
        app.state.mail = MailDesk(
            mailer, PasswordResets(identity.service, settings.password_reset_ttl),
            settings.public_url,
        )
        auth = identity.auth
        presence = NodePresence(
            store, settings.node_heartbeat_interval, settings.node_timeout,
            info=lambda: {"candidates": len(hub.live_candidates()),
                          "dashboards": sum(len(w) for w in hub.watchers.values()),
                          "subscribed": store.subscription_health()["subscribed"],
                          "history_backlog": drainer.backlog.events},
        )
        await presence.beat()  # known to the others before it holds any socket
        service.presence = presence
        app.state.runtime = Runtime(settings, store, db, drainer, service, hub, auth, presence)
        drainer.start()
        webhooks = WebhookStore(db)
        dispatcher = Dispatcher(
            webhooks, timeout=settings.webhook_timeout,
            policy=RetryPolicy(settings.webhook_max_attempts, settings.webhook_backoff,
                               settings.webhook_backoff_max),
        )
        webhooks.on_new_deliveries = dispatcher.wake
        metrics.watch_webhooks(dispatcher)
        db.outbox_hooks.append(webhooks)  # deliveries are written with their drained events
        app.state.webhooks = webhooks
        dispatcher.start()
        app.state.guests = GuestService(
            db, identity.service, service, store, settings.secret_key,
            forget_tokens=auth.forget,
        )
        service.may_open = app.state.guests.may_open
        identity.service.lockout_exempt = app.state.guests.is_guest
        heartbeat = asyncio.create_task(
            run_heartbeat(hub, settings.ping_interval, settings.ping_timeout, service.touch,
                          touch_with_conn=True),
            name="heartbeat",
        )
        sweeper = asyncio.create_task(
            run_sweeper(hub, max(settings.stale_after / 3, 0.2),
                        lambda exam_id: service.sweep_stale(exam_id, hub.holds_session),
                        dead_nodes=lambda: presence.dead),
            name="sweeper",
        )
        background = [heartbeat, sweeper,
                      asyncio.create_task(presence.run(), name="node-presence")]
        if settings.gc_freeze_interval > 0:
            background.append(
                asyncio.create_task(
                    run_gc_policy(settings.gc_freeze_interval, settings.gc_full_interval),
                    name="gc-policy",
                )
            )
        try:
            yield
        finally:
            await dispatcher.close()
            await drop_alerts.close()
            await mailer.close()
            await _shut_down(settings, background, hub, service, drainer, store, db)

    async def root(request: Request) -> Response:
        return RedirectResponse("/dashboard/")

    async def metrics_endpoint(request: Request) -> Response:
        metrics: Metrics = request.app.state.metrics
        return await metrics.endpoint(request)

    candidate_socket = WebSocketRoute("/ws/candidate", SocketApp(candidate_endpoint))
    routes: list[BaseRoute] = [
        Route("/", root),
        Route("/metrics", metrics_endpoint, include_in_schema=False),
        *api_routes,
        # a stream: documented in docs/protocol.md, not in the OpenAPI document the fuzzer runs
        Route("/api/v1/exams/{exam_id}/events", exam_events, methods=["GET"],
              include_in_schema=False),
        *exam_routes,
        *roster_routes,
        *report_routes,
        *identity_routes,
        *mail_routes,
        *guest_routes,
        *node_routes,
        *token_routes,
        *webhook_routes,
        candidate_socket,
        WebSocketRoute("/ws/proctor", proctor_endpoint),
    ]
    if CLIENT_DIR.is_dir():
        routes.append(Mount("/client", StaticFiles(directory=CLIENT_DIR), name="client"))
        for page in ("dashboard", "candidate"):
            if (CLIENT_DIR / page).is_dir():
                routes.append(
                    Mount(f"/{page}", StaticFiles(directory=CLIENT_DIR / page, html=True))
                )
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(TransportMiddleware, protocols=ws_protocols),
            Middleware(RefuseNulInURL),
            Middleware(BodyLimit, limit=settings.max_body_bytes,
                       larger=[(BULK_BODY_PATHS, settings.max_bulk_body_bytes)]),
            # thousands of idle candidate sockets: no router or exception-middleware frames
            Middleware(DirectSockets, routes=[candidate_socket]),
        ],
        exception_handlers={
            RealtimeError: error_response,
            HTTPException: error_response,
            Exception: error_response,
        },
    )
    # REALTIME_TRUSTED_PROXIES is the only authority on forwarded headers (realtime.proxies)
    app.state.proxies = Proxies(parse_networks(settings.trusted_proxies))
    return app
