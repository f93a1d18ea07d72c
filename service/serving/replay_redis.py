"""The replay memory in Redis (``AIM_REDIS_URL``): one memory for every worker and replica.

A memory per replica makes every replica a fresh draw: spread 32 augmented copies over 4
replicas behind a balancer and each replica's first copy gets its own noise (measured before
this module: +26.5 pp from a shift vote on 4 replicas against +12.0 on one). Here every replica
asks one Redis, so the first writer of an input's neighbourhood decides its noise for all.

Layout (Redis 7.0, plain keys and one Lua script, no vector search):

* a row's digest (unit vector, ``dim`` floats) gets ``tables`` locality-sensitive codes of
  ``bits`` random hyperplanes each (fixed, seeded); vectors at cosine ≥ the threshold share at
  least one code with high probability (bits 6, tables 12: a pair at cosine 0.8 shares none
  with probability ≈ 3%, at 0.9 under 0.1%). The lists are per code, not per clean class (a
  trained digest alone says "the same input"), so they need room: 64 codes per table and 256
  entries per list hold the 6,400 copies of the attack bench without evicting their anchors
  (16 codes and 48 entries did not: +15.6 pp on 4 replicas against +3.1 on one);
* one list per (namespace, tier, clean class, table, code): entries are packed
  ``stamp ms (double), cell (double), digest (float32 × dim)``, newest first, trimmed to
  ``capacity``; the namespace is a hash of a server-secret-derived value and the digest's
  fingerprint, so servers with another secret or another digest never read these entries;
* the script takes a whole batch (one round trip), and for each row in batch order reads the
  lists of its codes, finds the best cosine among live entries (exact, in Lua), takes that
  entry's cell at or above the threshold (else the row's own), and pushes the row with the cell
  it was served unless it is within ``store_below`` (0.95) of an entry: a copy that close adds no
  reach and would only lengthen the lists the script scans (32 contrast copies of one digit
  would otherwise all be stored, and a batch's scan grows past the client's timeout). Scripts
  run atomically, so the first writer wins for every replica; rows of one batch see the rows
  before them.

Expiry: each list's TTL is reset to ``window`` seconds on every push (an idle neighbourhood is
forgotten whole), and entries older than ``window`` never match (their stamp is Redis's own
clock, so replicas' clocks do not matter). A server restart keeps the memory (it lives in Redis);
a Redis restart keeps what Redis persisted (RDB/AOF as configured), and an empty Redis only
means first-seen inputs start new entries.

Outage: when Redis fails (refused, timeout, script error) the batch is served by the replica's
own memory (``fallback``, in-process or the host's shared file), ``aim_replay_memory_errors_total``
counts it, one warning is logged per ``RETRY_AFTER_S``, and Redis is not asked again for that
long. The tier stays keyed (exact replays are deterministic), but during the outage near copies
sent to different replicas may get independent draws: availability was chosen over refusing
requests.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from ..modulation import ReplayMemory
from .answers import AnswerMemory

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5.0
TIMEOUT_S = 5.0
PREFIX = "aim:replay:"

SCRIPT = """
local n, L, d = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local thr, dedupe = tonumber(ARGV[4]), tonumber(ARGV[5])
local cap, win = tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = now - win
local vfmt = '<' .. string.rep('f', d)
local efmt = '<dd' .. string.rep('f', d)
local out = {}
for i = 1, n do
  local vec = ARGV[6 + 2 * i]
  local own = tonumber(ARGV[7 + 2 * i])
  local q = {struct.unpack(vfmt, vec)}
  local best, cell = -2, own
  local seen = {}
  for l = 1, L do
    local entries = redis.call('LRANGE', KEYS[(i - 1) * L + l], 0, -1)
    for _, e in ipairs(entries) do
      -- An entry sits in every table's list: compare it once.
      if seen[e] then e = nil else seen[e] = true end
      local v = e and {struct.unpack(efmt, e)}
      if v and v[1] >= since then
        local s = 0
        for k = 1, d do s = s + q[k] * v[k + 2] end
        if s > best then best, cell = s, v[2] end
      end
    end
  end
  local served = own
  if best >= thr then served = cell end
  out[i] = served
  if best < dedupe then
    local entry = struct.pack('<dd', now, served) .. vec
    for l = 1, L do
      local key = KEYS[(i - 1) * L + l]
      redis.call('LPUSH', key, entry)
      redis.call('LTRIM', key, 0, cap - 1)
      redis.call('PEXPIRE', key, win)
    end
  end
end
return out
"""


class RedisReplayMemory:
    """``ReplayMemory.assign`` on Redis, for every replica; see the module doc.

    ``namespace``: a hex string derived from the server secret (never the secret itself).
    ``fallback``: the replica's own memory, used while Redis fails; its ``threshold``,
    ``dedupe``, ``window``, ``centre`` and ``normalise`` are this memory's too.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        fallback: ReplayMemory,
        bits: int = 6,
        tables: int = 12,
        capacity: int = 256,
        store_below: float = 0.95,
        on_error: Callable[[], None] | None = None,
        client: Any = None,
    ) -> None:
        import redis

        self.url = url
        self.fallback = fallback
        self.bits, self.tables, self.capacity = bits, tables, capacity
        self.store_below = store_below
        self._namespace = namespace
        self._scope = namespace[:16]
        self._redis: Any = client or redis.Redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
        )
        self._script = self._redis.register_script(SCRIPT)
        self._planes: dict[int, torch.Tensor] = {}
        self._down_until = 0.0
        self._on_error = on_error
        self.errors = 0

    # The engine reads and sets these on any memory.
    @property
    def threshold(self) -> float:
        return self.fallback.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.fallback.threshold = value

    @property
    def centre(self) -> torch.Tensor | None:
        return self.fallback.centre

    @centre.setter
    def centre(self, value: torch.Tensor | None) -> None:
        self.fallback.centre = value

    def scope(self, fingerprint: str) -> None:
        """Name the digest whose vectors are stored (entries of another are never read)."""
        self._scope = hashlib.sha256(f"{self._namespace}:{fingerprint}".encode()).hexdigest()[:16]

    def _codes(self, q: torch.Tensor) -> torch.Tensor:
        """N×tables LSH codes of unit rows ``q`` (bits random hyperplanes per table)."""
        d = q.shape[1]
        planes = self._planes.get(d)
        if planes is None:
            gen = torch.Generator().manual_seed(0x5EED + d)
            planes = torch.randn(d, self.tables * self.bits, generator=gen)
            self._planes[d] = planes
        side = (q.cpu().to(torch.float32) @ planes > 0).view(-1, self.tables, self.bits)
        weights = 1 << torch.arange(self.bits)
        return (side.to(torch.int64) * weights).sum(dim=2)

    def assign(
        self,
        tiers: list[str],
        embeddings: torch.Tensor,
        buckets: torch.Tensor,
        cells: torch.Tensor,
    ) -> torch.Tensor:
        """The cell each row is served with; see ``ReplayMemory.assign``."""
        n = embeddings.shape[0]
        if n == 0:
            return cells.clone()
        if time.monotonic() < self._down_until:
            return self.fallback.assign(tiers, embeddings, buckets, cells)
        try:
            return self._assign(tiers, embeddings, buckets, cells)
        except Exception as exc:  # refused, timeout, READONLY, script error...
            self.failed(exc)
            return self.fallback.assign(tiers, embeddings, buckets, cells)

    def failed(self, exc: Exception) -> None:
        """Count, log (once per rest) and rest after a failed call."""
        self.errors += 1
        if self._on_error is not None:
            self._on_error()
        if time.monotonic() >= self._down_until:
            log.warning(
                "replay memory: Redis failed (%s); serving from this replica's memory for %.0f s",
                type(exc).__name__,
                RETRY_AFTER_S,
            )
        self._down_until = time.monotonic() + RETRY_AFTER_S

    def _assign(
        self,
        tiers: list[str],
        embeddings: torch.Tensor,
        buckets: torch.Tensor,
        cells: torch.Tensor,
    ) -> torch.Tensor:
        q = self.fallback.normalise(embeddings).cpu().contiguous()
        codes = self._codes(q).tolist()
        scope = self._scope
        keys: list[str] = []
        args: list[Any] = []
        classes = buckets.to(torch.int64).cpu().tolist()
        own = cells.to(torch.int64).cpu().tolist()
        vectors = q.numpy()
        for i, tier in enumerate(tiers):
            tier_h = hashlib.sha256(tier.encode()).hexdigest()[:8]
            keys += [
                f"{PREFIX}{scope}:{tier_h}:{classes[i]}:{t}:{code}"
                for t, code in enumerate(codes[i])
            ]
            args += [vectors[i].tobytes(), str(own[i])]
        window_ms = max(1, math.ceil(self.fallback.window * 1000))
        head: list[Any] = [
            len(tiers),
            self.tables,
            q.shape[1],
            repr(self.fallback.threshold),
            repr(max(self.store_below, self.fallback.threshold)),
            self.capacity,
            window_ms,
        ]
        served = self._script(keys=keys, args=head + args)
        out = torch.tensor([int(c) for c in served], dtype=torch.int64)
        return out.to(cells.device)


ANSWERS = """
local n, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local key, field, row = KEYS[1], ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  local held = redis.call('HGET', key .. field, 'a')
  if held then
    out[i] = held
  else
    redis.call('HSET', key .. field, 'a', row)
    out[i] = ''
  end
  redis.call('PEXPIRE', key .. field, ttl)
end
return out
"""


class RedisAnswerMemory:
    """``AnswerMemory.apply`` on Redis (``answers.py``): the first replica to serve a
    (tier, σ, cell) stores its modulated row, every replica serves it after; one round trip per
    batch, the same outage rule as ``RedisReplayMemory`` (whose client and namespace it shares).
    """

    def __init__(self, memory: RedisReplayMemory, fallback: AnswerMemory) -> None:
        self.memory = memory
        self.fallback = fallback
        self._script = memory._redis.register_script(ANSWERS)

    def apply(
        self, out: torch.Tensor, tiers: list[str], sigmas: list[float], cells: list[int]
    ) -> torch.Tensor:
        m = self.memory
        if time.monotonic() < m._down_until:
            return self.fallback.apply(out, tiers, sigmas, cells)
        try:
            return self._apply(out, tiers, sigmas, cells)
        except Exception as exc:
            m.failed(exc)
            return self.fallback.apply(out, tiers, sigmas, cells)

    def _apply(
        self, out: torch.Tensor, tiers: list[str], sigmas: list[float], cells: list[int]
    ) -> torch.Tensor:
        rows = out.detach().to("cpu", torch.float32).contiguous().numpy()
        args: list[Any] = [len(cells), max(1, math.ceil(self.memory.fallback.window * 1000))]
        for i, (tier, sigma, cell) in enumerate(zip(tiers, sigmas, cells, strict=True)):
            args += [f"{hashlib.sha256(tier.encode()).hexdigest()[:8]}:{sigma!r}:{cell}"]
            args += [rows[i].tobytes()]
        held = self._script(keys=[f"{PREFIX}{self.memory._scope}:answer:"], args=args)
        replace = [(i, h) for i, h in enumerate(held) if h]
        if not replace:
            return out
        out = out.clone()
        idx = torch.tensor([i for i, _ in replace], device=out.device)
        rows_held = [torch.frombuffer(bytearray(h), dtype=torch.float32) for _, h in replace]
        stored = torch.stack(rows_held)
        out[idx] = stored.to(out.device, out.dtype)
        return out
