"""Prometheus metrics of one process, served at `GET /metrics`.

Each process keeps its own registry (no global state, so several apps can live in one test
process); scrape every process. Gauges read the hub at scrape time, so the hot path pays only
for the counters it increments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from realtime.batching import CommitBatcher
from realtime.drainer import Drainer
from realtime.hub.connection import FRAMES, Connection
from realtime.hub.hub import Hub
from realtime.state.store import StateStore
from realtime.webhooks.dispatcher import Dispatcher

STALE_OUTCOMES = ("disconnected", "held_here", "changed")  # of `realtime_stale_holders`


class Metrics:
    def __init__(
        self, hub: Hub, drainer: Drainer | None = None, store: StateStore | None = None,
        ws_protocols: set[str] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        gauge = self._gauge
        if ws_protocols is not None:
            self.registry.register(_WebSocketProtocols(ws_protocols))
        self.registry.register(_FramesWritten())
        if store is not None:
            gauge("realtime_event_subscription_up",
                  "1 while this process hears committed events (its subscription is up)",
                  lambda: float(store.subscription_health()["subscribed"]))
            gauge("realtime_event_subscription_losses",
                  "Times the event subscription was lost or re-made since start",
                  lambda: store.subscription_health()["losses"])
            gauge("realtime_exams_served",
                  "Exams whose events this process hears (sockets of theirs are open here)",
                  lambda: store.subscription_health()["exams_served"] or 0)
            gauge("realtime_events_received",
                  "Events this process took from the state store's subscription since start "
                  "(only those of the exams it serves)",
                  lambda: store.subscription_health()["events_received"] or 0)
            gauge("realtime_events_recovered",
                  "Missed events read back from the outboxes after such a loss, since start",
                  lambda: store.subscription_health()["recovered_events"])
            gauge("realtime_command_copies_made",
                  "Copies of a served exam's sessions made for staff commands to decide on "
                  "(Redis), since start",
                  lambda: store.command_copies()["made"])
            gauge("realtime_command_copy_reads",
                  "Whole-exam reads (slice by slice) started to make those copies, since start",
                  lambda: store.command_copies()["reads"])
            gauge("realtime_command_copies_warmed",
                  "Of those copies, the ones started as this process began serving an exam "
                  "(not by a staff command), since start",
                  lambda: store.command_copies()["warmed"])
        if drainer is not None:
            gauge("realtime_history_backlog_events",
                  "Events committed but not yet written to SQL (all exams; refreshed by the "
                  "drainer every 2 s and by /healthz)",
                  lambda: drainer.backlog.events)
            gauge("realtime_history_backlog_oldest_seconds",
                  "Age of the oldest event not yet written to SQL (0: none)",
                  drainer.oldest_age)
            gauge("realtime_history_written_events",
                  "Events this process's drainer has written to SQL since it started",
                  lambda: drainer.written)
            gauge("realtime_history_drain_failures",
                  "Failed drain rounds (SQL or the state store did not answer) since start",
                  lambda: drainer.failures)
        gauge("realtime_ping_timeouts",
              "Candidate sockets closed for not answering pings (4009) since start",
              lambda: hub.ping_timeouts)
        gauge("realtime_heartbeat_lag_max_seconds",
              "Longest the heartbeat ran late (event-loop stall) since start",
              lambda: hub.heartbeat_lag_max)
        gauge("realtime_candidate_connections",
              "Candidate sockets holding an open session on this process",
              lambda: len(hub.live_candidates()))
        gauge("realtime_dashboard_connections",
              "Dashboard sockets subscribed to an exam on this process",
              lambda: sum(len(w) for w in hub.watchers.values()))
        gauge("realtime_events_dispatched",
              "Committed events this process has fanned out since it started",
              lambda: hub.events_seen)
        gauge("realtime_slow_consumers_dropped",
              "Connections closed because their send queue overflowed (4008)",
              lambda: Connection.overflows)
        gauge("realtime_send_deadline_aborts",
              "Connections aborted because their peer read nothing within the send deadline",
              lambda: Connection.send_timeouts)
        self.commands = Counter(
            "realtime_command_targets",
            "Sessions targeted by staff commands, by action and outcome",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.command_seconds = Histogram(
            "realtime_command_seconds",
            "Time to apply a staff command (held by the outbox; SQL follows)",
            ["action"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        # per action: its applied and skipped counters and its histogram (one per action)
        self._command_children: dict[str, tuple[Counter, Counter, Histogram]] = {}
        self.opens = Counter(
            "realtime_opens",
            "Candidate open attempts, by outcome (opened or a refusal reason)",
            ["outcome"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "realtime_rate_limited",
            "Refused by a rate limit, by kind: handshake, access_code, login (per address), "
            "candidate_message, dashboard_message (messages dropped on a socket)",
            ["kind"],
            registry=self.registry,
        )
        self.sweeps = Counter(
            "realtime_sweeps",
            "Sweeps of an exam for sessions whose holder went silent, run by this process",
            registry=self.registry,
        )
        self.stale_holders = Counter(
            "realtime_stale_holders",
            "Sessions a sweep found not refreshed within REALTIME_STALE_AFTER, by what it did: "
            "disconnected, held_here (an open connection of this process holds it: its "
            "refresh came late), changed (heard from or disconnected before the commit)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in STALE_OUTCOMES:
            self.stale_holders.labels(outcome)

    def _gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time: the hot path pays nothing for it."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def watch_webhooks(self, dispatcher: Dispatcher) -> None:
        """Gauges of this process's webhook dispatcher (built after the metrics)."""
        gauge = self._gauge
        gauge("realtime_webhook_delivered",
              "Webhook deliveries this process sent successfully (2xx) since start",
              lambda: dispatcher.delivered)
        gauge("realtime_webhook_attempts_failed",
              "Webhook attempts of this process that failed (non-2xx, timeout, refused)",
              lambda: dispatcher.failed_attempts)
        gauge("realtime_webhook_given_up",
              "Webhook deliveries this process marked failed after their last attempt",
              lambda: dispatcher.given_up)
        gauge("realtime_webhook_dispatch_errors",
              "Dispatcher rounds that failed (SQL did not answer) since start",
              lambda: dispatcher.errors)

    def watch_batcher(self, batcher: CommitBatcher) -> None:
        """Counters of the commits the state store refused whole, before any of them ran, while
        their exam's Redis Cluster slot was moving (sent again: `realtime.batching`)."""
        gauge = self._gauge
        gauge("realtime_commit_retries",
              "Commits sent again after the state store refused them whole (their exam's "
              "Redis Cluster slot was moving; nothing applied), each resend counted, since start",
              lambda: batcher.retries)
        gauge("realtime_commit_retries_given_up",
              "Refused commits not sent again because REALTIME_COMMIT_RETRY_BUDGET was spent: "
              "failed 503 / unavailable, nothing applied, since start",
              lambda: batcher.retries_given_up)
        gauge("realtime_commits_awaiting_retry",
              "Commits waiting now to be sent again (refused, or queued behind refused ones "
              "of their exam)",
              lambda: batcher.awaiting_retry)

    def observe_command(self, action: str, applied: int, skipped: int, seconds: float) -> None:
        children = self._command_children.get(action)
        if children is None:  # `labels` takes a lock and builds its key on every call
            children = self._command_children[action] = (
                self.commands.labels(action, "applied"), self.commands.labels(action, "skipped"),
                self.command_seconds.labels(action),
            )
        applied_count, skipped_count, seconds_of = children
        applied_count.inc(applied)
        skipped_count.inc(skipped)
        seconds_of.observe(seconds)

    def observe_sweep(self, stale: dict[str, int]) -> None:
        self.sweeps.inc()
        for outcome, count in stale.items():
            self.stale_holders.labels(outcome).inc(count)

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class _WebSocketProtocols:
    """`realtime_websocket_protocol{implementation=…} 1` for each WebSocket implementation of
    the server that has served a socket here (uvicorn's `ws` setting: REALTIME_WS_IMPL under
    `realtime serve`, `--ws` under plain uvicorn)."""

    def __init__(self, seen: set[str]) -> None:
        self.seen = seen

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for name in sorted(self.seen):
            family.add_metric([name], 1.0)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "realtime_websocket_protocol",
            "1 for each WebSocket implementation of the server that served a socket of this "
            "process since start (uvicorn's names: websockets-sansio, wsproto, websockets)",
            labels=["implementation"],
        )


class _FramesWritten:
    """`realtime_frames_written_total{path=…}`: the frames of the process's sockets, by how they
    were written (`realtime.hub.connection.FRAMES`): `direct`, framed once
    per message and written to the transport (uvicorn's websockets-sansio, when safe:
    realtime.channels.direct), or `asgi`, through the server's ASGI send."""

    def describe(self) -> list[CounterMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        family.add_metric(["direct"], float(FRAMES.direct))
        family.add_metric(["asgi"], float(FRAMES.asgi))
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "realtime_frames_written",
            "WebSocket data frames written since start, by path: direct (pre-framed, written "
            "to the transport) or asgi (through the server's ASGI send)",
            labels=["path"],
        )
