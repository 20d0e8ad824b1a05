"""Per-sender token buckets. Pure: the caller passes ``now``."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; one message costs one token."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens: 0.0 if allowed, otherwise the seconds to wait until they are there."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        cost = min(cost, self.burst)  # a request dearer than the whole burst is still possible, when full
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


class RateLimiter:
    """One bucket per key (a session); ``rate`` <= 0 disables limiting."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_keys = max_keys  # made-up keys must not grow memory without bound
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, key: str, now: float, cost: float = 1.0) -> float:
        """0.0 if ``key`` may spend ``cost`` now, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                del self._buckets[next(iter(self._buckets))]  # the oldest key
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now, cost)

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)
