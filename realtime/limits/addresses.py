"""Attempts per client address: WebSocket handshakes, access-code opens and logins.

The address is the one `realtime.guests.network` believes (X-Forwarded-For only from
REALTIME_TRUSTED_PROXIES); IPv6 clients count per /64, since one host usually holds a whole
/64. The buckets live in this process only, and at most `max_tracked` addresses per kind are
remembered (the least recently seen are forgotten first), so memory stays bounded whatever
the number of addresses.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Mapping, Sequence

from starlette.requests import HTTPConnection

from realtime.errors import RateLimited
from realtime.guests.network import Address, Network, request_address
from realtime.limits.bucket import Rate, TokenBucket
from realtime.limits.refusals import Kind, Refusals


def address_key(address: Address | None) -> str:
    if address is None:
        return ""
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AddressLimits:
    def __init__(
        self,
        rates: Mapping[Kind, Rate],
        trusted_proxies: Sequence[Network],
        refusals: Refusals,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = 50_000,
    ) -> None:
        self._rates = {kind: rate for kind, rate in rates.items() if rate.enabled}
        self._buckets: dict[Kind, dict[str, TokenBucket]] = {kind: {} for kind in self._rates}
        self._trusted = trusted_proxies
        self._refusals = refusals
        self._clock = clock
        self._max_tracked = max_tracked

    def key_of(self, conn: HTTPConnection) -> str:
        return address_key(request_address(conn, self._trusted))

    def take(self, kind: Kind, conn: HTTPConnection) -> str:
        """Spend one attempt of the caller's address; returns its key (for `give_back`).

        Raises RateLimited (with the seconds until the next attempt) when none is left."""
        key = self.key_of(conn)
        self.take_key(kind, key)
        return key

    def take_key(self, kind: Kind, key: str) -> None:
        buckets = self._buckets.get(kind)
        if buckets is None:
            return  # this limit is off
        now = self._clock()
        bucket = buckets.pop(key, None)  # re-inserted last: the dict is oldest-seen first
        if bucket is None:
            bucket = TokenBucket(self._rates[kind], now)
            while len(buckets) >= self._max_tracked:
                del buckets[next(iter(buckets))]
        buckets[key] = bucket
        if bucket.take(now):
            return
        retry = bucket.retry_after()
        self._refusals.record(kind, key)
        raise RateLimited(
            f"too many attempts from your address; retry in {math.ceil(retry)} s",
            retry_after=retry,
        )

    def give_back(self, kind: Kind, key: str) -> None:
        """The attempt turned out legitimate (right password, valid code): it costs nothing."""
        bucket = self._buckets.get(kind, {}).get(key)
        if bucket is None:
            return
        now = self._clock()
        bucket.give_back(now)
        if bucket.full(now):
            del self._buckets[kind][key]  # a full bucket is the same as none

    def tracked(self, kind: Kind) -> int:
        return len(self._buckets.get(kind, {}))
