"""Shared state in Redis (`AIM_REDIS_URL`): the rate-limit buckets, quota counters and usage of
every replica in one place.

Each operation is atomic on the Redis side: the token bucket is one Lua script that reads the
clock of Redis itself (replicas' clocks never disagree about refills), a quota charge is one
MULTI/EXEC, a usage flush one MULTI/EXEC of HINCRBYs. When Redis does not answer, the caller
decides per kind of state what to do (`service.access.accounting`); this module raises `StateDown`,
counts the failure in `aim_shared_state_errors_total{kind}`, and stops calling Redis for
`RETRY_AFTER_S` so a dead Redis costs requests no connect timeouts.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from .usage import Counts, Key

PREFIX = "aim:"
RETRY_AFTER_S = 1.0
# Long enough for a loaded host (a slow answer is not an outage), short enough that a request
# waits at most this long before the per-kind fallback takes over.
TIMEOUT_S = 1.0
_MINUTES = PREFIX + "usage:minutes"
_FIELDS = ("requests", "items", "tokens", "errors", "units")

# KEYS[1]: the bucket. ARGV: rate (tokens/s), burst, cost. Returns the seconds to wait (a string,
# since Lua numbers come back truncated to integers), "0" when the cost was taken.
TOKEN_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class StateDown(Exception):
    """Redis did not answer (or is being given a rest after failing)."""


class RedisState:
    """The shared state of every replica, in Redis."""

    def __init__(self, url: str, registry: CollectorRegistry | None = None) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self._redis: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=TIMEOUT_S,
            socket_connect_timeout=TIMEOUT_S,
            decode_responses=True,
        )
        self._bucket = self._redis.register_script(TOKEN_BUCKET)
        self._down_until = 0.0
        self.errors = Counter(
            "aim_shared_state_errors",
            "Shared-state (Redis) operations that failed, by kind of state",
            ["kind"],
            registry=registry,
        )
        self.up = Gauge(
            "aim_shared_state_up",
            "1 while the shared state (Redis) answers",
            registry=registry,
            multiprocess_mode="min",  # with --workers: 0 when any live worker cannot reach it
        )
        self.up.set(1)

    async def _call(self, kind: str, op: Any) -> Any:
        if time.monotonic() < self._down_until:
            self.errors.labels(kind).inc()
            raise StateDown(f"{kind}: Redis is not answering")
        try:
            result = await op()
        except Exception as exc:  # connection refused, timeout, READONLY, OOM...
            self._down_until = time.monotonic() + RETRY_AFTER_S
            self.errors.labels(kind).inc()
            self.up.set(0)
            raise StateDown(f"{kind}: Redis failed: {type(exc).__name__}") from exc
        self.up.set(1)
        return result

    async def take(self, bucket: str, rate: float, burst: float, cost: float = 1.0) -> float:
        """Take `cost` from the bucket; 0 when taken, else the seconds until it would be."""

        async def op() -> Any:
            return await self._bucket(keys=[PREFIX + "rl:" + bucket], args=[rate, burst, cost])

        return float(await self._call("rate_limit", op))

    # Quotas -----------------------------------------------------------------------------------

    @staticmethod
    def _quota_key(account: str, tier: str, start: int) -> str:
        return f"{PREFIX}quota:{tier}:{account}:{start}"

    async def used(self, account: str, tier: str, start: int) -> int:
        key = self._quota_key(account, tier, start)
        value = await self._call("quota", lambda: self._redis.get(key))
        return int(value or 0)

    async def add(self, account: str, tier: str, start: int, end: int, units: int) -> None:
        key = self._quota_key(account, tier, start)

        async def op() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incrby(key, units)
                pipe.expireat(key, end + 3600)  # past the window's end: nobody asks any more
                return await pipe.execute()

        await self._call("quota", op)

    # Usage ------------------------------------------------------------------------------------

    async def add_usage(self, rows: dict[Key, Counts]) -> None:
        async def op() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                for (minute, account, tier), counts in rows.items():
                    h = f"{PREFIX}usage:{minute}"
                    for name, value in zip(_FIELDS, counts, strict=True):
                        if value:
                            pipe.hincrby(h, f"{account}|{tier}|{name}", value)
                    pipe.zadd(_MINUTES, {str(minute): minute})
                return await pipe.execute()

        await self._call("usage", op)

    async def query_usage(
        self, since: float | None, until: float | None
    ) -> list[tuple[Key, Counts]]:
        lo = "-inf" if since is None else int(since // 60 * 60)
        hi = "+inf" if until is None else f"({until}"

        async def op() -> Any:
            minutes = await self._redis.zrangebyscore(_MINUTES, lo, hi)
            async with self._redis.pipeline(transaction=False) as pipe:
                for minute in minutes:
                    pipe.hgetall(f"{PREFIX}usage:{minute}")
                return list(zip(minutes, await pipe.execute(), strict=True))

        rows: list[tuple[Key, Counts]] = []
        for minute, fields in await self._call("usage", op):
            per: dict[tuple[str, str], Counts] = {}
            for field, value in fields.items():
                account, tier, name = field.rsplit("|", 2)
                per.setdefault((account, tier), [0] * len(_FIELDS))[_FIELDS.index(name)] = int(
                    value
                )
            rows += [((int(minute), a, t), c) for (a, t), c in per.items()]
        return rows

    async def ping(self) -> bool:
        try:
            return bool(await self._call("ping", self._redis.ping))
        except StateDown:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
