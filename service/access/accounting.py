"""Accounting: what an account may do (rate limit, quota) and what it did (usage), per tier.

`admit` runs before a request is served, `record` after it has been answered. State lives in
Redis when `AIM_REDIS_URL` is set (shared by every replica), else in this process, with usage
persisted under `AIM_STATE_DIR`.

When Redis does not answer, each kind of state does what costs least to be wrong about
(every failure counts in `aim_shared_state_errors_total{kind}`):
- rate limits fall back to this replica's own bucket: the limit holds per replica, so the
  account gets at most replicas x its limit, and nobody is refused for Redis' sake;
- quotas fail closed: 503 `quota_unavailable` (Retry-After: 1) for tiers that have a quota,
  since serving unmetered work past a quota is what quotas exist to prevent
  (`AIM_QUOTA_FAIL_OPEN=true` serves instead, uncounted against the quota while it lasts);
- usage stays in the replica's buffer and is flushed when Redis answers again; only what is
  still unflushed when the replica stops is lost, and the log says how much.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..config import TierConfig
from ..errors import QuotaExceeded, QuotaUnavailable, RateLimited, Unavailable
from ..settings import Settings
from .quotas import LocalQuotaCounter, Quota
from .ratelimit import RateLimiter
from .sharedstate import RedisState, StateDown
from .usage import (
    Counts,
    Key,
    MemoryUsage,
    SqliteUsage,
    UsageBuffer,
    UsageStore,
    select,
    summarise,
)

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0


class Accounting:
    """Rate limits, quotas and usage of every account, for one app."""

    def __init__(
        self,
        settings: Settings,
        tiers: Iterable[TierConfig],
        registry: CollectorRegistry | None = None,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self.quotas: dict[str, Quota] = {t.name: t.quota for t in tiers if t.quota is not None}
        self.quota_fail_open = settings.quota_fail_open
        self.flush_seconds = flush_seconds
        url = settings.redis_url.get_secret_value() if settings.redis_url else None
        self.redis = RedisState(url, registry) if url else None
        self.store: UsageStore | None = None
        if self.redis is None:
            self.store = SqliteUsage(settings.state_dir) if settings.state_dir else MemoryUsage()
        self.buffer = UsageBuffer()
        self.local_quota = LocalQuotaCounter(seed=self._units_since)
        self._flusher: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self.refused = Counter(
            "aim_quota_refusals",
            "Requests refused because the account's quota at the tier is used up",
            ["tier"],
            registry=registry,
        )
        self.unflushed = Gauge(
            "aim_usage_unflushed_rows",
            "Usage rows waiting for the store",
            registry=registry,
            multiprocess_mode="livesum",
        )

    # Before serving ---------------------------------------------------------------------------

    async def admit(self, account: str, tier: str, limiter: RateLimiter | None) -> None:
        """Refuse (429, or 503 when the quota state is unreachable) or let the request in."""
        quota = self.quotas.get(tier)
        if quota is not None:
            await self._check_quota(account, tier, quota)
        if limiter is not None:
            await self._take(account, tier, limiter)

    async def _take(self, account: str, tier: str, limiter: RateLimiter) -> None:
        wait: float | None = None
        if self.redis is not None:
            with contextlib.suppress(StateDown):  # fall back to this replica's own bucket
                wait = await self.redis.take(
                    f"{tier}:{account}", limiter.limit.rate, limiter.limit.burst
                )
        if wait is None:
            wait = limiter.acquire(account)
        if wait > 0:
            raise RateLimited(
                f"rate limit of tier {tier!r} exceeded; retry in {wait:.2f}s",
                headers={"Retry-After": RateLimiter.retry_after_header(wait)},
            )

    async def _check_quota(self, account: str, tier: str, quota: Quota) -> None:
        now = time.time()
        start, end = quota.window(now)
        if self.redis is None:
            used = self.local_quota.used(account, tier, start)
        else:
            try:
                used = await self.redis.used(account, tier, start)
            except StateDown:
                if self.quota_fail_open:
                    return
                raise QuotaUnavailable(
                    f"the quota of tier {tier!r} cannot be checked now (shared state "
                    "unreachable); retry shortly",
                    headers={"Retry-After": "1"},
                ) from None
        if used >= quota.limit:
            self.refused.labels(tier).inc()
            resets = datetime.fromtimestamp(end, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise QuotaExceeded(
                f"quota of tier {tier!r} ({quota}) used up for account {account!r}: "
                f"{used} used; it resets at {resets}",
                headers={"Retry-After": str(max(1, math.ceil(end - now)))},
            )

    # After serving ----------------------------------------------------------------------------

    def record(
        self, account: str, tier: str, status: int, items: int, tokens: int, units: int
    ) -> None:
        """Count one answered request (never raises, never waits: it runs after the answer)."""
        now = time.time()
        ok = 200 <= status < 300
        self.buffer.add(account, tier, ok, items, tokens, units, now)
        quota = self.quotas.get(tier)
        if not ok or quota is None or units <= 0:
            return
        start, end = quota.window(now)
        if self.redis is None:
            self.local_quota.add(account, tier, start, units)
            return
        task = asyncio.get_running_loop().create_task(
            self._add_shared(account, tier, start, end, units)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _add_shared(self, account: str, tier: str, start: int, end: int, units: int) -> None:
        assert self.redis is not None
        with contextlib.suppress(StateDown):  # counted in the errors metric; usage still flushes
            await self.redis.add(account, tier, start, end, units)

    def _units_since(self, account: str, tier: str, start: int) -> int:
        """Quota units already used in a window: stored, plus still in the buffer."""
        pending = sum(
            c[4]
            for (m, a, t), c in self.buffer.rows().items()
            if (a, t) == (account, tier) and m >= start
        )
        stored = self.store.units_since(account, tier, start) if self.store is not None else 0
        return stored + pending

    # Usage ------------------------------------------------------------------------------------

    async def usage(self, since: float | None, until: float | None) -> list[dict[str, object]]:
        """Per account and tier, stored and not yet flushed (this replica's) usage together."""
        if self.redis is not None:
            try:
                stored = await self.redis.query_usage(since, until)
            except StateDown:
                raise Unavailable(
                    "usage cannot be read now (shared state unreachable); retry shortly",
                    headers={"Retry-After": "1"},
                ) from None
        else:
            assert self.store is not None
            stored = await asyncio.to_thread(self.store.query, since, until)
        pending = list(select(self.buffer.rows().items(), since, until))
        return summarise([*stored, *pending])

    async def flush(self) -> None:
        rows: dict[Key, Counts] = self.buffer.drain()
        if not rows:
            self.unflushed.set(0)
            return
        try:
            if self.redis is not None:
                await self.redis.add_usage(rows)
            else:
                assert self.store is not None
                await asyncio.to_thread(self.store.add, rows)
        except Exception as exc:  # StateDown, a locked or full disk: keep the rows
            self.buffer.restore(rows)  # kept, and retried at the next flush
            log.warning("usage not flushed; kept for the next try", extra={"error": str(exc)})
        self.unflushed.set(len(self.buffer.rows()))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    def start(self) -> None:
        if self.redis is None and self.store is not None and isinstance(self.store, MemoryUsage):
            log.warning("usage is kept in memory only: set AIM_STATE_DIR (or AIM_REDIS_URL)")
        self._flusher = asyncio.get_running_loop().create_task(self._run(), name="aim-usage")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.flush()
        left = self.buffer.rows()
        if left:
            log.error(
                "usage lost at stop: the store did not answer",
                extra={"rows": len(left), "requests": sum(c[0] for c in left.values())},
            )
        if self.redis is not None:
            await self.redis.close()
        if isinstance(self.store, SqliteUsage):
            self.store.close()
