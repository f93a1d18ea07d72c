"""Shared state in Redis (`AIM_REDIS_URL`): the rate-limit buckets, quota counters and usage of
every replica in one place.

Each operation is atomic on the Redis side: the token bucket is one Lua script that reads the
clock of Redis itself (replicas' clocks never disagree about refills), a quota charge is one
MULTI/EXEC, a quota reservation one script that checks and takes, a usage flush one script of
HINCRBYs guarded by its flush id (a retry of a flush Redis applied before the answer timed out
finds the id and adds nothing). Usage hashes `aim:usage:<minute>` expire after the retention
(`AIM_USAGE_RETENTION_DAYS`), and the minutes index drops the ones past it at each flush.
When Redis does not answer, the caller decides per kind of state what to do
(`service.access.accounting`); this module raises `StateDown`, counts the failure in
`aim_shared_state_errors_total{kind}`, and stops calling Redis for `RETRY_AFTER_S` so a dead
Redis costs requests no connect timeouts.
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


# KEYS[1]: the quota counter. ARGV: units, limit, expire-at. Returns {1, used before} when the
# units were taken (used before < limit), {0, used} when the quota is used up.
RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[2]) then return {0, used} end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return {1, used}
"""

# KEYS[1]: the flush marker, KEYS[2]: the minutes index. ARGV: marker TTL, expire-at of the
# hashes, oldest minute kept, then (hash, field, value, minute) quadruples. 0 if already applied.
FLUSH = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 4, #ARGV, 4 do
  redis.call('HINCRBY', ARGV[i], ARGV[i + 1], ARGV[i + 2])
  redis.call('EXPIREAT', ARGV[i], tonumber(ARGV[i + 3]) + tonumber(ARGV[2]))
  redis.call('ZADD', KEYS[2], ARGV[i + 3], ARGV[i + 3])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
return 1
"""
FLUSH_ID_TTL_S = 86400
"""How long a flush id is remembered: far longer than any retry of it."""


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
        self._reserve = self._redis.register_script(RESERVE)
        self._flush = self._redis.register_script(FLUSH)
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

    async def reserve(
        self, account: str, tier: str, start: int, end: int, units: int, limit: int
    ) -> tuple[bool, int]:
        """Take `units` when fewer than `limit` are used: (taken, used before)."""
        key = self._quota_key(account, tier, start)

        async def op() -> Any:
            return await self._reserve(keys=[key], args=[units, limit, end + 3600])

        taken, used = await self._call("quota", op)
        return bool(int(taken)), int(used)

    async def add(self, account: str, tier: str, start: int, end: int, units: int) -> None:
        key = self._quota_key(account, tier, start)

        async def op() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incrby(key, units)
                pipe.expireat(key, end + 3600)  # past the window's end: nobody asks any more
                return await pipe.execute()

        await self._call("quota", op)

    # Usage ------------------------------------------------------------------------------------

    async def add_usage(
        self, rows: dict[Key, Counts], flush_id: str, retention_s: int = 400 * 86400
    ) -> bool:
        """Add `rows` once per `flush_id`: False when that flush was applied before."""
        args: list[Any] = [FLUSH_ID_TTL_S, retention_s, int(time.time()) - retention_s]
        for (minute, account, tier), counts in rows.items():
            for name, value in zip(_FIELDS, counts, strict=True):
                if value:
                    args += [f"{PREFIX}usage:{minute}", f"{account}|{tier}|{name}", value, minute]
        marker = f"{PREFIX}flush:{flush_id}"

        async def op() -> Any:
            return await self._flush(keys=[marker, _MINUTES], args=args)

        return bool(int(await self._call("usage", op)))

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
