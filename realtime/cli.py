"""`realtime serve | demo | bench | create-admin | roles | guests …`: the server and its chores."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import urllib.request
from typing import Any

from realtime import devtoken
from realtime.config import ConfigError, Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from realtime.app import create_app

    settings = Settings.from_env()
    try:
        settings.check()
    except ConfigError as exc:
        print(f"realtime: {exc}", file=sys.stderr)
        return 2
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    kept_in = None
    if args.dev and not settings.bootstrap_staff_token:
        # Development only: an all-powerful token, kept in a file so it survives restarts,
        # printed below so a newcomer can use the API and the dashboard at once. Production
        # logs staff in with `realtime create-admin` and /api/v1/auth/login instead.
        kept_in = devtoken.token_path(settings.database_url)
        settings.bootstrap_staff_token = devtoken.load_or_create(kept_in)
    base = _base_url(host, port)
    backend = settings.redis_url or "memory"
    token = settings.bootstrap_staff_token
    print(f"realtime: state={backend} database={settings.database_url}", flush=True)
    print(f"  dashboard  {base}/dashboard/", flush=True)
    print(f"  candidate  {base}/candidate/", flush=True)
    print(f"  API        {base}/api/v1/openapi.json", flush=True)
    if token:
        origin = f" (kept in {kept_in}; delete it for a new one)" if kept_in else ""
        print(f"  staff token: {token}{origin}", flush=True)
        print(f"  sign in to the dashboard: {base}/dashboard/#token={token}", flush=True)
    if args.dev:
        print(f"  try: REALTIME_STAFF_TOKEN={token} realtime demo --url {base}", flush=True)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        workers=None,
        log_level=args.log_level,
        # Chosen, not left to uvicorn's "auto" (which meant the legacy implementation before
        # uvicorn 0.50): websockets-sansio costs 16-20 % less CPU per frame of a fan-out than
        # wsproto or legacy websockets, and legacy websockets holds ~27 KiB per idle socket
        # (docs/performance.md, "the WebSocket implementation under the fan-out").
        # REALTIME_WS_IMPL picks another.
        ws=settings.ws_impl,
        ws_max_size=1024 * 1024,
        ws_ping_interval=None,
        # Off by default (REALTIME_WS_DEFLATE): our frames are small msgpack/JSON that barely
        # compress, and every socket that negotiates permessage-deflate keeps zlib state of
        # its own (see docs/performance.md for the memory per connection with and without).
        ws_per_message_deflate=settings.ws_deflate,
        lifespan="on",
        # The app alone decides which forwarded headers to believe (REALTIME_TRUSTED_PROXIES,
        # realtime.proxies); uvicorn's own handling would trust 127.0.0.1 by default.
        proxy_headers=False,
        # SIGTERM: sockets get this long to close (then their tasks are cancelled), and the
        # lifespan gets as long again to flush (realtime.app._shut_down)
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
    )
    return 0


def _api(base: str, token: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _base_url(host: str, port: int) -> str:
    """Where a local client reaches a server listening on host:port."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def _default_url() -> str:
    settings = Settings.from_env()
    return _base_url(settings.host, settings.port)


def _api_failure(exc: Exception, base: str) -> str:
    """One line that says what went wrong with a call to the server, for the terminal."""
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        detail = exc.read().decode(errors="replace")
        try:
            error = json.loads(detail)["error"]
            detail = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            pass
        if exc.code == 401:
            return (f"HTTP 401 {detail}: the server did not accept the staff token; pass the one "
                    "`realtime serve --dev` printed as --token or REALTIME_STAFF_TOKEN")
        return f"HTTP {exc.code} {detail}"
    if isinstance(exc, urllib.error.URLError):
        return (f"cannot reach {base}: {exc.reason}; is the server running there? "
                "(--url, or REALTIME_HOST / REALTIME_PORT)")
    return f"cannot reach {base}: {exc}"


def _demo(args: argparse.Namespace) -> int:
    """Create a demo exam with candidates on a running server and print how to open them."""
    import urllib.error

    base = (args.url or _default_url()).rstrip("/")
    if not args.token:
        print("realtime demo: no staff token: pass --token or set REALTIME_STAFF_TOKEN to the "
              "token `realtime serve --dev` printed", file=sys.stderr)
        return 2
    try:
        return _make_demo(args, base)
    except (urllib.error.URLError, OSError) as exc:
        print(f"realtime demo: {_api_failure(exc, base)}", file=sys.stderr)
        return 1


def _make_demo(args: argparse.Namespace, base: str) -> int:
    exam = _api(
        base,
        args.token,
        "POST",
        "/api/v1/exams",
        {
            "title": "Demo exam",
            "duration_minutes": 90,
            "groups": ["demo"],
            "settings": {"lock_sessions": args.lock, "requires_authorization": args.authorize},
        },
    )
    candidates = [
        {"candidate_id": f"c{i:03d}", "name": f"Candidate {i}", "group": "hall-" + "AB"[i % 2]}
        for i in range(1, args.candidates + 1)
    ]
    created = _api(base, args.token, "POST", f"/api/v1/exams/{exam['id']}/sessions",
                   {"candidates": candidates})
    print(f"exam {exam['id']}: {len(created['sessions'])} sessions")
    print(f"dashboard: {base}/dashboard/?exam={exam['id']}#token={args.token}")
    for s in created["sessions"]:
        print(f"  {s['candidate_name']:<14} code {s['access_code']}  "
              f"{base}/candidate/?code={s['access_code']}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from realtime.auth.tokens import TokenAuthenticator

    settings = Settings.from_env()
    if "REALTIME_SECRET_KEY" not in os.environ:
        print("set REALTIME_SECRET_KEY to the server's secret first", file=sys.stderr)
        return 2
    if not settings.legacy_staff_tokens:
        print("note: the server accepts these tokens only with REALTIME_LEGACY_STAFF_TOKENS=1;"
              " staff log in at POST /api/v1/auth/login", file=sys.stderr)
    auth = TokenAuthenticator(settings.secret_key, settings.staff_token_ttl)
    print(auth.issue_staff_token(args.name))
    return 0


def _create_admin(args: argparse.Namespace) -> int:
    """Create an active admin in the configured database (the first one on a fresh install)."""
    import asyncio
    import getpass

    from realtime.db import migrate
    from realtime.db.database import Database
    from realtime.errors import RealtimeError
    from realtime.identity.audit import Ctx
    from realtime.identity.setup import build_identity

    settings = Settings.from_env()
    password = args.password or os.environ.get("REALTIME_ADMIN_PASSWORD", "")
    if not password:
        password = getpass.getpass("password for the new admin: ")
        if password != getpass.getpass("again: "):
            print("the passwords differ", file=sys.stderr)
            return 2

    async def run() -> str:
        db = await Database.connect(settings.database_url)
        try:
            await migrate.upgrade(db)
            identity = build_identity(settings, db)
            fields = {"full_name": args.name, "email": args.email, "roles": ["admin"]}
            if args.login:
                fields["login"] = args.login
            user, _ = await identity.service.create_user(Ctx("cli"), fields, password)
            return str(user["id"])
        finally:
            await db.close()

    try:
        user_id = asyncio.run(run())
    except RealtimeError as exc:
        print(f"realtime: {exc.message}", file=sys.stderr)
        return 1
    print(f"created admin {args.email} (id {user_id})")
    return 0


def _roles(args: argparse.Namespace) -> int:
    from realtime.identity.roles import RoleSet

    roles = RoleSet.load(args.file) if args.file else RoleSet.default()
    if args.markdown:
        print(roles.markdown(), end="")
    else:
        print(json.dumps([r.to_dict() for r in roles.roles.values()], indent=2))
    return 0


def _guests(args: argparse.Namespace) -> int:
    """Guest accounts, through a running server's REST API (so its live state stays right)."""
    import urllib.error

    base, token = (args.url or _default_url()).rstrip("/"), args.token
    try:
        if args.guests_command in ("create", "resize"):
            size = args.count if args.count is not None else Settings.from_env().guest_pool_size
            out = _api(base, token, "PUT", "/api/v1/guests/pool",
                       {"size": size, "shrink": args.guests_command == "resize"})
            print(f"guest pool: {out['size']} accounts ({out['free']} free, {out['reserved']} "
                  f"reserved); created {out['created']}, retired {out['retired']}, "
                  f"revived {out['revived']}")
        elif args.guests_command == "status":
            out = _api(base, token, "GET", "/api/v1/guests/status")
            print(f"guest pool: {out['size']} accounts, {out['free']} free, "
                  f"{out['reserved']} reserved, {out['retired']} retired")
        elif args.guests_command == "list":
            query = f"?status={args.status}" if args.status else ""
            out = _api(base, token, "GET", f"/api/v1/guests{query}")
            for a in out["accounts"]:
                who = " ".join(x for x in (a["title"], a["first_name"], a["surname"]) if x)
                extra = f"  exam {a['exam_id']}  {who}  {a['student_number'] or ''}" if (
                    a["status"] == "reserved") else ""
                print(f"{a['login']:<10} {a['status']:<9}{extra}".rstrip())
        elif args.guests_command == "sessions":
            out = _api(base, token, "GET", f"/api/v1/exams/{args.exam}/guest-sessions")
            if out["warning"]:
                print(f"warning: {out['warning']}")
            for s in out["sessions"]:
                g = s["guest"] or {}
                print(f"{s['session_id']}  {s['account']:<10} {s['status']:<10} "
                      f"{g.get('title', '')} {g.get('first_name', '')} {g.get('surname', '')} "
                      f"{g.get('student_number', '')} {g.get('email', '')}".rstrip())
        elif args.guests_command == "reassign":
            body = {"candidate_id": args.candidate}
            if args.name:
                body["candidate_name"] = args.name
            if args.group is not None:
                body["group"] = args.group
            out = _api(base, token, "POST",
                       f"/api/v1/exams/{args.exam}/guest-sessions/{args.session}/reassign", body)
            print(f"session {out['session_id']}: {out['guest_account']} -> {out['candidate_id']}"
                  f" ({out['events_moved']} history rows, {out['irregularities']} "
                  f"irregularities); account released: {out['account_released']}")
        elif args.guests_command == "release":
            out = _api(base, token, "POST", f"/api/v1/guests/{args.login}/release")
            print(f"{out['login']} is {out['status']}")
    except (urllib.error.URLError, OSError) as exc:
        print(f"realtime: {_api_failure(exc, base)}", file=sys.stderr)
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """Bring the SQL database to the newest schema (the server also does this at start)."""
    import asyncio

    from realtime.db import migrate
    from realtime.db.database import Database

    settings = Settings.from_env()

    async def run() -> str | None:
        db = await Database.connect(settings.database_url)
        try:
            await migrate.upgrade(db, args.revision)
            return await migrate.current_revision(db)
        finally:
            await db.close()

    print(f"database at revision {asyncio.run(run())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list[:1] == ["bench"]:  # every option after it belongs to the harness
        from loadtests.bench import main as bench_main

        return bench_main(args_list[1:])
    parser = argparse.ArgumentParser(prog="realtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "bench", help="run the benchmark (see docs/performance.md and `realtime bench --help`)"
    )
    migrate_cmd = sub.add_parser("migrate", help="migrate the SQL database to the newest schema")
    migrate_cmd.add_argument("--revision", default="head")
    migrate_cmd.set_defaults(func=_migrate)
    serve = sub.add_parser("serve", help="run the server (embedded defaults: memory + SQLite)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--dev", action="store_true", help="print an all-powerful staff token for this run"
    )
    serve.set_defaults(func=_serve)
    demo = sub.add_parser("demo", help="create a demo exam with candidates on a running server")
    demo.add_argument("--url", help="the server (default http://REALTIME_HOST:REALTIME_PORT, "
                      "127.0.0.1:8000)")
    demo.add_argument("--token", default=os.environ.get("REALTIME_STAFF_TOKEN", ""))
    demo.add_argument("--candidates", type=int, default=12)
    demo.add_argument("--lock", action="store_true", help="high-stakes: lock every session")
    demo.add_argument("--authorize", action="store_true", help="candidates wait for a proctor")
    demo.set_defaults(func=_demo)
    token = sub.add_parser("token", help="print a staff token signed with REALTIME_SECRET_KEY")
    token.add_argument("name")
    token.set_defaults(func=_token)
    admin = sub.add_parser("create-admin", help="create an active admin (first install)")
    admin.add_argument("--email", required=True)
    admin.add_argument("--name", required=True, help="full name")
    admin.add_argument("--login", help="optional login name")
    admin.add_argument("--password", help="prompted when omitted (or REALTIME_ADMIN_PASSWORD)")
    admin.set_defaults(func=_create_admin)
    roles = sub.add_parser("roles", help="print the roles and their permissions")
    roles.add_argument("--markdown", action="store_true", help="as the Markdown table of the docs")
    roles.add_argument("--file", help="a roles file (default: the built-in roles)")
    roles.set_defaults(func=_roles)
    guests = sub.add_parser("guests", help="guest accounts (through a running server)")
    guests.add_argument("--url", help="the server (default http://REALTIME_HOST:REALTIME_PORT)")
    guests.add_argument("--token", default=os.environ.get("REALTIME_STAFF_TOKEN", ""),
                        help="a staff token (default REALTIME_STAFF_TOKEN)")
    gsub = guests.add_subparsers(dest="guests_command", required=True)
    for name, text in (("create", "create guest1..N (never removes any)"),
                       ("resize", "make the pool exactly N (retires free accounts above N)")):
        cmd = gsub.add_parser(name, help=text)
        cmd.add_argument("--count", type=int, help="N (default REALTIME_GUEST_POOL_SIZE, 100)")
    gsub.add_parser("status", help="how many accounts are free and reserved")
    listing = gsub.add_parser("list", help="the accounts and who holds them")
    listing.add_argument("--status", choices=["free", "reserved", "retired"])
    sessions = gsub.add_parser("sessions", help="an exam's sessions taken with guest accounts")
    sessions.add_argument("--exam", required=True)
    reassign = gsub.add_parser("reassign", help="give a guest session to the real candidate")
    reassign.add_argument("--exam", required=True)
    reassign.add_argument("--session", required=True)
    reassign.add_argument("--candidate", required=True, help="the real candidate's id")
    reassign.add_argument("--name", help="the candidate's name (default: from the user)")
    reassign.add_argument("--group", help="the candidate's group (default: from the user)")
    release = gsub.add_parser("release", help="free a reserved account that holds no session")
    release.add_argument("login")
    guests.set_defaults(func=_guests)
    args = parser.parse_args(args_list)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
