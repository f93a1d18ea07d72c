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
  before them;
* the remembered answers (``answers.py``) live in the same script, so a batch costs one round
  trip, not two: the client sends each row's modulated output under its own cell, and the
  script, once it has the row's served cell, returns the answer held for (tier, σ, that cell)
  or, when none is held and the row was served its own cell, stores the row's (first writer
  wins). A matched row whose cell holds no answer (expired, or its first writer asked with a
  focus) gets the cell's noise on its own logits and stores nothing.

Expiry: each list's TTL is reset to ``window`` seconds on every push (an idle neighbourhood is
forgotten whole), an answer's on every read or write, and entries older than ``window`` never
match (their stamp is Redis's own clock, so replicas' clocks do not matter). A server restart
keeps the memory (it lives in Redis); a Redis restart keeps what Redis persisted (RDB/AOF as
configured), and an empty Redis only means first-seen inputs start new entries.

Outage: when Redis fails (refused, timeout, script error) the batch is served by the replica's
own memory (``fallback``, in-process or the host's shared file) and its own answers,
``aim_replay_memory_errors_total`` counts it, one warning is logged per ``RETRY_AFTER_S``, and
Redis is not asked again for that long. The tier stays keyed (exact replays are deterministic),
but during the outage near copies sent to different replicas may get independent draws:
availability was chosen over refusing requests.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..modulation import ReplayMemory

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5.0
TIMEOUT_S = 5.0
PREFIX = "aim:replay:"

SCRIPT = """
local n, L, d = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local thr, dedupe = tonumber(ARGV[4]), tonumber(ARGV[5])
local cap, win, answers = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = now - win
local vfmt = '<' .. string.rep('f', d)
local efmt = '<dd' .. string.rep('f', d)
local out = {}
for i = 1, n do
  local vec = ARGV[5 + 4 * i]
  local own = tonumber(ARGV[6 + 4 * i])
  local field, row = ARGV[7 + 4 * i], ARGV[8 + 4 * i]
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
  out[2 * i - 1] = served
  out[2 * i] = ''
  if best < dedupe then
    local entry = struct.pack('<dd', now, served) .. vec
    for l = 1, L do
      local key = KEYS[(i - 1) * L + l]
      redis.call('LPUSH', key, entry)
      redis.call('LTRIM', key, 0, cap - 1)
      redis.call('PEXPIRE', key, win)
    end
  end
  -- The answer of (tier, sigma, served cell): the first writer's. A row served its own cell
  -- writes its row when none is held; a matched row whose answer is gone (expired, or its
  -- first writer had a focus) is modulated with the cell by the caller and writes nothing.
  if field ~= '' then
    local key = answers .. field .. ':' .. string.format('%d', served)
    local held = redis.call('HGET', key, 'a')
    if held then
      out[2 * i] = held
      redis.call('PEXPIRE', key, win)
    elseif served == own then
      redis.call('HSET', key, 'a', row)
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
        return self.assign_and_answer(tiers, embeddings, buckets, cells)[0]

    def assign_and_answer(
        self,
        tiers: list[str],
        embeddings: torch.Tensor,
        buckets: torch.Tensor,
        cells: torch.Tensor,
        answers: Answers | None = None,
    ) -> tuple[torch.Tensor, list[bytes | None] | None]:
        """One round trip for a batch: the cell each row is served with (as ``assign``) and,
        with ``answers``, the answer held for each answered row's (tier, σ, served cell), None
        where none is held (a row served its own cell then stores its row: first writer wins).
        The answers are None as a whole when Redis failed: the cells then come from the
        replica's own memory, and the caller's own answer memory applies."""
        n = embeddings.shape[0]
        if n == 0:
            return cells.clone(), []
        if time.monotonic() < self._down_until:
            return self.fallback.assign(tiers, embeddings, buckets, cells), None
        try:
            return self._assign(tiers, embeddings, buckets, cells, answers)
        except Exception as exc:  # refused, timeout, READONLY, script error...
            self.failed(exc)
            return self.fallback.assign(tiers, embeddings, buckets, cells), None

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
        answers: Answers | None,
    ) -> tuple[torch.Tensor, list[bytes | None] | None]:
        q = self.fallback.normalise(embeddings).cpu().contiguous()
        codes = self._codes(q).tolist()
        scope = self._scope
        keys: list[str] = []
        args: list[Any] = []
        classes = buckets.to(torch.int64).cpu().tolist()
        own = cells.to(torch.int64).cpu().tolist()
        vectors = q.numpy()
        rows = None if answers is None else answers.rows.detach().to("cpu", torch.float32).numpy()
        for i, tier in enumerate(tiers):
            tier_h = hashlib.sha256(tier.encode()).hexdigest()[:8]
            keys += [
                f"{PREFIX}{scope}:{tier_h}:{classes[i]}:{t}:{code}"
                for t, code in enumerate(codes[i])
            ]
            args += [vectors[i].tobytes(), str(own[i])]
            if answers is not None and rows is not None and answers.answered[i]:
                args += [f"{tier_h}:{answers.sigmas[i]!r}", rows[i].tobytes()]
            else:
                args += ["", ""]
        window_ms = max(1, math.ceil(self.fallback.window * 1000))
        head: list[Any] = [
            len(tiers),
            self.tables,
            q.shape[1],
            repr(self.fallback.threshold),
            repr(max(self.store_below, self.fallback.threshold)),
            self.capacity,
            window_ms,
            f"{PREFIX}{scope}:answer:",
        ]
        reply = self._script(keys=keys, args=head + args)
        out = torch.tensor([int(c) for c in reply[0::2]], dtype=torch.int64).to(cells.device)
        if answers is None:
            return out, None
        return out, [bytes(h) if h else None for h in reply[1::2]]


@dataclass(frozen=True)
class Answers:
    """What ``assign_and_answer`` needs for the remembered answers: per row, whether it takes
    part (no focus, σ > 0), its σ, and its modulated row under its own cell (N×C)."""

    answered: list[bool]
    sigmas: list[float]
    rows: torch.Tensor


def with_answers(out: torch.Tensor, rows: list[int], held: list[bytes | None]) -> torch.Tensor:
    """``out`` with row ``rows[k]`` replaced by the answer ``held[k]`` where one is held."""
    found = [(rows[k], h) for k, h in enumerate(held) if h is not None]
    if not found:
        return out
    out = out.clone()
    at = torch.tensor([r for r, _ in found], device=out.device)
    got = torch.stack([torch.frombuffer(bytearray(h), dtype=torch.float32) for _, h in found])
    out[at] = got.to(out.device, out.dtype)
    return out
