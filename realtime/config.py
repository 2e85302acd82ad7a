"""Settings from the environment. The only module that reads environment variables."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


class ConfigError(ValueError):
    """Settings that cannot work together; the server refuses to start with them."""


# uvicorn's WebSocket implementations `realtime serve` accepts (REALTIME_WS_IMPL), ours first.
# websockets-sansio is the cheapest per frame of a fan-out and under the memory target per
# idle socket (docs/performance.md, "the WebSocket implementation under the fan-out"); "auto"
# leaves the choice to uvicorn, whose pick changed between versions (legacy websockets
# before 0.50).
WS_IMPLS = ("websockets-sansio", "wsproto", "websockets", "auto")


@dataclass(slots=True)
class Settings:
    """Every knob of the server. `Settings.from_env()` is what `realtime serve` uses."""

    redis_url: str = ""  # empty: the in-memory state store (one process)
    database_url: str = "sqlite+aiosqlite:///realtime.db"
    redis_prefix: str = "rt:"
    # an exam's commits of one Redis call beyond this many go in chunks sent back to back
    # (0: one call; the default is realtime.state.redis.COMMIT_CHUNK's)
    redis_commit_chunk: int = 1000
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    secret_key_set: bool = True  # False: REALTIME_SECRET_KEY unset, the key is this process's own
    staff_token_ttl: float = 12 * 3600
    # candidate session tokens: valid this long after the later of their issue and their
    # exam's end, and always while their session runs (0: no expiry)
    candidate_token_ttl: float = 30 * 24 * 3600
    bootstrap_staff_token: str = ""  # a fixed staff token for scripts and the demo
    # a tab may resume its locked session this long after a drop (0: strict); exams may set
    # their own (`settings.resume_grace_seconds`)
    resume_grace: float = 60.0
    reason_categories_file: str = ""  # JSON category tree (empty: the built-in, TAO's)
    reason_category_required: list[str] = field(default_factory=list)  # e.g. pause,terminate
    stale_after: float = 15.0
    # seconds a commit refused whole while its exam's Redis Cluster slot moves is sent again
    # (jittered pauses) before it fails 503 / `unavailable` (0: at once)
    commit_retry_budget: float = 1.5
    node_heartbeat_interval: float = 1.0  # each process records it is alive this often
    node_timeout: float = 6.0  # a process silent this long is dead: its sessions disconnected
    ping_interval: float = 5.0
    ping_timeout: float = 12.0
    send_queue_size: int = 1024
    send_timeout: float = 10.0  # a peer that reads nothing this long while a send waits: cut off
    sse_heartbeat: float = 15.0  # an idle event stream gets a comment this often (proxies)
    max_message_bytes: int = 16 * 1024
    ws_deflate: bool = False  # accept permessage-deflate (costs zlib state per socket)
    ws_impl: str = WS_IMPLS[0]  # uvicorn's WebSocket implementation (`realtime serve`)
    event_log_size: int = 10_000
    # Each pass walks what appeared since the last one: with 5,000 sockets every 10 s that was
    # ~90,000 objects, a ~100 ms stall; every 0.5 s it is 7-22 ms, every 0.1 s ~1.5-6 ms (five
    # times longer while candidates open in numbers: realtime/gcpolicy.py, docs/operations.md).
    gc_freeze_interval: float = 0.1  # 0: leave Python's garbage collector as it is
    gc_full_interval: float = 900.0
    allowed_origins: list[str] = field(default_factory=list)  # empty: any origin
    host: str = "127.0.0.1"
    port: int = 8000
    # identity and access
    activation_ttl: float = 168 * 3600  # an invited user's activation token
    login_max_failures: int = 5  # failed logins in a row before the login is blocked
    login_block_seconds: float = 3600.0
    require_user_group: bool = False  # new (non-admin) users need at least one group
    roles_file: str = ""  # JSON roles overriding the built-in matrix
    auth_recheck_interval: float = 3.0  # open staff sockets re-check their token this often
    cookie_secure: bool = False  # mark login cookies Secure (set it behind HTTPS)
    legacy_staff_tokens: bool = False  # accept `realtime token` signed all-powerful tokens
    password_reset_ttl: float = 3600.0  # a password-reset link (single use)
    # e-mail (SMTP): invitations and password resets; without a host the token is shown once
    smtp_host: str = ""
    smtp_port: int = 0  # 0: 465 with smtp_tls, else 587 with smtp_starttls, else 25
    smtp_starttls: bool = False  # upgrade a plain connection with STARTTLS
    smtp_tls: bool = False  # TLS from the first byte (SMTPS)
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from: str = ""
    smtp_timeout: float = 10.0
    smtp_retries: int = 5  # attempts per message before it counts as not sent
    smtp_retry_backoff: float = 2.0  # seconds before the 2nd attempt, doubling after
    public_url: str = ""  # the address staff open (links in e-mails), e.g. https://exam.example.org
    # guest accounts
    guest_pool_size: int = 100  # guest1..guestN made by `realtime guests create` / PUT pool
    trusted_proxies: list[str] = field(default_factory=list)  # CIDRs whose X-Forwarded-For counts
    # limits (docs/operations.md, "Limits"); a rate of 0 turns that limit off
    max_body_bytes: int = 64 * 1024  # a larger request body is refused (413) while it streams
    max_bulk_body_bytes: int = 4 * 1024 * 1024  # creating sessions and commands, in bulk
    candidate_message_rate: float = 10.0  # messages/s per candidate socket, sustained
    candidate_message_burst: int = 100  # ... and at once (a reopen flushes up to ~60)
    dashboard_message_rate: float = 20.0  # messages/s per dashboard socket
    dashboard_message_burst: int = 100
    handshake_rate: float = 50.0  # WebSocket handshakes/s per client address
    handshake_burst: int = 500  # a hall behind one NAT address reconnecting at once
    # An attempt in flight holds one until it turns out right, so bursts leave room for a
    # hall behind one NAT address opening or logging in at the same moment.
    access_code_rate: float = 1.0  # wrong access codes/s per client address
    # 1,000: 5,000 opens from one address at 200 in flight under load spent 100 (bench)
    access_code_burst: int = 1000
    login_rate: float = 0.5  # failed logins/s per client address (right passwords are free)
    login_burst: int = 100
    shutdown_timeout: float = 10.0  # SIGTERM: seconds for sockets to close, then for the flush
    # webhooks (docs/webhooks.md)
    webhook_timeout: float = 10.0  # seconds a receiver has to answer one attempt
    webhook_max_attempts: int = 10  # then the delivery is `failed`
    webhook_backoff: float = 10.0  # seconds before the 2nd attempt, doubled for each next one
    webhook_backoff_max: float = 3600.0  # longest wait between two attempts
    # hosts a subscription may name: names and CIDRs (empty: any); checked on the URL as typed
    webhook_allowed_hosts: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> Settings:
        defaults = cls()
        return cls(
            redis_url=os.environ.get("REALTIME_REDIS_URL", defaults.redis_url),
            database_url=os.environ.get("REALTIME_DATABASE_URL", defaults.database_url),
            redis_prefix=os.environ.get("REALTIME_REDIS_PREFIX", defaults.redis_prefix),
            redis_commit_chunk=_int("REALTIME_REDIS_COMMIT_CHUNK", defaults.redis_commit_chunk),
            secret_key=os.environ.get("REALTIME_SECRET_KEY") or defaults.secret_key,
            secret_key_set=bool(os.environ.get("REALTIME_SECRET_KEY")),
            staff_token_ttl=_float("REALTIME_STAFF_TOKEN_TTL", defaults.staff_token_ttl),
            candidate_token_ttl=_float("REALTIME_CANDIDATE_TOKEN_TTL",
                                       defaults.candidate_token_ttl),
            bootstrap_staff_token=os.environ.get("REALTIME_STAFF_TOKEN", ""),
            resume_grace=_float("REALTIME_RESUME_GRACE", defaults.resume_grace),
            reason_categories_file=os.environ.get("REALTIME_REASON_CATEGORIES_FILE", ""),
            reason_category_required=_list("REALTIME_REASON_CATEGORY_REQUIRED", []),
            stale_after=_float("REALTIME_STALE_AFTER", defaults.stale_after),
            commit_retry_budget=_float("REALTIME_COMMIT_RETRY_BUDGET",
                                       defaults.commit_retry_budget),
            node_heartbeat_interval=_float("REALTIME_NODE_HEARTBEAT_INTERVAL",
                                           defaults.node_heartbeat_interval),
            node_timeout=_float("REALTIME_NODE_TIMEOUT", defaults.node_timeout),
            ping_interval=_float("REALTIME_PING_INTERVAL", defaults.ping_interval),
            ping_timeout=_float("REALTIME_PING_TIMEOUT", defaults.ping_timeout),
            send_queue_size=_int("REALTIME_SEND_QUEUE", defaults.send_queue_size),
            send_timeout=_float("REALTIME_SEND_TIMEOUT", defaults.send_timeout),
            sse_heartbeat=_float("REALTIME_SSE_HEARTBEAT", defaults.sse_heartbeat),
            max_message_bytes=_int("REALTIME_MAX_MESSAGE_BYTES", defaults.max_message_bytes),
            ws_deflate=_bool("REALTIME_WS_DEFLATE", defaults.ws_deflate),
            ws_impl=os.environ.get("REALTIME_WS_IMPL", "").strip() or defaults.ws_impl,
            event_log_size=_int("REALTIME_EVENT_LOG_SIZE", defaults.event_log_size),
            gc_freeze_interval=_float("REALTIME_GC_FREEZE_INTERVAL", defaults.gc_freeze_interval),
            gc_full_interval=_float("REALTIME_GC_FULL_INTERVAL", defaults.gc_full_interval),
            allowed_origins=_list("REALTIME_ALLOWED_ORIGINS", []),
            host=os.environ.get("REALTIME_HOST", defaults.host),
            port=_int("REALTIME_PORT", defaults.port),
            activation_ttl=_float("REALTIME_ACTIVATION_TTL", defaults.activation_ttl),
            login_max_failures=_int("REALTIME_LOGIN_MAX_FAILURES", defaults.login_max_failures),
            login_block_seconds=_float("REALTIME_LOGIN_BLOCK_SECONDS",
                                       defaults.login_block_seconds),
            require_user_group=_bool("REALTIME_REQUIRE_USER_GROUP", defaults.require_user_group),
            roles_file=os.environ.get("REALTIME_ROLES_FILE", defaults.roles_file),
            auth_recheck_interval=_float("REALTIME_AUTH_RECHECK_INTERVAL",
                                         defaults.auth_recheck_interval),
            cookie_secure=_bool("REALTIME_COOKIE_SECURE", defaults.cookie_secure),
            legacy_staff_tokens=_bool("REALTIME_LEGACY_STAFF_TOKENS",
                                      defaults.legacy_staff_tokens),
            password_reset_ttl=_float("REALTIME_PASSWORD_RESET_TTL", defaults.password_reset_ttl),
            smtp_host=os.environ.get("REALTIME_SMTP_HOST", defaults.smtp_host),
            smtp_port=_int("REALTIME_SMTP_PORT", defaults.smtp_port),
            smtp_starttls=_bool("REALTIME_SMTP_STARTTLS", defaults.smtp_starttls),
            smtp_tls=_bool("REALTIME_SMTP_TLS", defaults.smtp_tls),
            smtp_user=os.environ.get("REALTIME_SMTP_USER", defaults.smtp_user),
            smtp_password=os.environ.get("REALTIME_SMTP_PASSWORD", defaults.smtp_password),
            smtp_from=os.environ.get("REALTIME_SMTP_FROM", defaults.smtp_from),
            smtp_timeout=_float("REALTIME_SMTP_TIMEOUT", defaults.smtp_timeout),
            smtp_retries=_int("REALTIME_SMTP_RETRIES", defaults.smtp_retries),
            smtp_retry_backoff=_float("REALTIME_SMTP_RETRY_BACKOFF", defaults.smtp_retry_backoff),
            public_url=os.environ.get("REALTIME_PUBLIC_URL", defaults.public_url).rstrip("/"),
            guest_pool_size=_int("REALTIME_GUEST_POOL_SIZE", defaults.guest_pool_size),
            trusted_proxies=_list("REALTIME_TRUSTED_PROXIES", []),
            max_body_bytes=_int("REALTIME_MAX_BODY_BYTES", defaults.max_body_bytes),
            max_bulk_body_bytes=_int("REALTIME_MAX_BULK_BODY_BYTES",
                                     defaults.max_bulk_body_bytes),
            candidate_message_rate=_float("REALTIME_CANDIDATE_MESSAGE_RATE",
                                          defaults.candidate_message_rate),
            candidate_message_burst=_int("REALTIME_CANDIDATE_MESSAGE_BURST",
                                         defaults.candidate_message_burst),
            dashboard_message_rate=_float("REALTIME_DASHBOARD_MESSAGE_RATE",
                                          defaults.dashboard_message_rate),
            dashboard_message_burst=_int("REALTIME_DASHBOARD_MESSAGE_BURST",
                                         defaults.dashboard_message_burst),
            handshake_rate=_float("REALTIME_HANDSHAKE_RATE", defaults.handshake_rate),
            handshake_burst=_int("REALTIME_HANDSHAKE_BURST", defaults.handshake_burst),
            access_code_rate=_float("REALTIME_ACCESS_CODE_RATE", defaults.access_code_rate),
            access_code_burst=_int("REALTIME_ACCESS_CODE_BURST", defaults.access_code_burst),
            login_rate=_float("REALTIME_LOGIN_RATE", defaults.login_rate),
            login_burst=_int("REALTIME_LOGIN_BURST", defaults.login_burst),
            shutdown_timeout=_float("REALTIME_SHUTDOWN_TIMEOUT", defaults.shutdown_timeout),
            webhook_timeout=_float("REALTIME_WEBHOOK_TIMEOUT", defaults.webhook_timeout),
            webhook_max_attempts=_int("REALTIME_WEBHOOK_MAX_ATTEMPTS",
                                      defaults.webhook_max_attempts),
            webhook_backoff=_float("REALTIME_WEBHOOK_BACKOFF", defaults.webhook_backoff),
            webhook_backoff_max=_float("REALTIME_WEBHOOK_BACKOFF_MAX",
                                       defaults.webhook_backoff_max),
            webhook_allowed_hosts=_list("REALTIME_WEBHOOK_ALLOWED_HOSTS",
                                        defaults.webhook_allowed_hosts),
        )

    def check(self) -> None:
        """Refuse settings that would fail silently later (raises ConfigError).

        With Redis, several processes serve one exam; each signing with a random key of its
        own would reject the others' tokens, logins and CSRF cookies at random.
        """
        if self.redis_url and not self.secret_key_set:
            raise ConfigError(
                "REALTIME_REDIS_URL is set (several processes may serve this exam) but "
                "REALTIME_SECRET_KEY is not: every process would sign tokens with a random key "
                "of its own and reject the others'. Set REALTIME_SECRET_KEY to the same long "
                "random value on every process (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`)."
            )
        if self.smtp_host and not (self.smtp_from and self.public_url):
            raise ConfigError(
                "REALTIME_SMTP_HOST is set but REALTIME_SMTP_FROM or REALTIME_PUBLIC_URL is not: "
                "e-mails need a sender, and their links the address staff open (e.g. "
                "REALTIME_PUBLIC_URL=https://exam.example.org)."
            )
        if self.ws_impl not in WS_IMPLS:
            raise ConfigError(
                f"REALTIME_WS_IMPL={self.ws_impl!r} is not a WebSocket implementation of "
                f"uvicorn's: use one of {', '.join(WS_IMPLS)} (default {WS_IMPLS[0]})"
            )
        if self.redis_commit_chunk < 0:
            raise ConfigError(
                f"REALTIME_REDIS_COMMIT_CHUNK={self.redis_commit_chunk} is negative: 0 commits "
                "a bulk command in one Redis call, N > 0 in chunks of up to N (default 1000)"
            )
        if not 0 <= self.commit_retry_budget <= 60:
            raise ConfigError(
                f"REALTIME_COMMIT_RETRY_BUDGET={self.commit_retry_budget} is not 0..60 seconds "
                "(default 1.5)"
            )
        if self.smtp_tls and self.smtp_starttls:
            raise ConfigError("REALTIME_SMTP_TLS and REALTIME_SMTP_STARTTLS exclude each other")
