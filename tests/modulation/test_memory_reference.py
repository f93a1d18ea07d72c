"""The batched replay memory against the per-group algorithm it replaced, kept here as reference.

``ReferenceMemory`` is the original ``ReplayMemory.assign`` (one pass per (tier, bucket): ring
similarities, live mask, the group's own pair matrix, pointer jumping, ring add), unchanged. Both
memories see the same random batches: several tiers and buckets, fresh rows, near-duplicates at
several distances, exact duplicates, rings partly full and wrapped, entries expiring, a clock
that sometimes goes back; every batch must be served the same cells and leave the same stats and
ring contents.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import torch

from service.modulation import ReplayMemory

pytestmark = pytest.mark.unit


@dataclass
class _OldRing:
    emb: torch.Tensor
    cell: torch.Tensor
    stamp: torch.Tensor
    size: int = 0
    head: int = 0

    def add(self, emb: torch.Tensor, cell: torch.Tensor, now: float) -> None:
        cap = self.emb.shape[0]
        emb, cell = emb[-cap:], cell[-cap:]
        idx = (self.head + torch.arange(emb.shape[0], device=emb.device)) % cap
        self.emb[idx] = emb.to(self.emb.dtype)
        self.cell[idx] = cell
        self.stamp[idx] = now
        self.head = (self.head + emb.shape[0]) % cap
        self.size = min(cap, self.size + emb.shape[0])


class ReferenceMemory(ReplayMemory):
    """The replay memory as first built (commit 5d30dde): a loop over (tier, bucket) groups."""

    def assign(
        self,
        tiers: list[str],
        embeddings: torch.Tensor,
        buckets: torch.Tensor,
        cells: torch.Tensor,
    ) -> torch.Tensor:
        n = embeddings.shape[0]
        out = cells.clone()
        if n == 0:
            return out
        q = self.normalise(embeddings)
        bucket = buckets.to(torch.int64) % self.buckets
        groups: dict[tuple[str, int], list[int]] = {}
        for i, key in enumerate(zip(tiers, bucket.tolist(), strict=True)):
            groups.setdefault(key, []).append(i)
        now = self.clock()
        for key, rows in groups.items():
            idx = torch.tensor(rows, device=q.device)
            served, best = self._group(key, q[idx], out[idx], now)
            out[idx] = served
            self.stats.rows += len(rows)
            self.stats.matched += int((best >= self.threshold).sum())
            self.stats.per_tier[key[0]] = self.stats.per_tier.get(key[0], 0) + len(rows)
        return out

    def _group(
        self, key: tuple[str, int], q: torch.Tensor, own: torch.Tensor, now: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = q.shape[0]
        ring = self._rings.get(key)
        if ring is not None and ring.size:
            live = ring.stamp[: ring.size] >= now - self.window
            sims = q @ ring.emb[: ring.size].t()
            sims = sims.masked_fill(~live[None, :], -2.0)
            mem_best, mem_arg = sims.max(dim=1)
            mem_cell = ring.cell[: ring.size][mem_arg]
        else:
            mem_best = torch.full((m,), -2.0, device=q.device)
            mem_cell = own
        pair = q @ q.t()
        earlier = torch.ones(m, m, dtype=torch.bool, device=q.device).tril(-1)
        pair = pair.masked_fill(~earlier, -2.0)
        row_best, row_arg = pair.max(dim=1)
        use_row = (row_best >= self.threshold) & (row_best > mem_best)
        use_mem = (mem_best >= self.threshold) & ~use_row
        cell = torch.where(use_mem, mem_cell, own)
        parent = torch.where(use_row, row_arg, torch.arange(m, device=q.device))
        for _ in range(max(1, math.ceil(math.log2(m + 1)))):
            parent = parent[parent]
        cell = cell[parent]
        best = torch.maximum(mem_best, row_best)
        keep = best < (self.dedupe if self.chain else self.threshold)
        if bool(keep.any()):
            if ring is None:
                ring = _OldRing(
                    torch.zeros(self.capacity, q.shape[1], device=q.device),
                    torch.zeros(self.capacity, dtype=torch.int64, device=q.device),
                    torch.full((self.capacity,), -math.inf, dtype=torch.float64, device=q.device),
                )
                self._rings[key] = ring  # type: ignore[assignment]
            ring.add(q[keep], cell[keep], now)
            self.stats.stored += int(keep.sum())
        return cell, best


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


Sent = list[tuple[torch.Tensor, str, int]]


def _batch(
    rng: random.Random, gen: torch.Generator, pool: torch.Tensor, sent: Sent, d: int
) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of up to 41 rows over three tiers and buckets 0..9: fresh rows, near and exact
    copies of pool rows and of rows sent before (in earlier batches or this one), which mostly
    keep their original's tier and bucket (so copies of copies form chains within a batch)."""
    rows: list[torch.Tensor] = []
    tiers: list[str] = []
    buckets: list[int] = []

    def emit(e: torch.Tensor, tier: str, bucket: int) -> None:
        rows.append(e)
        tiers.append(tier)
        buckets.append(bucket)
        sent.append((e, tier, bucket))

    for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 13, 24, 32, 40])):
        kind = rng.random()
        tier = rng.choice(["bronze", "bronze", "silver", "gold"])
        bucket = rng.choice([0, 1, 2, 5, 9])
        if kind < 0.2 or not sent:
            e = torch.randn(d, generator=gen)
        elif kind < 0.3:
            # A row between a remembered one and an earlier row of this batch that is just too
            # far from it: near both, so which of the two is nearer decides the cell.
            base, tier, bucket = rng.choice(sent)
            e = base + 0.21 * torch.randn(d, generator=gen)
            emit(e, tier, bucket)
            e = (e + base) / 2 + 0.01 * torch.randn(d, generator=gen)
        else:
            if kind < 0.4:
                base = pool[rng.randrange(len(pool))]
            else:
                base, base_tier, base_bucket = rng.choice(sent[-12:] if kind < 0.8 else sent)
                tier = base_tier if rng.random() < 0.85 else tier
                bucket = base_bucket if rng.random() < 0.85 else bucket
            scale = rng.choice([0.0, 0.0, 1e-3, 0.01, 0.03, 0.08, 0.12, 0.2, 0.4])
            e = base + scale * torch.randn(d, generator=gen)
        emit(e, tier, bucket)
    e = torch.stack(rows) if rows else torch.zeros(0, d)
    cells = torch.randint(0, 1 << 31, (len(rows),), generator=gen)
    return tiers, e, torch.tensor(buckets, dtype=torch.int64), cells


@pytest.mark.parametrize(
    ("settings", "d", "seed"),
    [
        ({"capacity": 16, "window": 6.0, "buckets": 4}, 32, 0),
        ({"capacity": 7, "window": 4.0, "buckets": 64, "threshold": 0.95}, 32, 1),
        ({"capacity": 64, "window": 50.0, "buckets": 4, "chain": False}, 32, 2),
        ({"capacity": 5, "window": 3.0, "buckets": 2, "dedupe": 0.99}, 200, 3),
        ({"capacity": 4096, "window": 1e9, "buckets": 64}, 128, 4),
    ],
)
def test_batched_assign_serves_what_the_per_group_algorithm_served(
    settings: dict[str, float], d: int, seed: int
) -> None:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    clock = Clock()
    new = ReplayMemory(clock=clock, **settings)  # type: ignore[arg-type]
    old = ReferenceMemory(clock=clock, **settings)  # type: ignore[arg-type]
    centre = 0.1 * torch.randn(d, generator=gen)
    new.centre = old.centre = centre
    pool = torch.randn(24, d, generator=gen)
    sent: Sent = []
    for step in range(120):
        tiers, e, buckets, cells = _batch(rng, gen, pool, sent, d)
        got = new.assign(tiers, e, buckets, cells)
        want = old.assign(tiers, e, buckets, cells)
        assert got.dtype == want.dtype
        assert torch.equal(got, want), f"batch {step}"
        # Mostly forward, sometimes past the window, now and then back.
        clock.now += rng.choice([0.0, 0.0, 0.5, 1.0, 2.0, 5.0, 8.0, -1.5, -6.0])
    assert new.stats == old.stats
    assert new.stats.matched > 50 and new.stats.stored > 50
    assert new.stats.rows > new.stats.matched
    assert len(new) == len(old)
    assert new._rings.keys() == old._rings.keys()
    for key, ring in new._rings.items():
        ref = old._rings[key]
        assert (ring.size, ring.head) == (ref.size, ref.head), key
        assert torch.equal(ring.emb, ref.emb) and torch.equal(ring.cell, ref.cell), key
        assert torch.equal(ring.stamp, ref.stamp), key
