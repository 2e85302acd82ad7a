"""`realtime serve | demo | token`: run the server and the chores around it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from typing import Any

from realtime.config import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from realtime.app import create_app

    settings = Settings.from_env()
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    if not settings.bootstrap_staff_token:
        # One token for this run, so the operator can use the API and the dashboard at once.
        settings.bootstrap_staff_token = os.environ.get("REALTIME_STAFF_TOKEN") or "dev-" + (
            settings.secret_key[:16]
        )
    base = f"http://{host}:{port}"
    backend = settings.redis_url or "memory"
    print(f"realtime: state={backend} database={settings.database_url}", flush=True)
    print(f"  dashboard  {base}/dashboard/", flush=True)
    print(f"  candidate  {base}/candidate/", flush=True)
    print(f"  API        {base}/api/v1/openapi.json", flush=True)
    print(f"  staff token: {settings.bootstrap_staff_token}", flush=True)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        workers=None,
        log_level=args.log_level,
        ws_max_size=1024 * 1024,
        ws_ping_interval=None,
        lifespan="on",
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


def _demo(args: argparse.Namespace) -> int:
    """Create a demo exam with candidates on a running server and print how to open them."""
    base = args.url.rstrip("/")
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
    print(f"dashboard: {base}/dashboard/?exam={exam['id']}")
    for s in created["sessions"][:10]:
        print(f"  {s['candidate_name']:<14} code {s['access_code']}  "
              f"{base}/candidate/?code={s['access_code']}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from realtime.auth.tokens import TokenAuthenticator

    settings = Settings.from_env()
    if "REALTIME_SECRET_KEY" not in os.environ:
        print("set REALTIME_SECRET_KEY to the server's secret first", file=sys.stderr)
        return 2
    auth = TokenAuthenticator(settings.secret_key, settings.staff_token_ttl)
    print(auth.issue_staff_token(args.name))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="realtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (embedded defaults: memory + SQLite)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)
    demo = sub.add_parser("demo", help="create a demo exam with candidates on a running server")
    demo.add_argument("--url", default="http://127.0.0.1:8000")
    demo.add_argument("--token", default=os.environ.get("REALTIME_STAFF_TOKEN", ""))
    demo.add_argument("--candidates", type=int, default=12)
    demo.add_argument("--lock", action="store_true", help="high-stakes: lock every session")
    demo.add_argument("--authorize", action="store_true", help="candidates wait for a proctor")
    demo.set_defaults(func=_demo)
    token = sub.add_parser("token", help="print a staff token signed with REALTIME_SECRET_KEY")
    token.add_argument("name")
    token.set_defaults(func=_token)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
