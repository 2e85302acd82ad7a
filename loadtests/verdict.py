"""Did a locust run pass? Failures and command latency against limits, in one line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    line: str


def judge(stats: Any, max_failure_ratio: float, max_command_p95_ms: float) -> Verdict:
    """PASS when the share of failed requests and the 95th percentile of command latency
    (`WS-CMD`: server event time -> received by the candidate) are within their limits, and
    anything was measured at all."""
    total = stats.total
    requests, failures = total.num_requests, total.num_failures
    ratio = failures / requests if requests else 1.0
    commands = [e for (name, kind), e in stats.entries.items() if kind == "WS-CMD"]
    counted = sum(e.num_requests for e in commands)
    p95 = max((e.get_response_time_percentile(0.95) or 0.0 for e in commands), default=0.0)
    problems = []
    if not requests:
        problems.append("no requests were made")
    if ratio > max_failure_ratio:
        problems.append(f"failures {ratio:.2%} > {max_failure_ratio:.2%}")
    if counted and p95 > max_command_p95_ms:
        problems.append(f"command p95 {p95:.0f} ms > {max_command_p95_ms:.0f} ms")
    summary = (f"{requests} requests, {failures} failed ({ratio:.2%}), "
               f"{counted} commands received, command p95 {p95:.0f} ms")
    if problems:
        return Verdict(False, f"realtime load test: FAIL ({'; '.join(problems)}): {summary}")
    return Verdict(True, f"realtime load test: PASS: {summary}")
