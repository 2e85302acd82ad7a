"""The pure parts of the limits: token buckets, per-address buckets, message verdicts, and the
log that a flood of refusals cannot flood."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import pytest
from starlette.requests import HTTPConnection

from realtime.errors import RateLimited
from realtime.limits.addresses import AddressLimits, address_key
from realtime.limits.bucket import Rate, TokenBucket
from realtime.limits.messages import MessageLimiter, Verdict
from realtime.limits.refusals import Kind, Refusals


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def conn(peer: str, forwarded: str | None = None) -> HTTPConnection:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    scope: dict[str, Any] = {"type": "http", "client": (peer, 1234), "headers": headers}
    return HTTPConnection(scope)


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    """Full at first (burst), then one more token every 1/rate seconds, never over the burst."""
    bucket = TokenBucket(Rate(2.0, 3), now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == pytest.approx(0.5)
    assert bucket.take(0.5) and not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_a_rate_of_zero_is_off_and_a_limit_needs_a_burst() -> None:
    assert not Rate(0, 0).enabled
    with pytest.raises(ValueError):
        Rate(1.0, 0)


def test_given_back_attempts_do_not_count() -> None:
    """A right password gives its attempt back: an honest address is never limited."""
    clock = Clock()
    limits = AddressLimits({Kind.LOGIN: Rate(0.001, 2)}, [], Refusals(), clock)
    for _ in range(10):
        key = limits.take(Kind.LOGIN, conn("192.0.2.1"))
        limits.give_back(Kind.LOGIN, key)
    assert limits.tracked(Kind.LOGIN) == 0  # a full bucket is forgotten


def test_an_address_over_its_budget_is_refused_and_others_are_not() -> None:
    clock = Clock()
    counted: list[Kind] = []
    limits = AddressLimits({Kind.ACCESS_CODE: Rate(0.5, 2)}, [], Refusals(counted.append), clock)
    limits.take(Kind.ACCESS_CODE, conn("192.0.2.1"))
    limits.take(Kind.ACCESS_CODE, conn("192.0.2.1"))
    with pytest.raises(RateLimited) as refused:
        limits.take(Kind.ACCESS_CODE, conn("192.0.2.1"))
    assert refused.value.retry_after == pytest.approx(2.0)
    assert refused.value.status == 429
    limits.take(Kind.ACCESS_CODE, conn("192.0.2.2"))
    clock.now += 2.0
    limits.take(Kind.ACCESS_CODE, conn("192.0.2.1"))
    assert counted == [Kind.ACCESS_CODE]


def test_the_address_is_the_forwarded_one_only_behind_a_trusted_proxy() -> None:
    trusted = [ipaddress.ip_network("127.0.0.1/32")]
    limits = AddressLimits({Kind.HANDSHAKE: Rate(1, 1)}, trusted, Refusals())
    assert limits.key_of(conn("127.0.0.1", "203.0.113.9")) == "203.0.113.9"
    assert limits.key_of(conn("198.51.100.7", "203.0.113.9")) == "198.51.100.7"


def test_ipv6_clients_count_per_64() -> None:
    """One host usually holds a whole /64: rotating within it gains nothing."""
    a = address_key(ipaddress.ip_address("2001:db8:1:2::1"))
    b = address_key(ipaddress.ip_address("2001:db8:1:2:ffff::9"))
    c = address_key(ipaddress.ip_address("2001:db8:1:3::1"))
    assert a == b == "2001:db8:1:2::/64" and c != a
    assert address_key(ipaddress.ip_address("::ffff:192.0.2.1")) != ""


def test_memory_is_bounded_whatever_the_number_of_addresses() -> None:
    limits = AddressLimits({Kind.HANDSHAKE: Rate(1, 5)}, [], Refusals(), max_tracked=100)
    for i in range(1000):
        limits.take_key(Kind.HANDSHAKE, f"198.51.{i // 256}.{i % 256}")
    assert limits.tracked(Kind.HANDSHAKE) == 100


def test_a_limit_that_is_off_never_refuses() -> None:
    limits = AddressLimits({Kind.LOGIN: Rate(0, 0)}, [], Refusals())
    for _ in range(100):
        limits.take(Kind.LOGIN, conn("192.0.2.1"))


def test_a_flood_is_warned_once_then_dropped_then_closed() -> None:
    """Within the rate: handle. Over it: warn on the first drop, drop silently, and close
    once more than `burst` were dropped in a row; a handled frame starts the count again."""
    drops: list[int] = []
    limiter = MessageLimiter(Rate(1.0, 3), 0.0, lambda: drops.append(1))
    verdicts = [limiter.admit(0.0) for _ in range(7)]
    assert verdicts == [Verdict.HANDLE] * 3 + [Verdict.WARN] + [Verdict.DROP] * 2 + [Verdict.CLOSE]
    assert len(drops) == 4
    fresh = MessageLimiter(Rate(1.0, 2), 0.0)
    assert [fresh.admit(t) for t in (0.0, 0.0, 0.0, 0.0, 1.0, 1.0)] == [
        Verdict.HANDLE, Verdict.HANDLE, Verdict.WARN, Verdict.DROP, Verdict.HANDLE, Verdict.WARN]


def test_refusals_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """A flood of refusals writes one warning per kind per interval, with the count."""
    clock = Clock()
    counted: list[Kind] = []
    refusals = Refusals(counted.append, interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="realtime.limits"):
        for _ in range(1000):
            refusals.record(Kind.LOGIN, "192.0.2.1")
        refusals.record(Kind.HANDSHAKE, "192.0.2.1")
        clock.now += 10.0
        refusals.record(Kind.LOGIN, "192.0.2.3")
    assert len(counted) == 1002
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("rate limit: 1 login refused")
    assert lines[2].startswith("rate limit: 1000 login refused") and "192.0.2.3" in lines[2]
