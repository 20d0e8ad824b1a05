"""Budgets: per-sender token buckets, per-address buckets, and the server-wide work budget. Pure: the
caller passes ``now``."""

from __future__ import annotations

from collections import OrderedDict


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; one message costs one token."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def refill(self, now: float) -> float:
        """The tokens there are at ``now``."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def take(self, now: float, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens: 0.0 if allowed, otherwise the seconds to wait until they are there."""
        self.refill(now)
        cost = min(cost, self.burst)  # a request dearer than the whole burst is still possible, when full
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate

    def refund(self, tokens: float) -> None:
        """Give back tokens charged beyond what the work cost."""
        if tokens > 0:
            self.tokens = min(self.burst, self.tokens + tokens)


class RateLimiter:
    """One bucket per key (a session, an identity, an address); ``rate`` <= 0 disables limiting. Keys in
    ``exempt`` are never limited (a trusted gateway speaking for many people)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000, exempt: frozenset[str] = frozenset()) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_keys = max_keys  # made-up keys must not grow memory without bound
        self.exempt = exempt
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently used first

    def check(self, key: str, now: float, cost: float = 1.0) -> float:
        """0.0 if ``key`` may spend ``cost`` now, else the seconds until it may."""
        bucket = self.bucket(key, now)
        return 0.0 if bucket is None else bucket.take(now, cost)

    def bucket(self, key: str, now: float) -> TokenBucket | None:
        """``key``'s bucket (None: not limited). A new key beyond ``max_keys`` evicts the least recently
        used one, so keys made up in a flood push out each other, not the keys in use."""
        if self.rate <= 0 or key in self.exempt:
            return None
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)


DELIVERY = 0  # room traffic a member is owed: join backlogs, catch-ups after a reconnect, gap fills
BROWSE = 1  # what a member asks to look at: history pages, who, rooms, stats


class WorkBudget:
    """Work the whole server spends on requests per second, whoever asks: a crowd of sessions, each within
    its own bucket, cannot together exceed it. One unit is one publication (a history row, a reply).

    Two priorities share the bucket: delivery may spend all of it, browsing only what lies above
    ``reserve`` (a fraction of the burst), so browsers never take what delivery needs. ``rate`` <= 0
    disables the budget."""

    def __init__(self, rate: float, burst: float, now: float, reserve: float = 0.5) -> None:
        self.rate = rate
        self.bucket = TokenBucket(rate, max(burst, 1.0), now)
        self.reserve = reserve * self.bucket.burst
        self.charged = 0.0  # what the last successful ``take`` spent (a dear request is capped)

    def take(self, now: float, cost: float, priority: int) -> float:
        """Spend ``cost`` units at ``priority``: 0.0 if allowed, else the seconds until they would be."""
        if self.rate <= 0:
            self.charged = 0.0
            return 0.0
        floor = self.reserve if priority == BROWSE else 0.0
        cost = min(cost, self.bucket.burst - floor)  # the dearest request is still possible when full
        tokens = self.bucket.refill(now)
        if tokens - cost >= floor:
            self.bucket.tokens -= cost
            self.charged = cost
            return 0.0
        return (floor + cost - tokens) / self.rate

    def refund(self, units: float) -> None:
        """Give back units charged beyond what a request cost (a history reply shorter than asked for)."""
        if self.rate > 0 and units > 0:
            self.bucket.tokens = min(self.bucket.burst, self.bucket.tokens + units)

    def available(self, now: float) -> float:
        return float("inf") if self.rate <= 0 else self.bucket.refill(now)
