"""The token bucket behind every rate limit (pure: the caller passes the time)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """`per_second` sustained and `burst` at once; a rate of 0 (or less) means no limit."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if self.enabled and self.burst < 1:
            raise ValueError(f"a rate limit needs a burst of at least 1, not {self.burst}")

    @property
    def enabled(self) -> bool:
        return self.per_second > 0


class TokenBucket:
    """Holds up to `burst` tokens and gains `per_second` of them each second; every allowed
    step spends one. Starts full, so a client that was quiet may burst at once."""

    __slots__ = ("burst", "per_second", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.per_second = rate.per_second
        self.burst = float(rate.burst)
        self.tokens = self.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_second)
            self.stamp = now

    def take(self, now: float) -> bool:
        """Spend a token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def give_back(self, now: float) -> None:
        """Return a token spent on something that turned out not to count (a right password)."""
        self._refill(now)
        self.tokens = min(self.burst, self.tokens + 1.0)

    def retry_after(self) -> float:
        """Seconds until the next token (0 if one is there), as of the last take."""
        return max(0.0, (1.0 - self.tokens) / self.per_second)

    def full(self, now: float) -> bool:
        """Whether it would be full by now: then it is no different from a new one."""
        return self.tokens + (now - self.stamp) * self.per_second >= self.burst
