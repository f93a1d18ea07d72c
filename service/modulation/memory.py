"""A per-tier replay memory: near-duplicate queries of one tier reuse the noise of the first.

Keyed noise that follows a digest of the logits survives tiny jitter, but label-preserving
augmentations (1-pixel shifts, brightness, blur, 10% jitter) move the logits across many digest
cells, so a vote over 32 augmented copies of one image gets 32 independent draws and recovers
most of the clean model's accuracy. The memory closes that hole:

* every classification row carries an **embedding** (the network's penultimate activations when
  the model exposes them, else its centred logits), unit-normalised, and a **bucket** (its clean
  top-1 class, modulo ``buckets``): augmentations that keep the label keep the bucket;
* a row whose embedding has cosine ≥ ``threshold`` with an entry of its tier and bucket (recent
  ones, or an earlier row of the same batch) takes that entry's noise **cell**; otherwise it
  keeps its own cell (the caller's fine digest of its logits), so distinct inputs still get
  independent noise and an exact replay is deterministic even after the memory forgot it;
* rows are remembered with the cell they were served (so a cluster of copies grows from any
  member: the attacker gains nothing from asking the original first or not), except rows that
  are already near-exact copies of an entry (``dedupe``), which would add nothing.

Limits (see docs/MODULATION.md): each (tier, bucket) keeps at most ``capacity`` entries and
forgets the oldest first; entries older than ``window`` seconds no longer match; the memory lives
in the process (a restart empties it, every replica has its own). Search is one matrix product
per bucket present in the batch (no Python loop over rows), on the embeddings' device.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import ModulationArgumentError

_MAX_DIM = 128  # embeddings above this are randomly projected (cosines near 1 survive it)


@dataclass
class _Ring:
    """One (tier, bucket): a ring buffer of unit embeddings, their cells and their times."""

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


@dataclass
class MemoryStats:
    """Counters since start: rows looked up, rows that reused an entry's cell, rows stored."""

    rows: int = 0
    matched: int = 0
    stored: int = 0
    per_tier: dict[str, int] = field(default_factory=dict)


class ReplayMemory:
    """Nearest-neighbour memory of recent query embeddings, one per tier; see the module doc."""

    def __init__(
        self,
        threshold: float = 0.985,
        capacity: int = 4096,
        window: float = 7 * 86400.0,
        buckets: int = 64,
        dedupe: float = 0.9995,
        chain: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(threshold) and 0.0 < threshold < 1.0):
            raise ModulationArgumentError("threshold", threshold, "has to be in (0, 1)")
        if capacity < 1:
            raise ModulationArgumentError("capacity", capacity, "has to be at least 1")
        if not (math.isfinite(window) and window > 0):
            raise ModulationArgumentError("window", window, "has to be positive seconds")
        if buckets < 1:
            raise ModulationArgumentError("buckets", buckets, "has to be at least 1")
        self.threshold = float(threshold)
        self.capacity = int(capacity)
        self.window = float(window)
        self.buckets = int(buckets)
        self.dedupe = max(float(dedupe), self.threshold)
        self.chain = chain
        self.clock = clock
        self.stats = MemoryStats()
        self._rings: dict[tuple[str, int], _Ring] = {}
        self._projections: dict[tuple[int, str], torch.Tensor] = {}
        self._lock = threading.Lock()
        self.centre: torch.Tensor | None = None
        """Subtracted from every embedding before normalising (e.g. the mean embedding of the
        model's calibration inputs): post-ReLU activations all point into one orthant, so their
        raw cosines are high even between different inputs; centred ones tell them apart."""

    def __len__(self) -> int:
        return sum(r.size for r in self._rings.values())

    def clear(self) -> None:
        with self._lock:
            self._rings.clear()

    def normalise(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Rows as float32 unit vectors of at most 128 dimensions (a fixed random projection
        above that: it preserves the distance of near-duplicates to a few percent)."""
        e = embeddings.detach().reshape(embeddings.shape[0], -1).to(torch.float32)
        if self.centre is not None and self.centre.numel() == e.shape[1]:
            e = e - self.centre.to(e.device, torch.float32).reshape(1, -1)
        d = e.shape[1]
        if d > _MAX_DIM:
            key = (d, str(e.device))
            if key not in self._projections:
                gen = torch.Generator().manual_seed(d)
                proj = torch.randn(d, _MAX_DIM, generator=gen) / math.sqrt(_MAX_DIM)
                self._projections[key] = proj.to(e.device)
            e = e @ self._projections[key]
        return torch.nn.functional.normalize(e, dim=1, eps=1e-12)

    def assign(
        self,
        tiers: list[str],
        embeddings: torch.Tensor,
        buckets: torch.Tensor,
        cells: torch.Tensor,
    ) -> torch.Tensor:
        """The cell each row is served with (N,), given its own cell; remembers the rows.

        ``tiers`` names each row's tier (N names), ``buckets`` its clean top-1 class (N,),
        ``cells`` its own digest (N,) int64. Rows are taken in batch order: a row may reuse
        the cell of an earlier row of the same tier and bucket in this batch.
        """
        n = embeddings.shape[0]
        if not (len(tiers) == n == buckets.shape[0] == cells.shape[0]):
            raise ModulationArgumentError(
                "embeddings", n, "tiers, buckets and cells need one entry per row"
            )
        out = cells.clone()
        if n == 0:
            return out
        q = self.normalise(embeddings)
        bucket = buckets.to(torch.int64) % self.buckets
        groups: dict[tuple[str, int], list[int]] = {}
        for i, key in enumerate(zip(tiers, bucket.tolist(), strict=True)):
            groups.setdefault(key, []).append(i)
        now = self.clock()
        with self._lock:
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
        """Rows of one (tier, bucket): served cells and each row's best cosine so far."""
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
        # Earlier rows of this batch: strictly lower triangle of the batch's own similarities.
        pair = q @ q.t()
        earlier = torch.ones(m, m, dtype=torch.bool, device=q.device).tril(-1)
        pair = pair.masked_fill(~earlier, -2.0)
        row_best, row_arg = pair.max(dim=1)
        use_row = (row_best >= self.threshold) & (row_best > mem_best)
        use_mem = (mem_best >= self.threshold) & ~use_row
        # A row's cell: the memory's, else its own; rows that follow an earlier row take that
        # row's final cell. Parents always point to an earlier row, so log2(m) jumps resolve it.
        cell = torch.where(use_mem, mem_cell, own)
        parent = torch.where(use_row, row_arg, torch.arange(m, device=q.device))
        for _ in range(max(1, math.ceil(math.log2(m + 1)))):
            parent = parent[parent]
        cell = cell[parent]
        best = torch.maximum(mem_best, row_best)
        keep = best < (self.dedupe if self.chain else self.threshold)
        if bool(keep.any()):
            if ring is None:
                ring = _Ring(
                    torch.zeros(self.capacity, q.shape[1], device=q.device),
                    torch.zeros(self.capacity, dtype=torch.int64, device=q.device),
                    torch.full((self.capacity,), -math.inf, dtype=torch.float64, device=q.device),
                )
                self._rings[key] = ring
            ring.add(q[keep], cell[keep], now)
            self.stats.stored += int(keep.sum())
        return cell, best
