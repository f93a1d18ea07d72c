"""Accounting: what an account may do (rate limit, quota) and what it did (usage), per tier.

`admit` runs before a request is served and reserves its quota units (a `Reservation`), so
concurrent requests cannot overshoot a quota by more than one request (per replica without
Redis; with Redis the check and the reservation are one atomic script). `record` runs after the
answer and settles the reservation: the units used are kept in the window the reservation was
made in (a request answered just after a window rolls over is charged once, in the window it was
admitted in), and a failed or abandoned request gets its units back. State lives in
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
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Reservation:
    """Quota units taken at admission, in the window of `at`; settled by `Accounting.record`."""

    account: str
    tier: str
    start: int
    end: int
    units: int
    at: float
    shared: bool
    """Taken in Redis (else in this process)."""


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
        # Flushes that failed, each retried with its own id (and rows) so that one Redis applied
        # before the answer timed out is not counted again.
        self._unsent: list[tuple[str, dict[Key, Counts]]] = []
        self.retention_s = int(settings.usage_retention_days * 86400)
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

    async def admit(
        self, account: str, tier: str, limiter: RateLimiter | None, units: int = 1
    ) -> Reservation | None:
        """Refuse (429, or 503 when the quota state is unreachable) or let the request in,
        with `units` of its quota reserved (None: the tier has no quota, or it failed open)."""
        quota = self.quotas.get(tier)
        reservation = None
        if quota is not None:
            reservation = await self._reserve(account, tier, quota, max(1, units))
        if limiter is not None:
            try:
                await self._take(account, tier, limiter)
            except RateLimited:
                self.settle(reservation, 0)
                raise
        return reservation

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

    async def _reserve(
        self, account: str, tier: str, quota: Quota, units: int
    ) -> Reservation | None:
        now = time.time()
        start, end = quota.window(now)
        if self.redis is None:
            used = self.local_quota.used(account, tier, start)
            taken = used < quota.limit
            if taken:
                self.local_quota.add(account, tier, start, units)
        else:
            try:
                taken, used = await self.redis.reserve(
                    account, tier, start, end, units, quota.limit
                )
            except StateDown:
                if self.quota_fail_open:
                    return None
                raise QuotaUnavailable(
                    f"the quota of tier {tier!r} cannot be checked now (shared state "
                    "unreachable); retry shortly",
                    headers={"Retry-After": "1"},
                ) from None
        if taken:
            return Reservation(account, tier, start, end, units, now, self.redis is not None)
        self.refused.labels(tier).inc()
        resets = datetime.fromtimestamp(end, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise QuotaExceeded(
            f"quota of tier {tier!r} ({quota}) used up for account {account!r}: "
            f"{used} used; it resets at {resets}",
            headers={"Retry-After": str(max(1, math.ceil(end - now)))},
        )

    # After serving ----------------------------------------------------------------------------

    def record(
        self,
        account: str,
        tier: str,
        status: int,
        items: int,
        tokens: int,
        units: int,
        reservation: Reservation | None = None,
    ) -> None:
        """Count one answered request and settle its reservation (never raises, never waits:
        it runs after the answer). Usage is dated when the request was admitted."""
        now = time.time()
        ok = 200 <= status < 300
        at = reservation.at if reservation is not None else now
        self.buffer.add(account, tier, ok, items, tokens, units, at)
        if reservation is not None:
            self.settle(reservation, units if ok else 0)
            return
        quota = self.quotas.get(tier)
        if not ok or quota is None or units <= 0:
            return
        # Admitted without a reservation (the quota failed open): counted as before.
        start, end = quota.window(now)
        if self.redis is None:
            self.local_quota.add(account, tier, start, units)
        else:
            self._spawn(self._add_shared(account, tier, start, end, units))

    def settle(self, reservation: Reservation | None, used: int) -> None:
        """Keep `used` units of `reservation` (0: a refusal, a failure, an abandoned request
        gets them all back)."""
        if reservation is None:
            return
        delta = used - reservation.units
        if delta == 0:
            return
        r = reservation
        if r.shared:
            self._spawn(self._add_shared(r.account, r.tier, r.start, r.end, delta))
        elif time.time() < r.end:  # a past window is never asked again
            self.local_quota.add(r.account, r.tier, r.start, delta)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _add_shared(self, account: str, tier: str, start: int, end: int, units: int) -> None:
        assert self.redis is not None
        with contextlib.suppress(StateDown):  # counted in the errors metric; usage still flushes
            await self.redis.add(account, tier, start, end, units)

    def _units_since(self, account: str, tier: str, start: int) -> int:
        """Quota units already used in a window: stored, plus still in the buffer."""
        pending = sum(
            c[4] for (m, a, t), c in self._unstored() if (a, t) == (account, tier) and m >= start
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
        pending = list(select(self._unstored(), since, until))
        return summarise([*stored, *pending])

    def _unstored(self) -> list[tuple[Key, Counts]]:
        """Rows not in the store yet: failed flushes and the buffer."""
        rows = [row for _, batch in self._unsent for row in batch.items()]
        return rows + list(self.buffer.rows().items())

    async def flush(self) -> None:
        """Retry the failed flushes (each with its id), then flush the buffer under a new id."""
        rows: dict[Key, Counts] = self.buffer.drain()
        if rows:
            self._unsent.append((uuid.uuid4().hex, rows))
        kept: list[tuple[str, dict[Key, Counts]]] = []
        for flush_id, batch in self._unsent:
            if kept:  # the store is down: do not wait on it again in this turn
                kept.append((flush_id, batch))
                continue
            try:
                if self.redis is not None:
                    await self.redis.add_usage(batch, flush_id, self.retention_s)
                else:
                    assert self.store is not None
                    await asyncio.to_thread(self.store.add, batch)
            except Exception as exc:  # StateDown, a locked or full disk: keep the rows
                kept.append((flush_id, batch))  # retried at the next flush, with the same id
                log.warning("usage not flushed; kept for the next try", extra={"error": str(exc)})
        self._unsent = kept
        self.unflushed.set(sum(len(b) for _, b in kept) + len(self.buffer.rows()))

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
        left = self._unstored()
        if left:
            log.error(
                "usage lost at stop: the store did not answer",
                extra={"rows": len(left), "requests": sum(c[0] for _, c in left)},
            )
        if self.redis is not None:
            await self.redis.close()
        if isinstance(self.store, SqliteUsage):
            self.store.close()
