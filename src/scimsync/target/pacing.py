"""Client-side pacing: a token bucket for requests per second, and retry delays."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

Sleep = Callable[[float], Awaitable[object]]
MonotonicClock = Callable[[], float]  # seconds, as time.monotonic


class TokenBucket:
    """At most `rate` requests a second: one token every 1/rate seconds, a bucket of one.

    Each caller reserves its slot before sleeping, so concurrent callers never share a
    slot and the bound holds however many tasks wait.
    """

    def __init__(
        self, rate: float, *, clock: MonotonicClock = time.monotonic, sleep: Sleep
    ) -> None:
        self.interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next_free = float("-inf")

    async def acquire(self) -> None:
        now = self._clock()
        slot = max(self._next_free, now)
        self._next_free = slot + self.interval
        if slot > now:
            await self._sleep(slot - now)


def request_backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds before a request's next attempt (not a record's: see scimsync.retry).

    Exponential backoff with full jitter: uniform in [base, base * 2**attempt], capped."""
    ceiling = min(cap, base * 2**attempt)
    return random.uniform(min(base, ceiling), ceiling)


def retry_after(header: str | None, *, now: Callable[[], datetime] | None = None) -> float | None:
    """Seconds to wait per Retry-After: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if header is None:
        return None
    text = header.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now() if now else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())
