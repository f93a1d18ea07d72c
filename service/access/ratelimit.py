"""Token-bucket rate limits, one bucket per (key, tier)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from ..config import RateLimit


class RateLimiter:
    """Buckets for one tier's limit. `acquire` answers 0 (go) or the seconds to wait."""

    def __init__(
        self,
        limit: RateLimit,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = 100_000,
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)
        self._lock = threading.Lock()
        self._max_buckets = max_buckets

    def acquire(self, key: str, cost: float = 1.0) -> float:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.limit.burst, now))
            tokens = min(self.limit.burst, tokens + (now - last) * self.limit.rate)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self._max_buckets:
                # Full buckets carry no state worth keeping; dropping them bounds memory.
                full = [k for k, (t, _) in self._buckets.items() if t >= self.limit.burst]
                for k in full:
                    del self._buckets[k]
            return (cost - tokens) / self.limit.rate

    @staticmethod
    def retry_after_header(wait: float) -> str:
        """Retry-After is whole seconds; round up so a client that obeys it gets through."""
        return str(max(1, math.ceil(wait)))
