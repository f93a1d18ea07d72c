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
forgets the oldest first; entries older than ``window`` seconds no longer match. The rings live
in the process, or, given a ``SharedRings`` file (``shared_rings``), in that file, which all the
worker processes of one host map: they then serve from one memory. A restart empties it either
way (the parent creates a fresh file), and replicas on other hosts each have their own. Search
is one matrix product per bucket present in the batch, and one for the batch's own rows (no
Python loop over rows), on the embeddings' device (on the CPU for a shared file).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from .errors import ModulationArgumentError
from .rings import Ring, SharedRing
from .shared_rings import SharedRings

_MAX_DIM = 128  # embeddings above this are randomly projected (cosines near 1 survive it)


@dataclass
class MemoryStats:
    """Counters since start: rows looked up, rows that reused an entry's cell, rows stored."""

    rows: int = 0
    matched: int = 0
    stored: int = 0
    per_tier: dict[str, int] = field(default_factory=dict)


class ReplayMemory:
    """Nearest-neighbour memory of recent query embeddings, one per tier; see the module doc.

    ``shared``: keep the rings in a ``SharedRings`` file (its buckets, capacity and dim have to
    match, else ``ModulationArgumentError``) instead of this process, so that every process that
    opened the file serves from one memory. Search and storing then run on the CPU, where the
    file is mapped (cells are returned on the input's device), under the file's lock. Rows of a
    tier the file has no rings for are served their own cell and not remembered (not even
    within their batch), and are not counted in ``stats``.
    """

    def __init__(
        self,
        threshold: float = 0.985,
        capacity: int = 4096,
        window: float = 7 * 86400.0,
        buckets: int = 64,
        dedupe: float = 0.9995,
        chain: bool = True,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedRings | None = None,
    ) -> None:
        if not (math.isfinite(threshold) and 0.0 < threshold < 1.0):
            raise ModulationArgumentError("threshold", threshold, "has to be in (0, 1)")
        if capacity < 1:
            raise ModulationArgumentError("capacity", capacity, "has to be at least 1")
        if not (math.isfinite(window) and window > 0):
            raise ModulationArgumentError("window", window, "has to be positive seconds")
        if buckets < 1:
            raise ModulationArgumentError("buckets", buckets, "has to be at least 1")
        if shared is not None:
            shared.check(buckets=buckets, capacity=capacity, dim=_MAX_DIM)
        self.threshold = float(threshold)
        self.capacity = int(capacity)
        self.window = float(window)
        self.buckets = int(buckets)
        self.dedupe = max(float(dedupe), self.threshold)
        self.chain = chain
        self.clock = clock
        self.stats = MemoryStats()
        self._rings: dict[tuple[str, int], Ring] = {}
        self._projections: dict[tuple[int, str], torch.Tensor] = {}
        self._uppers: dict[str, torch.Tensor] = {}
        self._aranges: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self.shared = shared
        self._host: AbstractContextManager[None] = nullcontext() if shared is None else shared.lock
        self.centre: torch.Tensor | None = None
        """Subtracted from every embedding before normalising (e.g. the mean embedding of the
        model's calibration inputs): post-ReLU activations all point into one orthant, so their
        raw cosines are high even between different inputs; centred ones tell them apart."""

    def __len__(self) -> int:
        if self.shared is not None:
            return self.shared.entries()
        return sum(r.size for r in self._rings.values())

    def clear(self) -> None:
        with self._lock:
            if self.shared is not None:
                self.shared.clear()  # for every process; the slot views stay valid
            else:
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

        The batch is handled as a whole (one matrix of its rows' similarities, one pass of
        pointer jumping); per (tier, bucket) present only what needs that ring: the product
        with its entries, their maximum, and storing the rows it keeps.
        """
        n = embeddings.shape[0]
        if not (len(tiers) == n == buckets.shape[0] == cells.shape[0]):
            raise ModulationArgumentError(
                "embeddings", n, "tiers, buckets and cells need one entry per row"
            )
        own = cells.clone()
        if n == 0:
            return own
        if self.shared is not None:
            return self._assign_shared(self.shared, tiers, embeddings, buckets, own)
        return self._assign(tiers, self.normalise(embeddings), buckets, own)

    def _assign_shared(
        self,
        shared: SharedRings,
        tiers: list[str],
        embeddings: torch.Tensor,
        buckets: torch.Tensor,
        own: torch.Tensor,
    ) -> torch.Tensor:
        """``assign`` on the shared rings: the rows of tiers the file knows, on the CPU."""
        q = self.normalise(embeddings)
        known = [i for i, tier in enumerate(tiers) if tier in shared.tiers]
        if len(known) == len(tiers):
            return self._assign(tiers, q.cpu(), buckets, own.cpu()).to(own.device)
        if not known:
            return own
        idx = torch.tensor(known)  # a CPU index serves tensors on any device
        served = self._assign([tiers[i] for i in known], q[idx].cpu(), buckets[idx], own[idx].cpu())
        own[idx] = served.to(own.device)
        return own

    def _assign(
        self, tiers: list[str], q: torch.Tensor, buckets: torch.Tensor, own: torch.Tensor
    ) -> torch.Tensor:
        """``assign`` of normalised rows ``q``, on their device."""
        n = q.shape[0]
        groups: dict[tuple[str, int], list[int]] = {}
        for i, key in enumerate(zip(tiers, buckets.to(torch.int64).tolist(), strict=True)):
            groups.setdefault((key[0], key[1] % self.buckets), []).append(i)
        with self._lock, self._host:
            # Read under the lock: stamps then grow in write order also when threads or
            # processes race for it, so rings stay ``ordered`` (the clock is one for the host).
            now = self.clock()
            recalled = self._recall(groups, q, own, now)
            earlier = self._earlier(groups, q)
            cell, best = self._resolve(groups, own, recalled, earlier)
            limit = self.dedupe if self.chain else self.threshold
            if best is None:  # nothing to compare with: every row is new and kept
                keep, matched = [True] * n, 0
            else:
                keep, hits = torch.stack((best < limit, best >= self.threshold)).tolist()
                matched = sum(hits)
            self._store(groups, q, cell, keep, now)
            self.stats.rows += n
            self.stats.matched += matched
            for (tier, _), rows in groups.items():
                self.stats.per_tier[tier] = self.stats.per_tier.get(tier, 0) + len(rows)
        return cell

    def _recall(
        self,
        groups: dict[tuple[str, int], list[int]],
        q: torch.Tensor,
        own: torch.Tensor,
        now: float,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Each row's best cosine with a live entry of its ring (-2 if none) and that entry's
        cell (its own if none); None when no row's ring holds anything."""
        found: list[tuple[list[int], Ring]] = []
        for key, rows in groups.items():
            ring = self._rings.get(key) if self.shared is None else self._slot(key, q.shape[1])
            if ring is not None and ring.size:
                found.append((rows, ring))
        if not found:
            return None
        picked = torch.tensor([i for rows, _ in found for i in rows], device=q.device)
        # The rows of each ring, one run per ring, in batch order within it.
        runs = q[picked].split([len(rows) for rows, _ in found])
        bests, cells = [], []
        since = now - self.window
        for run, (_, ring) in zip(runs, found, strict=True):
            best, cell = ring.search(run, since)
            bests.append(best)
            cells.append(cell)
        mem_best = torch.full((q.shape[0],), -2.0, device=q.device)
        mem_cell = own.clone()
        mem_best[picked] = bests[0] if len(bests) == 1 else torch.cat(bests)
        mem_cell[picked] = cells[0] if len(cells) == 1 else torch.cat(cells)
        return mem_best, mem_cell

    def _earlier(
        self, groups: dict[tuple[str, int], list[int]], q: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Each row's best cosine with an earlier row of its tier and bucket in this batch
        (-2 if none) and that row; None when no row has one."""
        n = q.shape[0]
        if len(groups) == n:
            return None
        group = [0] * n
        for g, rows in enumerate(groups.values()):
            for i in rows:
                group[i] = g
        gid = torch.tensor(group, device=q.device)
        pair = q @ q.t()
        # Masked: other (tier, bucket), and the row itself or later rows (upper triangle).
        pair.masked_fill_((gid[:, None] != gid) | self._upper(n, q.device), -2.0)
        best, arg = pair.max(dim=1)
        return best, arg

    def _resolve(
        self,
        groups: dict[tuple[str, int], list[int]],
        own: torch.Tensor,
        recalled: tuple[torch.Tensor, torch.Tensor] | None,
        earlier: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Served cells, and each row's best cosine so far (None: no comparison was made)."""
        if earlier is None:
            if recalled is None:
                return own, None
            mem_best, mem_cell = recalled
            return torch.where(mem_best >= self.threshold, mem_cell, own), mem_best
        row_best, row_arg = earlier
        use_row = row_best >= self.threshold
        cell, best = own, row_best
        if recalled is not None:
            # An earlier row wins over the memory's entry only when it is nearer.
            mem_best, mem_cell = recalled
            use_row &= row_best > mem_best
            cell = torch.where((mem_best >= self.threshold) & ~use_row, mem_cell, own)
            best = torch.maximum(mem_best, row_best)
        # A row's cell: the memory's, else its own; rows that follow an earlier row take that
        # row's final cell. Parents always point to an earlier row of the same (tier, bucket),
        # so log2(largest group) jumps resolve every chain.
        parent = torch.where(use_row, row_arg, self._arange(own.shape[0], own.device))
        longest = max(len(rows) for rows in groups.values())
        for _ in range(max(1, math.ceil(math.log2(longest + 1)))):
            parent = parent[parent]
        return cell[parent], best

    def _store(
        self,
        groups: dict[tuple[str, int], list[int]],
        q: torch.Tensor,
        cell: torch.Tensor,
        keep: list[bool],
        now: float,
    ) -> None:
        """Remember the kept rows with the cell they were served, in batch order per ring."""
        kept = [[i for i in rows if keep[i]] for rows in groups.values()]
        flat = [i for rows in kept for i in rows]
        if not flat:
            return
        if len(flat) == q.shape[0] and flat == sorted(flat):
            qk, ck = q, cell
        else:
            idx = torch.tensor(flat, device=q.device)
            qk, ck = q[idx], cell[idx]
        stored = [(key, len(rows)) for key, rows in zip(groups, kept, strict=True) if rows]
        sizes = [size for _, size in stored]
        runs = zip(qk.split(sizes), ck.split(sizes), strict=True) if len(stored) > 1 else [(qk, ck)]
        for (key, _), (emb, served) in zip(stored, runs, strict=True):
            ring = self._rings.get(key) if self.shared is None else self._slot(key, q.shape[1])
            if ring is None:
                ring = self._rings[key] = Ring(
                    torch.zeros(self.capacity, q.shape[1], device=q.device),
                    torch.zeros(self.capacity, dtype=torch.int64, device=q.device),
                    torch.full((self.capacity,), -math.inf, dtype=torch.float64, device=q.device),
                )
            ring.add(emb, served, now)
        self.stats.stored += len(flat)

    def _slot(self, key: tuple[str, int], d: int) -> Ring:
        """The shared ring of (tier, bucket) for embeddings of ``d`` dimensions, made once."""
        ring = self._rings.get(key)
        if ring is None or ring.emb.shape[1] != d:
            assert self.shared is not None
            slot = self.shared.slot(*key)
            assert slot is not None  # rows of unknown tiers never get here
            ring = self._rings[key] = SharedRing(self.shared, slot, d)
        return ring

    def _upper(self, n: int, device: torch.device) -> torch.Tensor:
        """n×n mask of the diagonal and above: a slice of one mask per device, made once for
        the largest batch seen."""
        mask = self._uppers.get(str(device))
        if mask is None or mask.shape[0] < n:
            side = max(n, 64)
            mask = torch.ones(side, side, dtype=torch.bool, device=device).triu()
            self._uppers[str(device)] = mask
        return mask[:n, :n]

    def _arange(self, n: int, device: torch.device) -> torch.Tensor:
        """0..n-1: a slice of one range per device."""
        ar = self._aranges.get(str(device))
        if ar is None or ar.shape[0] < n:
            ar = torch.arange(max(n, 64), device=device)
            self._aranges[str(device)] = ar
        return ar[:n]
