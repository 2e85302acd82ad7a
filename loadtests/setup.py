"""Create the exam halls of a load test through the REST API and write them as a JSON plan.

    python -m loadtests.setup --host http://127.0.0.1:8000 --halls 3 --hall-size 300 \
        --out bench-results/plan.json

Each hall is one exam (group `hall-<k>`) with `hall-size` sessions. The plan lists every
session's id and access code; the locust users read it with `--plan`. The staff token is not
written to the plan: it comes from `--staff-token` or $REALTIME_STAFF_TOKEN.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from loadtests.common import split_hosts, staff_token

CHUNK = 5000  # sessions per POST (the API takes at most 10,000)


def create_plan(
    host: str,
    token: str,
    halls: int = 3,
    hall_size: int = 300,
    *,
    prefix: str | None = None,
    lock: bool = False,
    authorize: bool = False,
    duration_minutes: int = 180,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Create `halls` exams of `hall_size` sessions on `host`; return the plan."""
    prefix = prefix or f"lt{uuid.uuid4().hex[:6]}"
    plan: dict[str, Any] = {"created_at": time.time(), "host": host, "halls": []}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=host, headers=headers, timeout=timeout) as http:
        for k in range(1, halls + 1):
            exam_id = f"{prefix}-hall{k}"
            group = f"hall-{k}"
            response = http.post(
                "/api/v1/exams",
                json={
                    "id": exam_id,
                    "title": f"Load test {prefix} hall {k}",
                    "groups": [group],
                    "duration_minutes": duration_minutes,
                    "settings": {"lock_sessions": lock, "requires_authorization": authorize},
                },
            )
            _check(response, 201)
            sessions: list[dict[str, str]] = []
            for start in range(0, hall_size, CHUNK):
                candidates = [
                    {"candidate_id": f"{group}-c{i:05d}", "name": f"Candidate {k}.{i}",
                     "group": group}
                    for i in range(start, min(hall_size, start + CHUNK))
                ]
                response = http.post(
                    f"/api/v1/exams/{exam_id}/sessions", json={"candidates": candidates}
                )
                _check(response, 201)
                sessions += [
                    {"id": s["id"], "access_code": s["access_code"]}
                    for s in response.json()["sessions"]
                ]
            plan["halls"].append({"exam_id": exam_id, "group": group, "sessions": sessions})
    return plan


def close_exams(host: str, token: str, exam_ids: list[str], timeout: float = 120.0) -> list[str]:
    """End the exams a load test created: archive (DELETE) them where the server can, else
    terminate every session and end the exam's window now, so nobody can open them and they
    show as over. Returns a line per exam saying what was done."""
    done: list[str] = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=host, headers=headers, timeout=timeout) as http:
        for exam_id in exam_ids:
            try:
                deleted = http.delete(f"/api/v1/exams/{exam_id}")
                if deleted.status_code in (200, 204):
                    done.append(f"exam {exam_id}: archived")
                    continue
                terminated = http.post(f"/api/v1/exams/{exam_id}/commands", json={
                    "action": "terminate", "target": "all", "reason": "load test over"})
                _check(terminated, 200)
                _check(http.patch(f"/api/v1/exams/{exam_id}", json={"ends_at": time.time()}), 200)
                count = len(terminated.json()["applied"])
                done.append(f"exam {exam_id}: {count} sessions terminated, window closed")
            except (httpx.HTTPError, RuntimeError) as exc:
                done.append(f"exam {exam_id}: not cleaned up ({exc})")
    return done


def _check(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: "
            f"{response.status_code} {response.text[:500]}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.setup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="http://127.0.0.1:8000",
                        help="server URL (with several, comma separated, the first is used: "
                        "the servers must share a Redis state store)")
    parser.add_argument("--staff-token", default=None)
    parser.add_argument("--halls", type=int, default=3)
    parser.add_argument("--hall-size", type=int, default=300)
    parser.add_argument("--lock", action="store_true", help="exams lock their sessions")
    parser.add_argument("--authorize", action="store_true",
                        help="candidates wait for a proctor to authorize them")
    parser.add_argument("--prefix", default=None, help="exam id prefix (default: random)")
    parser.add_argument("--out", default="bench-results/plan.json")
    args = parser.parse_args(argv)
    host = split_hosts(args.host)[0]
    started = time.perf_counter()
    plan = create_plan(
        host, staff_token(args.staff_token), args.halls, args.hall_size,
        prefix=args.prefix, lock=args.lock, authorize=args.authorize,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plan, indent=1))
    total = sum(len(h["sessions"]) for h in plan["halls"])
    print(f"{len(plan['halls'])} halls, {total} sessions in "
          f"{time.perf_counter() - started:.1f}s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
