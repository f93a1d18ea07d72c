"""The replay memory's rings: per (tier, bucket), a ring buffer of unit embeddings, their noise
cells and their times, in the process (``Ring``) or in a slot of a ``SharedRings`` file that the
worker processes of one host map (``SharedRing``)."""

from __future__ import annotations

import math

import torch

from .shared_rings import META_FIELDS, SharedRings


class Ring:
    """One (tier, bucket): a ring buffer of unit embeddings, their cells and their times.

    ``marks`` mirrors ``stamp`` in Python, so that whether every entry is still inside the window
    is known without reading the tensor: stamps grow in write order (the clock is monotonic), so
    the oldest entry is the next one to be overwritten. A clock that ever went back clears
    ``ordered`` and the live mask is then always applied.
    """

    def __init__(self, emb: torch.Tensor, cell: torch.Tensor, stamp: torch.Tensor) -> None:
        self.emb = emb
        self.cell = cell
        self.stamp = stamp
        self.emb_t = emb.t()
        """A transposed view of ``emb``: what the search multiplies by, made once."""
        self.size = 0
        self.head = 0
        self.ordered = True
        self.marks = [-math.inf] * emb.shape[0]

    @property
    def oldest(self) -> float:
        return self.marks[self.head if self.size == len(self.marks) else 0]

    @property
    def newest(self) -> float:
        return self.marks[self.head - 1]

    def _wrote(self, part: slice, run: int, now: float) -> None:
        """Bookkeeping after entries ``part`` (``run`` of them) were written at ``now``."""
        self.marks[part] = [now] * run

    def search(self, q: torch.Tensor, since: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's best cosine with an entry stamped at ``since`` or later (-2 if none), and
        that entry's cell."""
        sims = q @ (self.emb_t if self.size == self.emb.shape[0] else self.emb_t[:, : self.size])
        if not (self.ordered and self.oldest >= since):
            sims.masked_fill_(self.stamp[: self.size] < since, -2.0)
        best, arg = sims.max(dim=1)
        return best, self.cell[arg]

    def add(self, emb: torch.Tensor, cell: torch.Tensor, now: float) -> None:
        cap = self.emb.shape[0]
        if emb.shape[0] > cap:
            emb, cell = emb[-cap:], cell[-cap:]
        if self.size and now < self.newest:
            self.ordered = False
        # At most two contiguous runs: up to the end of the buffer, then from its start.
        count, done = emb.shape[0], 0
        while done < count:
            run = min(count - done, cap - self.head)
            part = slice(self.head, self.head + run)
            whole = run == count
            self.emb[part] = emb if whole else emb[done : done + run]
            self.cell[part] = cell if whole else cell[done : done + run]
            self.stamp[part] = now
            self._wrote(part, run, now)
            self.head = (self.head + run) % cap
            done += run
        self.size = min(cap, self.size + count)


class SharedRing(Ring):
    """A slot of a ``SharedRings`` file as a ring, for embeddings of ``d`` ≤ the file's dim.

    Its state lives in the file: size, head and the ordered flag in the slot's metadata, and in
    place of ``marks`` the newest stamp there too, the oldest read from ``stamp`` (one ``.item()``
    per search). ``emb`` is the slot's first ``d`` columns, so the search multiplies exactly
    what an in-process ring would (padded columns would change the sums' rounding); the rest of
    each row written is zeroed, so the file holds the zero-padded vector.
    """

    def __init__(self, store: SharedRings, slot: int, d: int) -> None:
        full = store.emb[slot]
        self.emb = full[:, :d]
        self.cell = store.cell[slot]
        self.stamp = store.stamp[slot]
        self.emb_t = self.emb.t()
        self._pad = full[:, d:] if d < full.shape[1] else None
        self._ints = store.ints
        self._floats = store.floats
        self._at = slot * META_FIELDS

    @property
    def size(self) -> int:
        return self._ints[self._at]

    @size.setter
    def size(self, value: int) -> None:
        self._ints[self._at] = value

    @property
    def head(self) -> int:
        return self._ints[self._at + 1]

    @head.setter
    def head(self, value: int) -> None:
        self._ints[self._at + 1] = value

    @property
    def ordered(self) -> bool:
        return not self._ints[self._at + 2]  # stored as "unordered": a fresh file reads 0

    @ordered.setter
    def ordered(self, value: bool) -> None:
        self._ints[self._at + 2] = 0 if value else 1

    @property
    def oldest(self) -> float:
        return float(self.stamp[self.head if self.size == self.emb.shape[0] else 0].item())

    @property
    def newest(self) -> float:
        return self._floats[self._at + 3]

    def _wrote(self, part: slice, run: int, now: float) -> None:
        self._floats[self._at + 3] = now
        if self._pad is not None:
            self._pad[part] = 0.0
