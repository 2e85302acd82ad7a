"""The webhook dispatcher: sends due deliveries, signed, and retries them with backoff.

Every process runs one. Each round claims due deliveries in SQL with a lease (so two processes
never send the same one at the same time), POSTs them concurrently with a timeout, and records
each attempt: delivered on a 2xx answer; otherwise pending again after an exponential, jittered
delay, or failed after the last attempt. A process killed mid-round leaves its claims to run
out; they are then claimed again (at least once: receivers de-duplicate on the delivery id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from realtime.drainer import consumer_name
from realtime.webhooks.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)
from realtime.webhooks.store import Claimed, WebhookStore

log = logging.getLogger(__name__)

BATCH = 20  # deliveries claimed (and sent concurrently) per round
POLL = 2.0  # seconds between looks for due deliveries (others' drains, retries) when idle
RETENTION = 7 * 86400.0  # delivered and failed deliveries are forgotten after this long
PURGE_EVERY = 600.0
ERROR_BACKOFF_MIN, ERROR_BACKOFF_MAX = 0.5, 10.0  # SQL down
ANSWER_BYTES = 300  # of a failing answer's body kept as its error


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how far apart a delivery is tried."""

    max_attempts: int = 10
    backoff: float = 10.0  # seconds before the 2nd attempt; doubled for each next one
    backoff_max: float = 3600.0

    def delay(self, attempts: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `attempts` failed attempts: exponential, with jitter
        (between half and all of it), so failed receivers are not hit in lockstep."""
        full = min(self.backoff_max, self.backoff * 2.0 ** max(0, attempts - 1))
        return full * (0.5 + rand() / 2)


class Dispatcher:
    def __init__(
        self,
        store: WebhookStore,
        *,
        timeout: float = 10.0,
        policy: RetryPolicy | None = None,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self.owner = owner or consumer_name()
        self.clock = clock
        # Held past the longest attempt, so a live sender never loses its claim to another.
        self.lease = 2 * timeout + 5.0
        self.attempts = 0  # made by this process (counters for the metrics)
        self.delivered = 0
        self.failed_attempts = 0
        self.given_up = 0
        self.errors = 0  # failed rounds (SQL)
        self.last_error = ""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def wake(self) -> None:
        """New deliveries are due (drained events, a test ping)."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout), follow_redirects=False, trust_env=False,
                headers={"User-Agent": "realtime-webhooks/1"},
            )
            self._task = asyncio.create_task(self.run(), name="webhook-dispatcher")

    async def close(self) -> None:
        """Stop; attempts in flight are abandoned (their leases run out, they are resent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def run(self) -> None:
        delay = ERROR_BACKOFF_MIN
        last_purge = 0.0
        while True:
            try:
                if time.monotonic() - last_purge >= PURGE_EVERY:
                    last_purge = time.monotonic()
                    await self.store.purge(self.clock() - RETENTION)
                self._wake.clear()
                sent = await self.dispatch_once()
                delay = ERROR_BACKOFF_MIN
                if not sent:
                    await self._idle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("webhook dispatch failed (%s); retrying in %.1fs",
                            self.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, ERROR_BACKOFF_MAX)

    async def _idle(self) -> None:
        """Wait for a wake-up, the next known due time, or the poll interval."""
        wait = POLL
        due = await self.store.next_due()
        if due is not None:
            wait = min(POLL, max(0.05, due - self.clock()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    async def dispatch_once(self) -> int:
        """One round: claim, send concurrently, record. Returns how many were attempted."""
        claimed = await self.store.claim(self.owner, BATCH, self.lease)
        if claimed:
            await asyncio.gather(*(self._attempt(c) for c in claimed))
        return len(claimed)

    async def _attempt(self, claimed: Claimed) -> None:
        ok, status_code, error = await self.send(claimed)
        self.attempts += 1
        attempts = claimed.attempts + 1
        retry_at = None
        if not ok and attempts < self.policy.max_attempts:
            retry_at = self.clock() + self.policy.delay(attempts)
        if ok:
            self.delivered += 1
        else:
            self.failed_attempts += 1
            self.given_up += retry_at is None
            log.info("webhook delivery %s to %s failed (attempt %d): %s",
                     claimed.id, claimed.url, attempts, error)
        await self.store.finish(self.owner, claimed, ok=ok, status_code=status_code,
                                error=error, retry_at=retry_at)

    async def send(self, claimed: Claimed) -> tuple[bool, int | None, str]:
        """POST the delivery once: (delivered, HTTP status, error text)."""
        if self._client is None:
            raise RuntimeError("the dispatcher is not started")
        body = claimed.body.encode()
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: claimed.id,
            EVENT_HEADER: claimed.kind,
            SIGNATURE_HEADER: signature_header(claimed.secret, int(self.clock()), body),
        }
        try:
            async with self._client.stream(
                "POST", claimed.url, content=body, headers=headers
            ) as response:
                if 200 <= response.status_code < 300:
                    return True, response.status_code, ""
                answer = b""
                async for chunk in response.aiter_bytes():
                    answer += chunk
                    if len(answer) >= ANSWER_BYTES:
                        break
                text = answer[:ANSWER_BYTES].decode("utf-8", "replace").strip()
                error = f"HTTP {response.status_code}" + (f": {text}" if text else "")
                return False, response.status_code, error
        except httpx.TimeoutException:
            return False, None, f"timeout: no answer within {self.timeout:g} s"
        except httpx.HTTPError as exc:
            return False, None, f"{type(exc).__name__}: {exc}"[:500]
